"""Print pip constraints that pin every runtime dependency to the lowest version pyproject.toml allows.

    python scripts/oldest_constraints.py > constraints-oldest.txt
    pip install -c constraints-oldest.txt -e '.[dev]'

`make test-oldest` does exactly this into .venv-oldest and runs the suite there, so the
declared floors are tested rather than hoped for. Only runtime dependencies are pinned:
the test tools (pytest, ruff) stay free. Every dependency must declare a `>=` floor;
one without is an error, since "any version" cannot be tested at its oldest.
"""

from __future__ import annotations

import re
import sys
import tomllib  # Python 3.11+: this runs before any venv exists, so no third-party parser
from pathlib import Path

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*?)\s*(?:;.*)?$")


def floors(pyproject: Path) -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = []
    for text in deps:
        name, specs = REQUIREMENT.match(text).groups()
        lows = [s.strip()[2:].strip() for s in specs.split(",") if s.strip().startswith(">=")]
        if len(lows) != 1:
            raise SystemExit(f"{text!r}: declare exactly one '>=' floor so its oldest version can be tested")
        pins.append(f"{name}=={lows[0]}")
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print("\n".join(floors(Path(sys.argv[1]) if len(sys.argv) > 1 else root / "pyproject.toml")))
