"""The ``jpq`` command line.

``jpq report --task NAME`` runs the compression core on a task: the layer graph, FP32 accuracy,
MACs, BOPs and size, and the proxy accuracy of a few uniform policies (WxAy) for reference.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tqdm import tqdm

from jpq_env import (
    Conventions,
    GraphError,
    LocalEvaluator,
    Policy,
    PolicyError,
    TaskError,
    load_task,
    measure,
)

__all__ = ["main"]

_UNIFORM = ((8, 8), (6, 6), (4, 8), (4, 4), (3, 3), (2, 8))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> int:
    task = load_task(args.task)
    evaluator = LocalEvaluator(task, bn_recalibration=not args.no_bn_recalibration)
    graph = evaluator.graph
    print(f"task {task.name}: {len(graph)} compressible layers")
    print(
        _table(
            (
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
            ),
            [
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
            ],
        )
    )
    fp32 = measure(graph, Policy.uniform(graph))
    print(
        f"\nFP32: accuracy val {evaluator.fp32_accuracy:.2%} test "
        f"{evaluator.test_accuracy(None):.2%} | MACs {fp32.macs:,} | BOPs {fp32.bops:,} | "
        f"size {fp32.size_bits:,} bits ({fp32.size_bytes('MB'):.3f} MB)"
    )
    conventions = Conventions(input_bits=8)
    rows = []
    for w, a in tqdm(_UNIFORM, desc="uniform policies", unit="policy", disable=args.quiet):
        policy = Policy.uniform(graph, w, a, conventions)
        cost = measure(graph, policy)
        rows.append(
            (
                f"W{w}A{a}",
                f"{evaluator.accuracy(policy):.2%}",
                f"1/{1 / cost.bops_ratio:.1f}",
                f"{cost.bops:,}",
                f"1/{1 / cost.size_ratio:.1f}",
            )
        )
    print("\nUniform policies (network input at 8 bits; accuracy: held-out proxy)")
    print(_table(("policy", "val acc", "BOPs/FP32", "BOPs", "size/FP32"), rows))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jpq", description="Joint pruning and quantization of PyTorch networks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="measure a task: layers, FP32 accuracy, MACs, BOPs")
    report.add_argument("--task", default="digits", help="built-in name or package.module:factory")
    report.add_argument(
        "--no-bn-recalibration", action="store_true", help="score without BN re-calibration"
    )
    report.add_argument("--quiet", action="store_true", help="no progress bar")
    report.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jpq`` command."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (TaskError, GraphError, PolicyError) as exc:
        print(f"jpq: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
