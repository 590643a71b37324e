"""Helpers shared by the benchmark scripts: timing, machine description, result files."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median and standard deviation of ``fn``'s wall time in seconds over ``repeats`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), statistics.pstdev(times)


def machine() -> str:
    """One line describing where a benchmark ran."""
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}"
    )


def write_result(name: str, body: str) -> Path:
    """Write ``benchmarks/results/NAME.md`` with the command that produced it."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    command = "python -m benchmarks." + Path(sys.argv[0]).stem + " " + " ".join(sys.argv[1:])
    path.write_text(
        f"{body}\n\nProduced by `{command.strip()}` on {time.strftime('%Y-%m-%d')}; {machine()}.\n"
    )
    return path
