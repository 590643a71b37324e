"""Exported artifacts: file sizes per format against the size model, and the pruned model's speed.

On the default task ("digits"): for uniform policies (8-bit activations) the bit-packed export
(``jpq export``, format v2), the physically pruned ``torch.export`` program (``--format torch``)
the ONNX file (``--format onnx``: opset 21, integer weights, QDQ activations) and an FP32
``torch.save`` of the state dict, against the size model (``size_bits / 8``); then the CPU latency
of the physically pruned model against the FP32 model at several fractions of every layer's
kernels pruned (output layer kept), at batch 1 and 256, with FP32 activations and with the 8-bit
activation fake-quantizers the export keeps, and of the W8A8 ONNX export of that policy in
onnxruntime (one thread; its FP32 export as a reference). Without the ``onnx`` extra the ONNX
columns read "n/a".

    OMP_NUM_THREADS=1 python -m benchmarks.export           # writes results/export.md
    python -m benchmarks.export --quick                     # a smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import time_call, write_result
from jpq_env import LayerPolicy, LocalEvaluator, Policy, load_task
from jpq_env.core.costs import measure
from jpq_env.core.importance import kernel_ranking
from jpq_env.export.packed import export_compressed
from jpq_env.export.pruned import pruned_module, save_pruned, weight_count

try:
    import onnxruntime  # noqa: F401  # the optional extra

    from jpq_env.export.onnx import export_onnx, load_onnx

    HAVE_ONNX = True
except ImportError:
    HAVE_ONNX = False


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
        onnx = "n/a"
        if HAVE_ONNX:
            size = export_onnx(ev, policy, folder / "m.onnx")["file_bytes"]
            onnx = f"{size:,} ({size / model:.2f}x)"
        rows.append(
            f"| {name} | {model:,.0f} | {info['payload_bytes']:,} | {info['file_bytes']:,} "
            f"({info['file_bytes'] / model:.2f}x) | {torch_bytes:,} | {onnx} | "
            f"{os.path.getsize(fp32):,} |"
        )
    return rows


Runner = Callable[[torch.Tensor], torch.Tensor]


def onnx_sessions(ev: LocalEvaluator, fractions: list[float], folder: Path) -> dict[Any, Runner]:
    """ONNX Runtime sessions (one thread) of the FP32 export and of the W8A8 policies."""
    if not HAVE_ONNX:
        return {}
    sessions: dict[Any, Runner] = {}
    for key, policy in [
        ("fp32", Policy.uniform(ev.graph)),
        *((f, pruned_policy(ev, 8, 8, f)) for f in fractions),
    ]:
        export_onnx(ev, policy, folder / "t.onnx")
        sessions[key] = load_onnx(folder / "t.onnx", threads=1)
    return sessions


def latency_rows(
    ev: LocalEvaluator, fractions: list[float], repeats: int, folder: Path
) -> list[str]:
    fp32 = ev.task.model.eval()
    sessions = onnx_sessions(ev, fractions, folder)
    rows = []
    for batch in (1, 256):
        x = torch.randn(batch, *ev.task.example_input.shape[1:])
        reps = repeats if batch == 1 else max(repeats // 10, 3)
        with torch.no_grad():
            base, _ = time_call(lambda x=x: fp32(x), reps, warmup=3)
            ort_fp32 = "n/a"
            if sessions:
                t = time_call(lambda x=x: sessions["fp32"](x), reps, warmup=3)[0]
                ort_fp32 = f"{t * 1e3:.3f} ({base / t:.2f}x)"
            for fraction in fractions:
                times = []
                for a_bits in (32, 8):
                    module = pruned_module(ev, pruned_policy(ev, 32, a_bits, fraction))
                    times.append(time_call(lambda m=module, x=x: m(x), reps, warmup=3)[0])
                params = weight_count(module)
                ort = "n/a"
                if sessions:
                    s = sessions[fraction]
                    t = time_call(lambda s=s, x=x: s(x), reps, warmup=3)[0]
                    ort = f"{t * 1e3:.3f} ({base / t:.2f}x)"
                rows.append(
                    f"| {batch} | {fraction:.0%} | {params:,} | {base * 1e3:.3f} | "
                    f"{times[0] * 1e3:.3f} ({base / times[0]:.2f}x) | "
                    f"{times[1] * 1e3:.3f} ({base / times[1]:.2f}x) | {ort_fp32} | {ort} |"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing")
    args = parser.parse_args()
    task = load_task("digits")
    ev = LocalEvaluator(task, device="cpu")
    fractions = [0.5] if args.quick else [0.0, 0.25, 0.5, 0.75]
    with tempfile.TemporaryDirectory() as folder:
        sizes = size_rows(ev, Path(folder))
        latency = latency_rows(ev, fractions, 20 if args.quick else 300, Path(folder))
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
            "the small one. The ONNX file (opset 21) holds the pruned graph with the integer "
            "levels in INT4 (W2, W4: two a byte) or INT8 (W8) initializers, one float scale per "
            "kernel, BatchNorm and biases in float, QDQ nodes on the activations, and the graph's "
            "own names (a few KB); opset 21 has no 2-bit type, so W2 levels take 4 bits.",
            "",
            "| policy | size model | jpq payload | jpq file (vs model) | torch .pt2 | ONNX "
            "(vs model) | FP32 state_dict |",
            "|---|---|---|---|---|---|---|",
            *sizes,
            "",
            "CPU latency in ms (median; speed-up over FP32). Pruned: the physically pruned model "
            "(`pruned_module`, an fx GraphModule) with FP32 weights of the policy's kept kernels; "
            "A32: no activation quantizer, A8: with the 8-bit fake-quantizers the export keeps. "
            "Weights: the model's conv/linear weight count (the cost model's). ONNX: "
            "onnxruntime, one thread, default graph optimizations; FP32: the export of the "
            "uncompressed model (the runtime's own speed), W8A8: the ONNX export of the row's "
            "pruning with 8-bit weights (INT8 DequantizeLinear) and 8-bit QDQ activations. "
            "onnxruntime runs that QDQ graph in float (the weights dequantized at every call, "
            "no QLinearConv: BatchNorm sits between each conv and the next QuantizeLinear), so "
            "W8A8 is slower than the FP32 export until pruning removes enough work.",
            "",
            "| batch | kernels pruned | weights | FP32 | pruned A32 | pruned A8 | ONNX FP32 | "
            "ONNX W8A8 |",
            "|---|---|---|---|---|---|---|---|",
            *latency,
        ]
    )
    print(body)
    if not args.quick:
        print(f"written {write_result('export', body)}")


if __name__ == "__main__":
    main()
