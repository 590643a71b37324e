"""Applying a policy against running the accuracy proxy, on the default task and resnet18 32x32.

Target (foundation issue): applying a full random policy costs at most 10% of the proxy's time,
so the proxy, not the bookkeeping, dominates a search.

    python -m benchmarks.apply_vs_proxy            # full run, writes results/apply_vs_proxy.md
    python -m benchmarks.apply_vs_proxy --quick    # a smoke run (CI), writes nothing
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torchvision
from torch.utils.data import TensorDataset

from benchmarks.common import time_call, write_result
from jpq_env import LayerPolicy, LocalEvaluator, Policy, Task, load_task


def resnet18_32(val: int, calib: int) -> Task:
    """Torchvision's resnet18 (random weights, 10 classes) on random 32x32 data."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(val, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (val,), generator=g)
    data = TensorDataset(x, y)
    return Task(
        "resnet18-32", model, x[:1], data, data, TensorDataset(x[:calib], y[:calib]), data, 10
    )


def random_policy(ev: LocalEvaluator, rng: np.random.Generator) -> Policy:
    """Random bits from {0, 2, ..., 8} per kernel (outputs kept), random activation bits."""
    layers = []
    for x in ev.graph.layers:
        bits = rng.choice([0, 2, 3, 4, 5, 6, 8], size=x.out_channels)
        if x.index in ev.graph.output_layers:
            bits[bits == 0] = 8
        layers.append(LayerPolicy(x.name, bits, int(rng.choice([4, 6, 8]))))
    return Policy(tuple(layers), ev.graph.fingerprint)


def measure_task(task: Task, repeats: int) -> dict[str, float]:
    ev = LocalEvaluator(task)
    rng = np.random.default_rng(0)
    policies = [random_policy(ev, rng) for _ in range(repeats + 1)]
    it = iter(policies)
    apply_s, apply_sd = time_call(lambda: ev.compressed.apply(next(it)), repeats)
    it2 = iter(policies)
    proxy_s, proxy_sd = time_call(lambda: ev.accuracy(next(it2)), repeats)
    return {
        "layers": len(ev.graph),
        "val": len(task.val),  # type: ignore[arg-type]
        "calib": len(task.calib),  # type: ignore[arg-type]
        "apply_ms": apply_s * 1e3,
        "apply_sd": apply_sd * 1e3,
        "proxy_ms": proxy_s * 1e3,
        "proxy_sd": proxy_sd * 1e3,
        "ratio": apply_s / proxy_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, no result file")
    args = parser.parse_args()
    repeats = 2 if args.quick else 30
    tasks = [
        load_task("digits"),
        resnet18_32(64 if args.quick else 1000, 32 if args.quick else 256),
    ]
    rows = []
    for task in tasks:
        r = measure_task(task, repeats)
        rows.append(
            f"| {task.name} | {r['layers']} | {r['val']} / {r['calib']} | "
            f"{r['apply_ms']:.2f} ± {r['apply_sd']:.2f} | "
            f"{r['proxy_ms']:.1f} ± {r['proxy_sd']:.1f} | "
            f"{r['ratio']:.1%} | {'yes' if r['ratio'] <= 0.10 else 'no'} |"
        )
        print(rows[-1])
    table = "\n".join(
        [
            "# Applying a policy vs the accuracy proxy",
            "",
            "Median over "
            f"{repeats} random full policies (mixed 0-8 bit kernels, 4-8 bit activations). "
            "`apply` writes the quantized, pruned weights into the working copy; the proxy is "
            "apply + BatchNorm re-calibration on the calibration split + top-1 on the held-out "
            "split. Target: apply <= 10% of the proxy.",
            "",
            "| task | layers | val / calib samples | apply (ms) | proxy (ms) | apply / proxy "
            "| target met |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    if not args.quick:
        print(f"written to {write_result('apply_vs_proxy', table)}")


if __name__ == "__main__":
    main()
