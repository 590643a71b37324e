"""``jpq export POLICY --out FILE``: a compressed model file, reloaded and scored once written.

Three formats: ``jpq`` (bit-packed integer weights for ``load_compressed``), ``torch`` (the
physically pruned model as a ``torch.export`` program) and ``onnx`` (that model with integer
weights and QDQ activations). Reloading the file and scoring it proves it round-trips.
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
    parser.add_argument("--out", required=True, help="checkpoint file to write")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--format",
        choices=("jpq", "torch", "onnx"),
        default="jpq",
        help="jpq: bit-packed integer weights for load_compressed (default); torch: the "
        "physically pruned model as a torch.export program (torch.export.load(FILE).module()); "
        "onnx: that model in ONNX with integer weights and QDQ activations (opset 21, for "
        "onnxruntime; needs pip install 'jpq-env[onnx]')",
    )
    add_task_args(parser, None)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export ``args.policy`` to ``args.out``, reload it and print its size and accuracy."""
    from jpq_env.core.costs import measure
    from jpq_env.proxy.data import top1

    check_output_file(Path(args.out), args)
    policy, evaluator, _ = load_policy(args)
    images = len(evaluator.task.test)  # type: ignore[arg-type]
    print(
        f"exporting, then scoring the reloaded model on the {images:,} test images ...",
        file=sys.stderr,
    )
    reloaded, what = _write(args.format, evaluator, policy, args.out)
    cost = measure(evaluator.graph, policy)
    size, fp32 = os.path.getsize(args.out), cost.size_bits_fp32 / 8
    print(
        f"exported to {args.out} ({what}): {size:,} bytes = {size / fp32:.3f} of the FP32 weights "
        f"({fp32:,.0f} bytes); size model {cost.size_bits / 8:,.0f} bytes\n"
        f"reloaded model test accuracy {top1(reloaded, evaluator.task.test):.2%} "
        f"(evaluate: {evaluator.test_accuracy(policy):.2%})"
    )
    return 0


def _write(fmt: str, evaluator: LocalEvaluator, policy: Policy, out: str) -> tuple[Any, str]:
    """Write ``out`` in format ``fmt``; the reloaded model (callable as a module) and its kind."""
    task = evaluator.task
    if fmt == "torch":
        from jpq_env.export.pruned import load_pruned, pruned_module, save_pruned

        save_pruned(pruned_module(evaluator, policy), task.example_input, out)
        return load_pruned(out), "torch.export program of the physically pruned model"
    if fmt == "onnx":
        from jpq_env.export.onnx import ONNX_OPSET, export_onnx, load_onnx

        try:
            export_onnx(evaluator, policy, out)
        except ImportError as exc:  # the optional extra is not installed
            raise ArgumentError(str(exc)) from exc
        what = f"ONNX opset {ONNX_OPSET}, integer weights, QDQ activations, pruned channels removed"
        return load_onnx(out), what
    from jpq_env.export.packed import export_compressed, load_compressed

    export_compressed(evaluator, policy, out)
    return load_compressed(out, task.model, task.example_input), "jpq-compressed-v2 (bit-packed)"
