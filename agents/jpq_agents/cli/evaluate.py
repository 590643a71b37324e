"""``jpq evaluate POLICY``: test accuracy, BOPs and size of a policy file, layer by layer.

The policy is scored on the task its file names (or the one given with ``--task``), on the
test split, next to the proxy's validation accuracy the search optimised.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .output import one_in, table
from .parser import Subparsers, add_task_args
from .policy_file import load_policy

if TYPE_CHECKING:
    from jpq_env import CostReport, LayerGraph, Policy

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``jpq evaluate`` and its options to ``subparsers``."""
    parser = subparsers.add_parser("evaluate", help="test accuracy, BOPs and size of a policy file")
    parser.add_argument("policy", help="a policy.json written by jpq search")
    add_task_args(parser, None)  # default: the task (and its options) named in the file
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the per-layer table and the totals of ``args.policy``; 0 unless it cannot load."""
    from jpq_env import measure

    policy, evaluator, _ = load_policy(args)
    cost = measure(evaluator.graph, policy)
    print(_layer_table(evaluator.graph, policy, cost))
    images = len(evaluator.task.test)  # type: ignore[arg-type]
    print(f"scoring the policy and FP32 on the {images:,} test images ...", file=sys.stderr)
    test, fp32 = evaluator.test_accuracy(policy), evaluator.test_accuracy(None)
    print(
        f"\ntest accuracy {test:.2%} (FP32 {fp32:.2%}) | val accuracy "
        f"{evaluator.accuracy(policy):.2%}\nBOPs {cost.bops:,} = {cost.bops_ratio:.5f} of FP32 "
        f"({one_in(cost.bops_ratio)}) | size {cost.size_bits:,} bits = {cost.size_ratio:.4f} "
        f"of FP32 ({cost.size_bytes('MB'):.4f} MB)"
    )
    return 0


def _layer_table(graph: LayerGraph, policy: Policy, cost: CostReport) -> str:
    """One row per layer: kernels kept, sparsity, mean weight bits, activation bits, costs."""
    rows = [
        (
            info.name,
            f"{c.kept_out}/{info.out_channels}",
            f"{lp.sparsity:.2f}",
            f"{c.mean_w_bits:.2f}",
            c.act_bits,
            f"{c.bops:,}",
            f"{c.size_bits:,}",
        )
        for info, lp, c in zip(graph.layers, policy.layers, cost.layers, strict=True)
    ]
    return table(
        ("layer", "kernels kept", "sparsity", "mean w bits", "a bits", "BOPs", "size bits"), rows
    )
