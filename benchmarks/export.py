"""Exported artifacts: sizes against the size model, speed in onnxruntime, accuracy kept.

On ResNet-20 / CIFAR-10 (when the workload is prepared: ``python -m benchmarks.cifar_workload``)
and on the default task ("digits"), for uniform W8A8, a 50%-pruned W8A8 and, on ResNet-20, the
best two-level policy at 1/64 of FP32 BOPs from the leaderboard: the size model, the bit-packed
``jpq`` file, the torch program and the ONNX files; onnxruntime's latency on one thread at batch
1 and 64 against the FP32 export, side by side in one run; and the test top-1 of the ONNX
exports against ``jpq evaluate``'s. Two ONNX exports: for integer kernels (the default: BatchNorm
folded, 8-bit output quantizers) and ``--exact`` (the compressed model's quantizers only, run
with onnxruntime's graph optimizations off for its accuracy). Then, on digits, the physically
pruned torch model's CPU latency against FP32 at several fractions of kernels pruned.

    OMP_NUM_THREADS=1 python -m benchmarks.export           # writes results/export.md
    python -m benchmarks.export --quick                     # a smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import configure_threads, time_call, write_result
from jpq_env import LayerPolicy, LocalEvaluator, Policy, load_task
from jpq_env.core.costs import measure
from jpq_env.core.importance import kernel_ranking
from jpq_env.export.packed import export_compressed
from jpq_env.export.program import export_program
from jpq_env.export.pruned import pruned_module, weight_count

try:
    import onnxruntime  # noqa: F401  # the optional extra

    from jpq_env.export.onnx import export_onnx, latency, load_onnx, onnx_top1

    HAVE_ONNX = True
except ImportError:
    HAVE_ONNX = False

LEADERBOARD = Path(__file__).parent / "leaderboard"

ONNX_TEXT = (
    "onnxruntime on one thread (CPUExecutionProvider, default graph optimizations), median ms "
    "of a call on random inputs and the speed-up over the FP32 export of the same task, measured "
    "side by side in one run (`latency`). Integer: `jpq export --format onnx` (BatchNorm folded "
    "into the weights, levels widened to INT8, 8-bit quantizers added where a layer's output "
    "would leave the integer domain: before residual adds and on the residual stream), which "
    "onnxruntime runs as QLinearConv/QLinearAdd; exact: `--exact` (the compressed model's own "
    "quantizers only, BatchNorm kept), which it runs mostly in float. Test top-1 on the task's "
    "test split: `jpq evaluate`'s, the integer export's in onnxruntime (its difference in "
    "points), and the exact export's with onnxruntime's optimizations off. Sizes in bytes; "
    "the ONNX size is the integer export's (INT8 levels: a 4-bit weight takes a byte there)."
)
SIZE_TEXT = (
    "File sizes on digits in bytes. Size model: `costs.measure(...).size_bits / 8` (kept "
    "weights at their widths). Payload: the packed integer levels in the `jpq` file; the rest of "
    "that file is one float32 scale per quantized kernel, the BatchNorm statistics and biases "
    "(kept whole), and a zlib-compressed JSON header. The torch program (`jpq export --format "
    "torch`) stores the physically pruned model's integer levels (a byte a weight up to 8 "
    "bits), its scales and its graph (`torch.export`'s JSON, most of a small model's file). "
    "The ONNX file here is the "
    "`--exact` export (opset 21): the integer levels in INT4 (W2, W4: two a byte) or INT8 (W8) "
    "initializers, one float scale per kernel, BatchNorm and biases in float; opset 21 has no "
    "2-bit type, so W2 levels take 4 bits."
)
SIZE_HEADER = [
    "| policy | size model | jpq payload | jpq file (vs model) | torch .pt2 | ONNX --exact "
    "(vs model) | FP32 state_dict |",
    "|---|---|---|---|---|---|---|",
]
TORCH_TEXT = (
    "The physically pruned torch model on digits: CPU latency in ms (median; speed-up over the "
    "FP32 model), `pruned_module` (an fx GraphModule) with FP32 weights of the policy's kept "
    "kernels; A32: no activation quantizer, A8: with the 8-bit fake-quantizers. Weights: the "
    "model's conv/linear weight count (the cost model's)."
)
TORCH_HEADER = [
    "| batch | kernels pruned | weights | FP32 | pruned A32 | pruned A8 |",
    "|---|---|---|---|---|---|",
]


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
        torch_bytes = export_program(ev, policy, folder / "m.pt2")
        onnx = "n/a"
        if HAVE_ONNX:
            size = export_onnx(ev, policy, folder / "m.onnx", integer=False)["file_bytes"]
            onnx = f"{size:,} ({size / model:.2f}x)"
        rows.append(
            f"| {name} | {model:,.0f} | {info['payload_bytes']:,} | {info['file_bytes']:,} "
            f"({info['file_bytes'] / model:.2f}x) | {torch_bytes:,} | {onnx} | "
            f"{os.path.getsize(fp32):,} |"
        )
    return rows


def latency_rows(ev: LocalEvaluator, fractions: list[float], repeats: int) -> list[str]:
    """The physically pruned torch model against FP32 (digits), batch 1 and 256."""
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
                rows.append(
                    f"| {batch} | {fraction:.0%} | {weight_count(module):,} | {base * 1e3:.3f} | "
                    f"{times[0] * 1e3:.3f} ({base / times[0]:.2f}x) | "
                    f"{times[1] * 1e3:.3f} ({base / times[1]:.2f}x) |"
                )
    return rows


def onnx_rows(
    ev: LocalEvaluator, policies: dict[str, Policy], folder: Path, seconds: float
) -> list[str]:
    """Per policy: sizes, onnxruntime latency against the FP32 export, test top-1 kept."""
    from jpq_env.core.costs import measure

    shape = tuple(ev.task.example_input.shape[1:])
    fp32 = folder / "fp32.onnx"
    export_onnx(ev, Policy.uniform(ev.graph), fp32, integer=False)
    rows = []
    for name, policy in policies.items():
        cost = measure(ev.graph, policy)
        model = cost.size_bits / 8
        jpq = export_compressed(ev, policy, folder / "m.jpq")["file_bytes"]
        pt2 = export_program(ev, policy, folder / "m.pt2")
        size = export_onnx(ev, policy, folder / "int.onnx")["file_bytes"]
        export_onnx(ev, policy, folder / "exact.onnx", integer=False)
        speed = []
        for batch in (1, 64):
            t32, t, te = _side_by_side(
                [fp32, folder / "int.onnx", folder / "exact.onnx"], shape, batch, seconds
            )
            speed.append(
                f"{t32 * 1e3:.3f} | {t * 1e3:.3f} ({t32 / t:.2f}x) | "
                f"{te * 1e3:.3f} ({t32 / te:.2f}x)"
            )
        evaluate = ev.test_accuracy(policy)
        got = onnx_top1(load_onnx(folder / "int.onnx", threads=1), ev.task.test)
        exact = onnx_top1(load_onnx(folder / "exact.onnx", optimize=False), ev.task.test)
        rows.append(
            f"| {name} | {cost.bops / cost.bops_fp32:.4f} | {model:,.0f} | {jpq:,} "
            f"({jpq / model:.2f}x) | {pt2:,} | {size:,} ({size / model:.2f}x) | {speed[0]} | "
            f"{speed[1]} | {evaluate:.2%} | {got:.2%} ({(got - evaluate) * 100:+.2f}) | "
            f"{exact:.2%} ({(exact - evaluate) * 100:+.2f}) |"
        )
    return rows


def _side_by_side(
    paths: list[Path], shape: tuple[int, ...], batch: int, seconds: float, rounds: int = 3
) -> list[float]:
    """Each model's latency: the best of ``rounds`` medians, the models measured in turn."""
    best = [math.inf] * len(paths)
    for _ in range(rounds):
        for i, path in enumerate(paths):
            best[i] = min(best[i], latency(path, shape, batch, seconds=seconds / rounds))
    return best


ONNX_HEADER = [
    "| policy | BOPs vs FP32 | size model | jpq file (vs model) | torch .pt2 | ONNX (vs model) "
    "| b1 FP32 | b1 integer | b1 exact | b64 FP32 | b64 integer | b64 exact | test: evaluate "
    "| ONNX integer | ONNX exact |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def _resnet20() -> tuple[LocalEvaluator, dict[str, Policy]] | None:
    """The ResNet-20 workload and its three policies, or None where it is not prepared."""
    from benchmarks.cifar_workload import DATA, WEIGHTS_NAME, task_options

    best = LEADERBOARD / "resnet20-cifar" / "1_64" / "two-level-seed0.policy.json"
    if not (DATA / WEIGHTS_NAME).exists() or not best.exists():
        print("ResNet-20 skipped: run python -m benchmarks.cifar_workload first")
        return None
    task = load_task("resnet20-cifar", **task_options(DATA))
    ev = LocalEvaluator(task, device="cpu")
    return ev, {
        "uniform W8A8": pruned_policy(ev, 8, 8, 0.0),
        "W8A8, 50% of kernels pruned": pruned_policy(ev, 8, 8, 0.5),
        "two-level at 1/64 (leaderboard)": Policy.load(best),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing")
    args = parser.parse_args()
    configure_threads()
    task = load_task("digits")
    ev = LocalEvaluator(task, device="cpu")
    fractions = [0.5] if args.quick else [0.0, 0.25, 0.5, 0.75]
    seconds = 0.05 if args.quick else 2.0
    body = ["# Exported artifacts", ""]
    with tempfile.TemporaryDirectory() as folder:
        if HAVE_ONNX:
            resnet = None if args.quick else _resnet20()
            digits = {
                "uniform W8A8": pruned_policy(ev, 8, 8, 0.0),
                "W8A8, 50% of kernels pruned": pruned_policy(ev, 8, 8, 0.5),
            }
            tables = [("digits", onnx_rows(ev, digits, Path(folder), seconds))]
            if resnet is not None:
                rows = onnx_rows(resnet[0], resnet[1], Path(folder), seconds)
                tables.insert(0, ("resnet20-cifar (10,000 test images)", rows))
            body += [ONNX_TEXT, ""]
            for title, rows in tables:
                body += [f"## {title}", "", *ONNX_HEADER, *rows, ""]
        sizes = size_rows(ev, Path(folder))
        latency_table = latency_rows(ev, fractions, 20 if args.quick else 300)
    body += [SIZE_TEXT, "", *SIZE_HEADER, *sizes, "", TORCH_TEXT, "", *TORCH_HEADER, *latency_table]
    text = "\n".join(body)
    print(text)
    if not args.quick:
        print(f"written {write_result('export', text)}")


if __name__ == "__main__":
    main()
