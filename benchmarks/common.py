"""Helpers shared by the benchmark scripts: timing, machine description, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from jpq_env.threads import configure_threads, thread_variable

__all__ = [
    "RESULTS",
    "command",
    "commit",
    "configure_threads",
    "cpu",
    "load_rows",
    "machine",
    "mean_sd",
    "run_grid",
    "time_call",
    "write_result",
]

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
        f"{cpu()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}"
    )


def cpu() -> str:
    """The processor's model and widest vector unit (``AMD EPYC, avx512``), for reproducibility.

    Float kernels (torch's, BLAS's) pick their code path by the CPU: the same code and seed give
    other last bits on another CPU, and a learning agent's search can then diverge.
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                model = value.strip()
            elif name.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux: the model as platform gives it
        pass
    wide = next((f for f in ("avx512f", "avx2", "avx", "asimd") if f in flags), None)
    return f"{model}, {wide.removesuffix('f')}" if wide else model


def commit() -> str:
    """The checkout's commit (short hash), with ``+changes`` when the tree has edits.

    The recorded results themselves (``benchmarks/results/``, which a running benchmark appends
    to, and the bench files ``jpq_bench fit`` writes) do not count as edits: only the code that
    produced them does.
    """
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!benchmarks/results",
                ":!jpq_env/proxy/bench_models",  # what ``jpq_bench fit`` writes: an output too
            ],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


def command() -> str:
    """This benchmark's command line, led by the thread setting that decides, if one is set.

    That is ``JPQ_THREADS``, else ``OMP_NUM_THREADS`` (``jpq_env.threads.thread_variable``).
    The thread count is part of the command: it changes every timing (and, oversubscribed, an
    evaluation ran 10x slower).
    """
    line = f"python -m benchmarks.{Path(sys.argv[0]).stem} {' '.join(sys.argv[1:])}".strip()
    name = thread_variable()
    return f"{name}={os.environ[name].strip()} {line}" if name else line


def write_result(name: str, body: str) -> Path:
    """Write ``benchmarks/results/NAME.md`` with the commit and command that produced it."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(
        f"{body}\n\nProduced by `{command()}` at commit {commit()} on "
        f"{time.strftime('%Y-%m-%d')}; {machine()}.\n"
    )
    return path


def mean_sd(xs: Iterable[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± population sd`` of ``xs`` times ``scale`` (percent by default)."""
    xs = list(xs)
    sd = statistics.pstdev(xs) if len(xs) > 1 else 0.0
    return f"{scale * statistics.mean(xs):.{digits}f} ± {scale * sd:.{digits}f}"


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a benchmark's run log (a line cut by an interruption is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # that run is simply done again
    return rows


def run_grid(
    runs: Sequence[dict[str, Any]],
    log: Path,
    one: Callable[[dict[str, Any]], dict[str, Any]],
    key: Callable[[dict[str, Any]], tuple[str, ...]],
    jobs: int = 1,
    describe: Callable[[dict[str, Any]], str] = str,
) -> list[dict[str, Any]]:
    """Run every run not yet in the log ``log`` with ``one``, appending each row as it ends.

    Each row gets the invocation's ``command()`` (unless ``one`` set one), beside the commit
    ``one`` records, so a log filled by several invocations says what produced each row.

    A long benchmark interrupted for any reason continues where it stopped: finished runs are
    found in the log by ``key``. With ``jobs > 1`` runs go to worker processes (``one`` must be a
    module-level function). Returns the rows of ``runs``, in order.
    """
    done = {key(r): r for r in load_rows(log)}
    todo = [r for r in runs if key(r) not in done]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already in {log}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)

    def keep(row: dict[str, Any]) -> None:
        row = {**row, "command": row.get("command", command())}  # each row names its command
        done[key(row)] = row
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(describe(row), flush=True)

    if jobs <= 1:
        for run in todo:
            keep(one(run))
    else:
        with ProcessPoolExecutor(jobs) as pool:
            for row in pool.map(one, todo):
                keep(row)
    return [done[key(r)] for r in runs]
