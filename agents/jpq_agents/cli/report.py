"""``jpq report``: the compression core on a task, before any search.

Prints the compressible layers (shapes, parameters, MACs), the layers left uncompressed, the
FP32 accuracy, MACs, BOPs and size, and a few uniform policies for scale, so that a user sees
what a budget such as 1/128 of the FP32 BOPs means on this model.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .output import one_in, table
from .parser import Subparsers, add_task_args, task_options

if TYPE_CHECKING:
    from jpq_env import LayerGraph, LocalEvaluator

__all__ = ["add_parser", "run"]

_UNIFORM = ((8, 8), (6, 6), (4, 8), (4, 4), (3, 3), (2, 8))
"""The uniform (weight bits, activation bits) policies the report scores."""

_LAYER_HEADER = (
    "#",
    "layer",
    "kind",
    "in",
    "out",
    "kernel",
    "stride",
    "groups",
    "out hw",
    "params",
    "MACs",
)


def add_parser(subparsers: Subparsers) -> None:
    """Add ``jpq report`` and its options to ``subparsers``."""
    parser = subparsers.add_parser(
        "report", help="measure a task: layers, FP32 accuracy, MACs, BOPs"
    )
    add_task_args(parser, "digits")
    parser.add_argument(
        "--no-bn-recalibration", action="store_true", help="score without BN re-calibration"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the report of ``args.task``; always 0."""
    from jpq_env import LocalEvaluator, Policy, load_task, measure

    task = load_task(args.task, **task_options(args))
    evaluator = LocalEvaluator(
        task, bn_recalibration=not args.no_bn_recalibration, device=args.device
    )
    graph = evaluator.graph
    print(f"task {task.name}: {len(graph)} compressible layers")
    for key, value in task.details.items():
        print(f"{key}: {value}")
    print(_layer_table(graph))
    if graph.uncompressed:
        _print_uncompressed(graph)
    if graph.untracked:
        print(f"\nChannels counted alive after: {', '.join(graph.untracked)}")
        print(graph.untracked_summary())
    fp32 = measure(graph, Policy.uniform(graph))
    print(
        f"\nFP32: accuracy val {evaluator.fp32_accuracy:.2%} test "
        f"{evaluator.test_accuracy(None):.2%} | MACs {fp32.macs:,} | BOPs {fp32.bops:,} | "
        f"size {fp32.size_bits:,} bits ({fp32.size_bytes('MB'):.3f} MB)"
    )
    uniform = _uniform_table(evaluator, args.quiet)  # the progress bar before the heading
    print("\nUniform policies (network input at 8 bits; accuracy: held-out proxy)")
    print(uniform)
    return 0


def _layer_table(graph: LayerGraph) -> str:
    """One row per compressible layer: shapes, parameters and MACs."""
    rows = [
        (
            x.index,
            x.name,
            x.kind,
            x.in_channels,
            x.out_channels,
            "x".join(map(str, x.kernel)),
            x.stride[0],
            x.groups,
            "x".join(map(str, x.out_hw)),
            f"{x.params:,}",
            f"{x.macs:,}",
        )
        for x in graph.layers
    ]
    return table(_LAYER_HEADER, rows)


def _print_uncompressed(graph: LayerGraph) -> None:
    """The layers jpq-env leaves at FP32, with their share of the model's MACs."""
    total = max(graph.total_macs, 1)
    print(
        f"\nNot compressed ({len(graph.uncompressed)}; FP32 weights, counted at 32-bit "
        "weights and inputs in every policy's BOPs and size and in the FP32 reference):"
    )
    uncounted = any(x.macs is None for x in graph.uncompressed)
    rows = [
        (
            x.name,
            x.kind,
            f"{x.params:,}",
            "not counted" if x.macs is None else f"{x.macs:,}",
            "unknown" if uncounted else f"{(x.macs or 0) / total:.1%}",
        )
        for x in graph.uncompressed
    ]
    print(table(("layer", "kind", "params", "MACs", "MACs share"), rows))
    if uncounted:
        print("(MAC shares unknown: a layer's MACs cannot be counted, so every total misses them)")


def _uniform_table(evaluator: LocalEvaluator, quiet: bool) -> str:
    """The ``_UNIFORM`` policies scored: proxy accuracy, BOPs and size against FP32."""
    from tqdm import tqdm

    from jpq_env import Conventions, Policy, measure

    graph = evaluator.graph
    conventions = Conventions(input_bits=8)
    rows = []
    for w, a in tqdm(_UNIFORM, desc="uniform policies", unit="policy", disable=quiet):
        policy = Policy.uniform(graph, w, a, conventions)
        cost = measure(graph, policy)
        rows.append(
            (
                f"W{w}A{a}",
                f"{evaluator.accuracy(policy):.2%}",
                one_in(cost.bops_ratio),
                f"{cost.bops:,}",
                one_in(cost.size_ratio),
            )
        )
    return table(("policy", "val acc", "BOPs/FP32", "BOPs", "size/FP32"), rows)
