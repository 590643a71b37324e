"""How many threads torch should use: the cores this process may actually run on.

torch's default thread count is the number of cores OpenMP sees, which can exceed what the process
may use: a container with a CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1) sees
the host's cores, and every extra thread then waits for a core. Oversubscribed, an evaluation of
the accuracy proxy was measured 10x slower (2.2-2.6 s against 0.20-0.25 s for a small CNN, two
threads on two cores that another process was using).

``usable_cores`` takes the smallest of the affinity mask and the cgroup quota; ``configure_threads``
sets torch's intra-op threads to it (and caps numpy's OpenBLAS and the other native pools, and
``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS``, at the same count), unless ``JPQ_THREADS`` (or else
``OMP_NUM_THREADS``) says otherwise. The choice is deterministic (never read from the machine's
load): results can depend in their last bits on the
thread count, and the same run must give the same numbers. On a machine shared with other busy
processes, set ``JPQ_THREADS=1`` (or the cores left free): several single-threaded processes share
cores far better than several multi-threaded ones.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from jpq_env.errors import ArgumentError

__all__ = ["ENV_VAR", "configure_threads", "thread_variable", "threads_wanted", "usable_cores"]

ENV_VAR = "JPQ_THREADS"


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max`` or v1 ``cpu.cfs_*``), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def thread_variable() -> str | None:
    """The variable that decides the thread count, ``JPQ_THREADS`` or ``OMP_NUM_THREADS``.

    ``JPQ_THREADS`` when it is set, else ``OMP_NUM_THREADS`` when that is; None when neither is.
    """
    return next((v for v in (ENV_VAR, "OMP_NUM_THREADS") if os.environ.get(v, "").strip()), None)


def threads_wanted() -> int:
    """``JPQ_THREADS`` if set, else ``OMP_NUM_THREADS`` if set, else ``usable_cores()``.

    Raises:
        ValueError: If the variable that decides is set to anything but a positive integer.
    """
    name = thread_variable()
    if name is None:
        return usable_cores()
    text = os.environ[name].strip()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ArgumentError(f"{name} must be a positive integer (threads), got '{text}'")
    return value


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (default ``threads_wanted()``); return it.

    The BLAS and OpenMP pools outside torch get the same cap (``_limit_native_pools``).

    The ``jpq`` command and the benchmarks call this at start; library users who set
    ``torch.set_num_threads`` themselves are left alone (nothing in the library calls it).
    """
    n = threads_wanted() if threads is None else int(threads)
    if n < 1:
        raise ArgumentError(f"threads must be at least 1, got {threads}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _limit_native_pools(n)
    return n


_POOL_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _limit_native_pools(n: int) -> None:
    """Cap the thread pools outside torch's (numpy's OpenBLAS, OpenMP) at ``n`` threads too.

    numpy's OpenBLAS starts a thread per core whatever torch is told, and its idle threads spin:
    with ``JPQ_THREADS=1`` a CMA-ES search (numpy linear algebra) kept a second core busy and
    ran 2-4x slower beside another process (10,000-evaluation searches on JPQ-Bench: 1,092-1,318
    s, then 302-585 s with one thread; 3,000 eigendecompositions of a 60x60 matrix on a
    shared 2-core machine: 7.8 s with OpenBLAS's two threads, 1.8 s with one). The pools loaded
    already are capped through threadpoolctl; the BLAS variables cap those loaded later (scipy
    brings its own OpenBLAS) and child processes'. ``OMP_NUM_THREADS`` is left alone: it is an
    input of ``threads_wanted``.
    """
    from threadpoolctl import threadpool_limits

    for name in _POOL_VARS:
        if os.environ.get(name) != str(n):
            os.environ[name] = str(n)
    threadpool_limits(limits=n)
