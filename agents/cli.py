"""The ``jpq`` command line.

- ``jpq search``: search a policy with an agent (two-level controller by default, SB3 agents,
  baselines), logging every evaluation, keeping the best policy within budget;
- ``jpq evaluate POLICY``: test accuracy, BOPs, size and a per-layer table;
- ``jpq finetune POLICY``: short quantization-aware fine-tuning, accuracy before and after;
- ``jpq export POLICY --out FILE``: a compressed checkpoint that reloads into the model;
- ``jpq report``: the compression core on a task (layers, FP32 accuracy, MACs, BOPs, size).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

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


def _task_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE``; the value is read as JSON when it parses (numbers, lists), else a string.

    A comma-separated list of numbers (``mean=0.485,0.456,0.406``) is a list, as in JSON.
    """
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        pass
    if "," in value:
        try:
            parts = [json.loads(part) for part in value.split(",")]
        except json.JSONDecodeError:
            return key, value
        if all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in parts):
            return key, parts
    return key, value


def _add_task_args(parser: argparse.ArgumentParser, task_default: str | None) -> None:
    parser.add_argument(
        "--task", default=task_default, help="built-in name or package.module:factory"
    )
    parser.add_argument("--data", default=None, help="data folder of the task (vision tasks)")
    parser.add_argument("--weights", default=None, help="state_dict file of the task's model")
    parser.add_argument(
        "--task-option",
        type=_task_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another argument of the task factory, e.g. val_size=1000 (repeatable)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")


def _task_options(args: argparse.Namespace) -> dict[str, object]:
    options: dict[str, object] = dict(args.task_option)
    for key in ("data", "weights"):  # absolute, so the run's settings work from any folder
        if getattr(args, key) is not None:
            options[key] = os.path.abspath(os.path.expanduser(getattr(args, key)))
    return options


def _report(args: argparse.Namespace) -> int:
    task = load_task(args.task, **_task_options(args))
    evaluator = LocalEvaluator(
        task, bn_recalibration=not args.no_bn_recalibration, device=args.device
    )
    graph = evaluator.graph
    print(f"task {task.name}: {len(graph)} compressible layers")
    for key, value in task.details.items():
        print(f"{key}: {value}")
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
    if graph.uncompressed:
        total = max(graph.total_macs, 1)
        print(
            f"\nNot compressed ({len(graph.uncompressed)}; FP32 weights, counted at 32-bit "
            "weights and inputs in every policy's BOPs and size and in the FP32 reference):"
        )
        print(
            _table(
                ("layer", "kind", "params", "MACs", "MACs share"),
                [
                    (
                        x.name,
                        x.kind,
                        f"{x.params:,}",
                        "not counted" if x.macs is None else f"{x.macs:,}",
                        "-" if x.macs is None else f"{x.macs / total:.1%}",
                    )
                    for x in graph.uncompressed
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


def _fraction(text: str) -> float | None:
    """A budget: a fraction of FP32 in (0, 1], as ``0.015625`` or ``1/64``; ``none`` for none."""
    if text.lower() == "none":
        return None
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"not a fraction: '{text}'") from exc
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a budget must lie in (0, 1], got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _search(args: argparse.Namespace) -> int:
    from .run import run_search

    env_kwargs: dict[str, object] = {
        "task": args.task,
        "reward": args.reward,
        "budget_size": args.budget_size,
        "enforcement": args.enforcement,
    }
    if hasattr(args, "budget_bops"):  # else the environment's own (1/128 or 1/64)
        env_kwargs["budget_bops"] = args.budget_bops
    if _task_options(args):
        env_kwargs["task_options"] = _task_options(args)
    if args.device != "auto":
        env_kwargs["device"] = args.device
    try:
        summary = run_search(
            args.agent,
            args.out,
            args.episodes,
            seed=args.seed,
            env_id=args.env,
            env_kwargs=env_kwargs,
            resume=args.resume,
            progress=not args.quiet,
            warmup_episodes=args.warmup_episodes,
            ray=args.ray,
            workers=args.workers,
        )
    except KeyboardInterrupt:
        # Every finished evaluation is already in the log (one fsynced line each).
        if (Path(args.out) / "evaluations.jsonl").exists():
            hint = (
                f"; the evaluations so far are in '{args.out}'. Run the same command with --resume "
                "to continue from them."
            )
        else:
            hint = " before the first evaluation: nothing to resume."
        print(f"\njpq: interrupted{hint}", file=sys.stderr)
        return 130
    best = summary["best"]
    rows = [
        ("agent", summary["agent"]),
        ("evaluations", summary["evaluations"]),
        ("wall time", f"{summary['seconds']:.1f} s"),
        (
            "FP32 accuracy (val / test)",
            f"{summary['accuracy_fp32_val']:.2%} / {summary['accuracy_fp32_test']:.2%}",
        ),
        ("episodes over budget", summary["budget_violations"]),
    ]
    if best is None:
        rows.append(("best within budget", "none found"))
    else:
        rows += [
            ("best episode", best["episode"]),
            (
                "best accuracy (val / test)",
                f"{best['accuracy_val']:.2%} / {best['accuracy_test']:.2%}",
            ),
            ("BOPs of FP32", f"{best['bops_ratio']:.5f} (1/{1 / best['bops_ratio']:.1f})"),
            ("size of FP32", f"{best['size_ratio']:.4f} (1/{1 / best['size_ratio']:.1f})"),
        ]
    print(_table(("summary", ""), rows))
    files = "policy.json, evaluations.jsonl, pareto.png, summary.json, tensorboard/"
    print(f"\nfiles in {args.out}: {files}")
    return 0


def _load_policy(args: argparse.Namespace) -> tuple[Policy, LocalEvaluator, dict[str, object]]:
    import json
    from pathlib import Path

    path = args.policy
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise PolicyError(f"cannot read policy file '{path}': {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise PolicyError(f"policy file '{path}' is not valid JSON: {exc}") from exc
    policy = Policy.from_json(data)
    env = data.get("env") if isinstance(data.get("env"), dict) else {}
    # The task's options (data, weights) come from the search's settings unless given here.
    options = {} if args.task else dict(env.get("task_options") or {})
    options.update(_task_options(args))
    task = load_task(args.task or str(data.get("task", "digits")), **options)
    evaluator = LocalEvaluator(
        task, bn_recalibration=bool(env.get("bn_recalibration", True)), device=args.device
    )
    policy.validate(evaluator.graph)
    return policy, evaluator, data


def _evaluate(args: argparse.Namespace) -> int:
    policy, evaluator, _ = _load_policy(args)
    graph = evaluator.graph
    cost = measure(graph, policy)
    rows = []
    for info, lp, c in zip(graph.layers, policy.layers, cost.layers, strict=True):
        rows.append(
            (
                info.name,
                f"{c.kept_out}/{info.out_channels}",
                f"{lp.sparsity:.2f}",
                f"{c.mean_w_bits:.2f}",
                c.act_bits,
                f"{c.bops:,}",
                f"{c.size_bits:,}",
            )
        )
    print(
        _table(
            ("layer", "kernels kept", "sparsity", "mean w bits", "a bits", "BOPs", "size bits"),
            rows,
        )
    )
    test, fp32 = evaluator.test_accuracy(policy), evaluator.test_accuracy(None)
    print(
        f"\ntest accuracy {test:.2%} (FP32 {fp32:.2%}) | val accuracy "
        f"{evaluator.accuracy(policy):.2%}\nBOPs {cost.bops:,} = {cost.bops_ratio:.5f} of FP32 "
        f"(1/{1 / cost.bops_ratio:.1f}) | size {cost.size_bits:,} bits = {cost.size_ratio:.4f} "
        f"of FP32 ({cost.size_bytes('MB'):.4f} MB)"
    )
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jpq_env.export import save_atomic
    from jpq_env.finetune import finetune

    policy, evaluator, _ = _load_policy(args)
    result = finetune(evaluator, policy, epochs=args.epochs, lr=args.lr, seed=args.seed)
    out = Path(args.out) if args.out else Path(args.policy).with_name("finetuned.pt")
    save_atomic(result.state_dict, out)
    print(
        f"test accuracy before fine-tuning {result.accuracy_before:.2%}, after {args.epochs} "
        f"epoch(s) {result.accuracy_after:.2%} (FP32 {evaluator.test_accuracy(None):.2%}); "
        f"weights in {out}"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    import os

    from jpq_env.costs import measure
    from jpq_env.evaluate import top1
    from jpq_env.export import export_compressed, load_compressed

    policy, evaluator, _ = _load_policy(args)
    task = evaluator.task
    if args.format == "torch":
        from jpq_env.prune_export import load_pruned, pruned_module, save_pruned

        save_pruned(pruned_module(evaluator, policy), task.example_input, args.out)
        reloaded = load_pruned(args.out)
        what = "torch.export program of the physically pruned model"
    elif args.format == "onnx":
        from jpq_env.onnx_export import ONNX_OPSET, export_onnx, load_onnx

        try:
            export_onnx(evaluator, policy, args.out)
        except ImportError as exc:  # the optional extra is not installed
            raise ValueError(str(exc)) from exc
        reloaded = load_onnx(args.out)  # type: ignore[assignment]  # called like a module
        what = f"ONNX opset {ONNX_OPSET}, integer weights, QDQ activations, pruned channels removed"
    else:
        export_compressed(evaluator, policy, args.out)
        reloaded = load_compressed(args.out, task.model, task.example_input)
        what = "jpq-compressed-v2 (bit-packed)"
    cost = measure(evaluator.graph, policy)
    size, fp32 = os.path.getsize(args.out), cost.size_bits_fp32 / 8
    print(
        f"exported to {args.out} ({what}): {size:,} bytes = {size / fp32:.3f} of the FP32 weights "
        f"({fp32:,.0f} bytes); size model {cost.size_bits / 8:,.0f} bytes\n"
        f"reloaded model test accuracy {top1(reloaded, task.test):.2%} "
        f"(evaluate: {evaluator.test_accuracy(policy):.2%})"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    from .run import AGENTS

    parser = argparse.ArgumentParser(
        prog="jpq", description="Joint pruning and quantization of PyTorch networks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="measure a task: layers, FP32 accuracy, MACs, BOPs")
    _add_task_args(report, "digits")
    report.add_argument(
        "--no-bn-recalibration", action="store_true", help="score without BN re-calibration"
    )
    report.add_argument("--quiet", action="store_true", help="no progress bar")
    report.set_defaults(func=_report)

    search = sub.add_parser("search", help="search a compression policy with an agent")
    search.add_argument("--agent", default="two-level", choices=sorted(AGENTS))
    _add_task_args(search, "digits")
    search.add_argument(
        "--env",
        default="jpq_env/JPQWeightsActs-v0",
        help="registered environment id (JPQWeightsActs-v0: weights and activations; "
        "JPQWeights-v0: weights only)",
    )
    search.add_argument(
        "--budget-bops",
        type=_fraction,
        default=argparse.SUPPRESS,
        help="fraction of FP32 BOPs (e.g. 1/128), or none; default: the environment's "
        "(1/128 on JPQWeightsActs-v0, 1/64 on JPQWeights-v0)",
    )
    search.add_argument(
        "--budget-size", type=_fraction, default=None, help="fraction of FP32 weight bits, or none"
    )
    search.add_argument("--reward", default="galen", help="reward design name")
    search.add_argument("--enforcement", default="wall", choices=["wall", "lowering", "none"])
    search.add_argument("--episodes", type=_positive, default=300, help="evaluations to spend")
    search.add_argument("--warmup-episodes", type=int, default=10, help="DDPG warm-up episodes")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--out", default="runs/search", help="output directory")
    search.add_argument(
        "--resume", action="store_true", help="continue the run in --out (or start one there)"
    )
    search.add_argument("--quiet", action="store_true", help="no progress bar")
    search.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="evaluate on a Ray cluster: 'auto' (the cluster this machine is in) or HOST:PORT",
    )
    search.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="Ray actors evaluating at once (default: one per GPU, else per CPU); alone, starts "
        "a local Ray",
    )
    search.set_defaults(func=_search)

    evaluate = sub.add_parser("evaluate", help="test accuracy, BOPs and size of a policy file")
    evaluate.add_argument("policy", help="a policy.json written by jpq search")
    _add_task_args(evaluate, None)  # default: the task (and its options) named in the file
    evaluate.set_defaults(func=_evaluate)

    finetune = sub.add_parser("finetune", help="quantization-aware fine-tuning of a policy")
    finetune.add_argument("policy")
    finetune.add_argument("--epochs", type=_positive, default=3)
    finetune.add_argument("--lr", type=float, default=1e-3)
    finetune.add_argument("--seed", type=int, default=0)
    _add_task_args(finetune, None)
    finetune.add_argument(
        "--out", default=None, help="weights file (default: finetuned.pt beside the policy)"
    )
    finetune.set_defaults(func=_finetune)

    export = sub.add_parser(
        "export", help="write a compressed checkpoint (integer weights, scales, masks)"
    )
    export.add_argument("policy")
    export.add_argument("--out", required=True, help="checkpoint file to write")
    export.add_argument(
        "--format",
        choices=("jpq", "torch", "onnx"),
        default="jpq",
        help="jpq: bit-packed integer weights for load_compressed (default); torch: the "
        "physically pruned model as a torch.export program (torch.export.load(FILE).module()); "
        "onnx: that model in ONNX with integer weights and QDQ activations (opset 21, for "
        "onnxruntime; needs pip install 'jpq-env[onnx]')",
    )
    _add_task_args(export, None)
    export.set_defaults(func=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jpq`` command."""
    from .search import SearchError

    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (TaskError, GraphError, PolicyError, SearchError, ValueError, OSError) as exc:
        print(f"jpq: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
