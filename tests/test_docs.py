"""The README's and docs' `digits ...` examples: every one parses against the real CLI, and the quick ones run.

Examples are the lines of ```bash blocks that start with `digits` and the `$ digits`
lines of ```console blocks (```text blocks hold synopses, not examples). Parsing catches
a renamed command, option or choice. The examples that run here are those that finish
in seconds offline on the fixture; the others (training, full sweeps, a GPU, a server)
are parsed only, and the list below says why.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from digits.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Commands whose examples only parse here: they train, sweep, need CUDA or a browser, or take minutes.
PARSE_ONLY = {"train": "trains on full MNIST", "bench": "a full sweep takes minutes",
              "run": "the whole job takes minutes", "serve": "starts a server",
              "predict": "reads the user's own image files", "compare": "compares bench reports the user made"}


def examples() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for lang, body in re.findall(r"```(bash|console)\n(.*?)```", text, flags=re.S):
            for line in body.splitlines():
                line = line.strip()
                if lang == "console":
                    if not line.startswith("$ "):
                        continue
                    line = line[2:]
                line = re.sub(r"^(\.venv/bin/)?digits\b", "digits", line)
                if line.startswith("digits ") or line == "digits":
                    cmd = line.split("  #")[0].split(" # ")[0].strip()
                    found.append((f"{doc.name}: {cmd}", shlex.split(cmd)[1:]))
    return found


EXAMPLES = examples()


def test_the_docs_have_examples():
    docs = {label.split(":")[0] for label, _ in EXAMPLES}
    assert {"README.md", "export.md", "bench.md"} <= docs and len(EXAMPLES) >= 10


@pytest.mark.parametrize("label, args", EXAMPLES, ids=[label for label, _ in EXAMPLES])
def test_example_parses(label, args):
    group = typer.main.get_command(app)
    ctx = group.make_context("digits", list(args), resilient_parsing=False)
    if args and not args[0].startswith("-"):
        sub = group.get_command(ctx, args[0])
        assert sub is not None, f"{label}: no command {args[0]!r}"
        sub.make_context(args[0], list(args[1:]), parent=ctx, resilient_parsing=False)  # raises on a bad option


RUNNABLE = [(label, args) for label, args in EXAMPLES
            if args and args[0] not in PARSE_ONLY and "--precision" not in args]


@pytest.fixture
def workspace(exported, trained, fixture_root, tmp_path, monkeypatch):
    """A user's folder: artifacts/ as `digits train all` + `digits export all --format all` leave it."""
    shutil.copytree(trained, tmp_path / "artifacts")
    shutil.copytree(fixture_root / "MNIST", tmp_path / "data" / "MNIST")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIGITS_DATA", str(tmp_path / "data"))
    return tmp_path


@pytest.mark.parametrize("label, args", RUNNABLE, ids=[label for label, _ in RUNNABLE])
def test_example_runs(workspace, label, args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"{label}\n{result.output[-2000:]}"
    assert "Traceback" not in result.output
