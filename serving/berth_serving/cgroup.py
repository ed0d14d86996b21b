"""How many CPUs and how much memory this container may use (its cgroup limits, not the
host's), and how much this process holds.

A pod limited to 1 CPU on a 64-core node that starts 64 ONNX Runtime threads gets
throttled hard; the quota is what matters. The cgroup root is a parameter so tests
can point it at fake files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota_ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:  # v1 says -1 for "no limit"
        return None
    return quota_us / period_us


def cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (e.g. 1.5), or None when there is no limit."""
    v2 = _read(root / "cpu.max")  # cgroup v2: "max 100000" or "150000 100000"
    if v2 is not None:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            return _quota_ratio(parts[0], parts[1])
        return None
    for v1_dir in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu", root):
        quota = _read(v1_dir / "cpu.cfs_quota_us")
        period = _read(v1_dir / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _quota_ratio(quota, period)
    return None


def host_cpus() -> int:
    """CPUs this process may run on (affinity mask), falling back to the core count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs to size thread pools by: the quota rounded up, never more than the host has."""
    limit = cpu_limit(root)
    cpus = host_cpus()
    if limit is None:
        return cpus
    return max(1, min(cpus, math.ceil(limit - 1e-9)))


def intra_op_threads(configured: int, root: Path = CGROUP_ROOT) -> int:
    """The configured thread count, or (0 = auto) one per available CPU."""
    return configured if configured > 0 else available_cpus(root)


def memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """Bytes the cgroup may use (memory.max, v1's limit_in_bytes), or None with no limit."""
    for path in (
        root / "memory.max",
        root / "memory" / "memory.limit_in_bytes",
        root / "memory.limit_in_bytes",
    ):
        text = _read(path)
        if text is None:
            continue
        if not text.isdigit():  # "max"
            return None
        value = int(text)
        # v1 writes a huge number (PAGE_COUNTER_MAX pages) for "no limit".
        return value if value < 1 << 60 else None
    return None


def host_memory() -> int:
    """The machine's physical memory in bytes."""
    return _PAGE * os.sysconf("SC_PHYS_PAGES")


def resident_bytes() -> int:
    """This process's resident memory."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE
