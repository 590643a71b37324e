"""Exported artifacts: file sizes per format against the size model, and the pruned model's speed.

On the default task ("digits"): for uniform policies (8-bit activations) the bit-packed export
(``jpq export``, format v2), the physically pruned ``torch.export`` program (``--format torch``)
and an FP32 ``torch.save`` of the state dict, against the size model (``size_bits / 8``); then the
CPU latency of the physically pruned model against the FP32 model at several fractions of every
layer's kernels pruned (output layer kept), at batch 1 and 256, with FP32 activations and with
the 8-bit activation fake-quantizers the export keeps.

    OMP_NUM_THREADS=1 python -m benchmarks.export           # writes results/export.md
    python -m benchmarks.export --quick                     # a smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import time_call, write_result
from jpq_env import LayerPolicy, LocalEvaluator, Policy, load_task
from jpq_env.compress import kernel_ranking
from jpq_env.costs import measure
from jpq_env.export import export_compressed
from jpq_env.prune_export import pruned_module, save_pruned, weight_count


def pruned_policy(ev: LocalEvaluator, w_bits: int, a_bits: int, fraction: float) -> Policy:
    """Every layer at ``w_bits``, its least important ``fraction`` of kernels (L1) pruned."""
    layers = []
    for info in ev.graph.layers:
        bits = np.full(info.out_channels, w_bits)
        if info.index not in ev.graph.output_layers:
            weight = ev.task.model.get_submodule(info.name).weight
            order = kernel_ranking(weight)
            bits[order[info.out_channels - round(fraction * info.out_channels) :]] = 0
        layers.append(LayerPolicy(info.name, bits, a_bits))
    return Policy(tuple(layers), ev.graph.fingerprint)


def size_rows(ev: LocalEvaluator, folder: Path) -> list[str]:
    fp32 = folder / "fp32.pt"
    torch.save({k: v.contiguous() for k, v in ev.task.model.state_dict().items()}, fp32)
    rows = []
    for name, policy in (
        ("W8A8", pruned_policy(ev, 8, 8, 0.0)),
        ("W2A8", pruned_policy(ev, 2, 8, 0.0)),
        ("W4A8, 50% of kernels pruned", pruned_policy(ev, 4, 8, 0.5)),
    ):
        model = measure(ev.graph, policy).size_bits / 8
        info = export_compressed(ev, policy, folder / "m.jpq")
        torch_bytes = save_pruned(
            pruned_module(ev, policy), ev.task.example_input, folder / "m.pt2"
        )
        rows.append(
            f"| {name} | {model:,.0f} | {info['payload_bytes']:,} | {info['file_bytes']:,} "
            f"({info['file_bytes'] / model:.2f}x) | {torch_bytes:,} | {os.path.getsize(fp32):,} |"
        )
    return rows


def latency_rows(ev: LocalEvaluator, fractions: list[float], repeats: int) -> list[str]:
    fp32 = ev.task.model.eval()
    rows = []
    for batch in (1, 256):
        x = torch.randn(batch, *ev.task.example_input.shape[1:])
        reps = repeats if batch == 1 else max(repeats // 10, 3)
        with torch.no_grad():
            base, _ = time_call(lambda x=x: fp32(x), reps, warmup=3)
            for fraction in fractions:
                times = []
                for a_bits in (32, 8):
                    module = pruned_module(ev, pruned_policy(ev, 32, a_bits, fraction))
                    times.append(time_call(lambda m=module, x=x: m(x), reps, warmup=3)[0])
                params = weight_count(module)
                rows.append(
                    f"| {batch} | {fraction:.0%} | {params:,} | {base * 1e3:.3f} | "
                    f"{times[0] * 1e3:.3f} ({base / times[0]:.2f}x) | "
                    f"{times[1] * 1e3:.3f} ({base / times[1]:.2f}x) |"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing")
    args = parser.parse_args()
    task = load_task("digits")
    ev = LocalEvaluator(task, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        sizes = size_rows(ev, Path(folder))
    fractions = [0.5] if args.quick else [0.0, 0.25, 0.5, 0.75]
    latency = latency_rows(ev, fractions, 20 if args.quick else 300)
    body = "\n".join(
        [
            "# Exported artifacts (task digits)",
            "",
            "File sizes in bytes. Size model: `costs.measure(...).size_bits / 8` (kept weights at "
            "their widths). Payload: the packed integer levels in the `jpq` file; the rest of "
            "that file is one float32 scale per quantized kernel, the BatchNorm statistics and "
            "biases (kept whole), and a JSON header. The torch program stores the physically "
            "pruned model's float weights (fake-quantized values in FP32), so it is about as "
            "large as an FP32 model of its pruned size: it is the fast artifact, the `jpq` file "
            "the small one.",
            "",
            "| policy | size model | jpq payload | jpq file (vs model) | torch .pt2 | FP32 "
            "state_dict |",
            "|---|---|---|---|---|---|",
            *sizes,
            "",
            "CPU latency in ms (median; speed-up over FP32). Pruned: the physically pruned model "
            "(`pruned_module`, an fx GraphModule) with FP32 weights of the policy's kept kernels; "
            "A32: no activation quantizer, A8: with the 8-bit fake-quantizers the export keeps. "
            "Weights: the model's conv/linear weight count (the cost model's).",
            "",
            "| batch | kernels pruned | weights | FP32 | pruned A32 | pruned A8 |",
            "|---|---|---|---|---|---|",
            *latency,
        ]
    )
    print(body)
    if not args.quick:
        print(f"written {write_result('export', body)}")


if __name__ == "__main__":
    main()
