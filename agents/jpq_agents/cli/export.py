"""``jpq export POLICY --out FILE``: a compressed model file, reloaded and scored once written.

Three formats: ``jpq`` (bit-packed integer weights for ``load_compressed``), ``torch`` (the
physically pruned model as a ``torch.export`` program, its weights as integer levels and scales)
and ``onnx`` (that model for onnxruntime's integer kernels, or ``--exact``). Reloading the file
and scoring it proves it round-trips.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jpq_env.errors import ArgumentError

from .parser import Subparsers, add_task_args
from .policy_file import check_output_file, load_policy

if TYPE_CHECKING:
    from jpq_env import LocalEvaluator, Policy

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``jpq export`` and its options to ``subparsers``."""
    parser = subparsers.add_parser(
        "export", help="write a compressed checkpoint (integer weights, scales, masks)"
    )
    parser.add_argument("policy", help="a policy.json written by jpq search")
    parser.add_argument(
        "--out", required=True, help="the file to write (.jpq, .pt2 for torch, .onnx for onnx)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--format",
        choices=("jpq", "torch", "onnx"),
        default="jpq",
        help="jpq: bit-packed integer weights for load_compressed (default); torch: the "
        "physically pruned model as a torch.export program (torch.export.load(FILE).module()); "
        "onnx: that model in ONNX for onnxruntime's integer kernels (opset 21, BatchNorm "
        "folded, 8-bit output quantizers added; needs pip install 'jpq-env[onnx]')",
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="onnx: the compressed model's own quantizers only (BatchNorm kept, no added 8-bit "
        "output quantizers): reproduces jpq evaluate, but onnxruntime runs it mostly in float",
    )
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="onnx: also time the export against the FP32 export in onnxruntime (one thread, "
        "batch 1 and 64)",
    )
    add_task_args(parser, None)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export ``args.policy`` to ``args.out``, reload it and print its size and accuracy."""
    from jpq_env.core.costs import measure
    from jpq_env.proxy.data import top1

    if args.format != "onnx" and (args.exact or args.benchmark):
        flag = "--exact" if args.exact else "--benchmark"
        raise ArgumentError(f"{flag} applies to --format onnx only, not --format {args.format}")
    check_output_file(Path(args.out), args)
    policy, evaluator, _ = load_policy(args)
    images = len(evaluator.task.test)  # type: ignore[arg-type]
    print(
        f"exporting, then scoring the reloaded model on the {images:,} test images ...",
        file=sys.stderr,
    )
    reloaded, what = _write(args.format, evaluator, policy, args.out, exact=args.exact)
    cost = measure(evaluator.graph, policy)
    size, fp32 = os.path.getsize(args.out), cost.size_bits_fp32 / 8
    print(
        f"exported to {args.out} ({what}): {size:,} bytes = {size / fp32:.3f} of the FP32 weights "
        f"({fp32:,.0f} bytes); size model {cost.size_bits / 8:,.0f} bytes\n"
        f"reloaded model test accuracy {top1(reloaded, evaluator.task.test):.2%} "
        f"(evaluate: {evaluator.test_accuracy(policy):.2%})"
    )
    if args.benchmark:
        _benchmark(evaluator, args.out)
    return 0


def _benchmark(evaluator: LocalEvaluator, out: str) -> None:
    """Print onnxruntime's latency of ``out`` against the FP32 export (one thread)."""
    import tempfile

    from jpq_env import Policy
    from jpq_env.export.onnx import export_onnx, latency

    shape = tuple(evaluator.task.example_input.shape[1:])
    with tempfile.TemporaryDirectory() as folder:
        reference = Path(folder) / "fp32.onnx"
        export_onnx(evaluator, Policy.uniform(evaluator.graph), reference, integer=False)
        for batch in (1, 64):
            t, t32 = latency(out, shape, batch), latency(reference, shape, batch)
            print(
                f"onnxruntime, 1 thread, batch {batch}: {t * 1e3:.4g} ms against the FP32 "
                f"export's {t32 * 1e3:.4g} ms ({t32 / t:.2f}x)"
            )


def _write(
    fmt: str, evaluator: LocalEvaluator, policy: Policy, out: str, exact: bool = False
) -> tuple[Any, str]:
    """Write ``out`` in format ``fmt``; the reloaded model (callable as a module) and its kind."""
    task = evaluator.task
    if fmt == "torch":
        from jpq_env.export.program import export_program
        from jpq_env.export.pruned import load_pruned

        export_program(evaluator, policy, out)
        what = "torch.export program of the physically pruned model, integer levels and scales"
        return load_pruned(out), what
    if fmt == "onnx":
        from jpq_env.export.onnx import ONNX_OPSET, export_onnx, load_onnx

        try:
            export_onnx(evaluator, policy, out, integer=not exact)
        except ImportError as exc:  # the optional extra is not installed
            raise ArgumentError(str(exc)) from exc
        kind = "the compressed model's quantizers only" if exact else "for integer kernels"
        what = f"ONNX opset {ONNX_OPSET}, {kind}, pruned channels removed"
        return load_onnx(out, optimize=not exact), what
    from jpq_env.export.packed import export_compressed, load_compressed

    export_compressed(evaluator, policy, out)
    return load_compressed(out, task.model, task.example_input), "jpq-compressed-v2 (bit-packed)"
