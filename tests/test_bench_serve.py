"""scripts/bench_serve.py's own arithmetic: CPU seconds of a process tree, what 'kept up' means."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_serve import cpu_seconds, kept_up  # noqa: E402


def test_cpu_seconds_count_the_whole_process_tree():
    """A parent that only waits, and its child that spins for 0.5 s: the tree's CPU time holds
    the child's (--workers: the supervisor idles, its workers serve)."""
    import os

    spin = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.5: pass\ntime.sleep(3)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess,sys; subprocess.run([sys.executable,'-c',{spin!r}])"])
    try:
        time.sleep(1.8)  # both started; the child has spun its 0.5 s and sleeps
        fields = Path(f"/proc/{parent.pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        tree = cpu_seconds(parent.pid)
        assert tree - own >= 0.5 and own < 0.5  # the child's spin is in the tree, not in the parent
    finally:
        parent.kill()
        parent.wait()


def test_kept_up_needs_the_rate_the_p99_and_every_answer():
    ok = {"errors": 0, "unanswered": 0, "p99_ms": 12.0, "achieved_per_s": 980.0, "offered_per_s": 1000.0}
    assert kept_up(ok)
    assert not kept_up({**ok, "achieved_per_s": 900.0})  # fell behind: answers came late
    assert not kept_up({**ok, "p99_ms": 50.0}) and not kept_up({**ok, "errors": 1})
    assert not kept_up({**ok, "unanswered": 3})
