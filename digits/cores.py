"""How many cores this process may really use, and how to give memory back.

``os.cpu_count()`` counts the machine's cores, not this process's: a container limited to
2 CPUs by its cgroup quota, or a process pinned with ``taskset``, sees all of them, and a
runtime told to use that many threads then fights itself. :func:`usable_cores` takes the
smallest of the CPU affinity mask and the cgroup quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us``), as ``os.process_cpu_count`` and the JVM's container support do.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """CPUs the cgroup quota allows (e.g. 1.5), or None when unlimited or unknown."""
    try:  # cgroup v2: "max 100000" or "150000 100000"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores(root: Path = CGROUP) -> int:
    """The cores this process may run on: affinity mask, capped by the cgroup quota (rounded up)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = cgroup_quota(root)
    return max(1, min(n, math.ceil(quota)) if quota else n)


def cores_per_process(n: int) -> int:
    """The cores this process may use, shared by ``n`` processes on the machine (at least 1)."""
    return max(1, usable_cores() // n)


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps it otherwise, so a
    phase's peak would stay in the resident set for the rest of the run)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
