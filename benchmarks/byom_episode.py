"""One episode of torchvision's resnet18 at 224x224 and at 32x32, on random data.

What an episode on a real-sized network costs, split into the agent-side work (the decisions of
every step, budget enforcement, cost counting), applying the policy to the working copy, and the
accuracy proxy (BatchNorm re-calibration on the calibration split, then top-1 on the held-out
split), with the process's peak memory. Target (issue 6): the 224x224 proxy stays under 4 GB of
RAM on the CPU. Each case runs in its own process, so its peak resident set size
(``ru_maxrss``) is its own.

    python -m benchmarks.byom_episode            # full run, writes results/byom_episode.md
    python -m benchmarks.byom_episode --quick    # a smoke run (CI), writes nothing
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchvision

from benchmarks.common import write_result
from jpq_env import LocalEvaluator, make_task
from jpq_env.envs import JPQEnv

LIMIT_MB = 4096
SIZES = {"resnet18-224": 224, "resnet18-32": 32}


def _timed(owner: object, name: str, totals: dict[str, float]) -> None:
    """Replace ``owner.name`` by a wrapper that adds its wall time to ``totals[name]``."""
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def run_case(case: str, val: int, calib: int) -> dict[str, float]:
    """One episode of ``case`` in this process; times in seconds, memory in MB."""
    size = SIZES[case]
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(val, 3, size, size, generator=g)
    y = torch.randint(0, 10, (val,), generator=g)
    start = time.perf_counter()
    task = make_task(
        model, train=(x, y), val=(x, y), calib=(x[:calib], y[:calib]), test=(x, y), name=case
    )
    env = JPQEnv(task=task, budget_bops=1 / 16, device="cpu")
    ev = env.evaluator
    assert isinstance(ev, LocalEvaluator)
    fp32 = ev.fp32_accuracy  # cached once per env, before the episode
    setup = time.perf_counter() - start
    totals: dict[str, float] = {}
    _timed(ev.compressed, "apply", totals)
    _timed(ev, "_recalibrate", totals)
    _timed(ev, "_evaluate", totals)  # re-calibration and the held-out pass
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    start = time.perf_counter()
    terminated = False
    while not terminated:
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        _, _, terminated, _, info = env.step(action)
    episode = time.perf_counter() - start
    proxy = totals["_evaluate"]
    return {
        "layers": len(env.graph),
        "batch": ev.batch_size,
        "setup_s": setup,
        "episode_s": episode,
        "decide_s": episode - proxy - totals["apply"],
        "apply_s": totals["apply"],
        "recal_s": totals["_recalibrate"],
        "eval_s": totals["_evaluate"] - totals["_recalibrate"],
        "fp32": fp32,
        "accuracy": info["accuracy"],
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, no result file")
    parser.add_argument("--case", choices=sorted(SIZES), help="run one case here (internal)")
    parser.add_argument("--val", type=int, default=0)
    parser.add_argument("--calib", type=int, default=0)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.val, args.calib)))
        return
    plan = {"resnet18-224": (256, 64), "resnet18-32": (1000, 256)}
    if args.quick:
        plan = {"resnet18-224": (4, 2), "resnet18-32": (16, 8)}
    rows = []
    for case, (val, calib) in plan.items():
        if args.quick:  # in this process: saves a start-up per case (peak memory is then shared)
            r = run_case(case, val, calib)
        else:
            cmd = [sys.executable, "-m", "benchmarks.byom_episode", "--case", case]
            out = subprocess.run(
                [*cmd, "--val", str(val), "--calib", str(calib)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            f"| {case} | {r['layers']} | {val} / {calib} | {r['batch']} | {r['setup_s']:.1f} | "
            f"{r['episode_s']:.2f} | {r['decide_s'] * 1e3:.0f} | {r['apply_s'] * 1e3:.0f} | "
            f"{r['recal_s']:.2f} + {r['eval_s']:.2f} | {r['peak_mb']:.0f} | "
            f"{'yes' if r['peak_mb'] < LIMIT_MB else 'no'} |"
        )
        print(rows[-1])
    table = "\n".join(
        [
            "# One episode of resnet18 on random data (bring your own model)",
            "",
            "torchvision's resnet18 (random weights, 10 classes) as a user model through "
            "`make_task`, random inputs, one episode of `JPQEnv` (21 layers, 42 steps, random "
            "actions, BOPs budget 1/16 with the forward wall) on the CPU. *decisions*: the "
            "episode's steps without applying the policy and without the proxy; *apply*: writing "
            "the quantized, pruned weights into the working copy; *proxy*: BatchNorm "
            "re-calibration on the calibration split + top-1 on the held-out split. *setup* "
            "(tracing, the evaluator, activation ranges, the FP32 accuracy) is paid once per "
            "environment. Peak RSS is the whole process's (`ru_maxrss`, each case in its own "
            "process). Target (met: yes): peak RSS under 4 GB.",
            "",
            "| case | layers | val / calib | batch | setup (s) | episode (s) | decisions (ms) "
            "| apply (ms) | proxy: recal + eval (s) | peak RSS (MB) | target met |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "The machine is shared (2 cores, other jobs running): times are indicative; "
            "memory is not affected.",
        ]
    )
    if not args.quick:
        print(f"written to {write_result('byom_episode', table)}")


if __name__ == "__main__":
    main()
