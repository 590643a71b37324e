"""``jpq finetune POLICY``: quantization-aware fine-tuning, accuracy per epoch, before and after.

The output file is checked before the training starts (not after minutes of it), and written
atomically, so an interrupted run never leaves half a weights file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jpq_env.errors import ArgumentError

from .parser import Subparsers, add_task_args, positive, seed
from .policy_file import check_output_file, load_policy

RECIPES = ("lsq", "ste")  # jpq_env.proxy.finetune.RECIPES (not imported: --help loads no torch)

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``jpq finetune`` and its options to ``subparsers``."""
    parser = subparsers.add_parser("finetune", help="quantization-aware fine-tuning of a policy")
    parser.add_argument("policy", help="a policy.json written by jpq search")
    parser.add_argument("--epochs", type=positive, default=3, help="fine-tuning epochs")
    parser.add_argument(
        "--recipe",
        choices=RECIPES,
        default="lsq",
        help="lsq: learned weight and activation steps, distillation from the FP32 model, SGD "
        "with a cosine schedule; ste: fixed scales, cross-entropy, Adam",
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: 0.01 lsq, 0.001 ste)"
    )
    parser.add_argument(
        "--distill",
        type=float,
        default=None,
        help="weight of the distillation term, 0-1 (default: 0.5 with lsq)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="distillation temperature (default: 2 with lsq)",
    )
    parser.add_argument(
        "--checkpoints",
        default=None,
        help="folder for per-epoch checkpoints: the same command started again continues after "
        "the last finished epoch",
    )
    parser.add_argument("--seed", type=seed, default=0, help="seed of the data order")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    add_task_args(parser, None)
    parser.add_argument(
        "--out", default=None, help="weights file (default: finetuned.pt beside the policy)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fine-tune ``args.policy``, save the weights and print the accuracies; 0 when done."""
    from jpq_env.export.packed import save_atomic
    from jpq_env.proxy.finetune import finetune

    given = (("distill", args.distill), ("temperature", args.temperature))
    distillation = {k: v for k, v in given if v is not None}
    if args.recipe == "ste" and distillation:
        flags = " and ".join(f"--{k}" for k in distillation)
        raise ArgumentError(f"{flags} apply to --recipe lsq only (ste has no distillation)")
    out = Path(args.out) if args.out else Path(args.policy).with_name("finetuned.pt")
    check_output_file(out, args)  # before the training, not after it
    policy, evaluator, _ = load_policy(args)
    result = finetune(
        evaluator,
        policy,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        progress=True,
        recipe=args.recipe,
        checkpoint_dir=args.checkpoints,
        **distillation,
    )
    save_atomic(result.state_dict, out)
    if result.resumed:
        print(f"continued from the checkpoint of epoch {result.resumed} in {args.checkpoints}")
    for h in result.history:
        print(
            f"epoch {h['epoch']}: loss {h['loss']:.4f}, held-out {h['val']:.2%}, "
            f"test {h['test']:.2%} ({h['seconds']:.0f} s)"
        )
    print(
        f"test accuracy before fine-tuning {result.accuracy_before:.2%}, after {args.epochs} "
        f"epoch(s) {result.accuracy_after:.2%} (FP32 {evaluator.test_accuracy(None):.2%}); "
        f"weights in {out}"
    )
    return 0
