"""The ``jpq`` command line.

- ``jpq search``: search a policy with an agent (two-level controller by default, SB3 agents,
  baselines), logging every evaluation, keeping the best policy within budget;
- ``jpq evaluate POLICY``: test accuracy, BOPs, size and a per-layer table;
- ``jpq finetune POLICY``: short quantization-aware fine-tuning, accuracy before and after;
- ``jpq export POLICY --out FILE``: a compressed checkpoint that reloads into the model;
- ``jpq report``: the compression core on a task (layers, FP32 accuracy, MACs, BOPs, size);
- ``jpq validate RUN_OR_POLICY``: replay logged policies, check their scores match the log;
- ``jpq list``: tasks, agents, reward designs and environment ids; ``jpq --version``.

The compression core (torch) is imported once a command runs, not for ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalogue import AGENT_NAMES, listing, version

if TYPE_CHECKING:
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


def _import_core() -> None:
    """Bind the compression core's names used below (imports torch: only when a command runs)."""
    global Conventions, GraphError, LocalEvaluator, Policy, PolicyError, TaskError
    global load_task, measure
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


def _report(args: argparse.Namespace) -> int:
    from tqdm import tqdm

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
                _one_in(cost.bops_ratio),
                f"{cost.bops:,}",
                _one_in(cost.size_ratio),
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


def _integer(text: str, low: int, high: int | None, rule: str) -> int:
    """An integer option in [low, high) (argparse's error names the option and ``rule``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: '{text}'") from None
    if value < low or (high is not None and value >= high):
        raise argparse.ArgumentTypeError(f"{rule}, got {value}")
    return value


def _seed(text: str) -> int:
    return _integer(text, 0, 2**32, "a seed must lie in [0, 2**32)")


def _natural(text: str) -> int:
    return _integer(text, 0, None, "must be at least 0")


def _positive(text: str) -> int:
    return _integer(text, 1, None, "must be at least 1")


# Environment arguments that ``jpq search`` sets from its own flags (an --env-option would
# silently win over the flag).
_ENV_FLAGS = {
    "task": "--task",
    "task_options": "--task-option, --data or --weights",
    "reward": "--reward",
    "budget_bops": "--budget-bops",
    "budget_size": "--budget-size",
    "enforcement": "--enforcement",
    "device": "--device",
}


def _search(args: argparse.Namespace) -> int:
    from .run import run_search

    for key, _ in args.env_option:
        if key in _ENV_FLAGS:
            raise ValueError(f"--env-option {key}=...: set it with {_ENV_FLAGS[key]}")

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
    env_kwargs.update(dict(args.env_option))
    agent_options: dict[str, object] = {}
    if args.hyperparams is not None:
        from .agent_options import read_hyperparams
        from .sb3 import ALGOS

        if args.agent not in ALGOS:
            raise ValueError(
                f"--hyperparams is for the SB3 agents ({', '.join(sorted(ALGOS))}); the "
                f"{args.agent} agent takes --agent-option"
            )
        agent_options.update(read_hyperparams(args.hyperparams, args.env))
    agent_options.update(dict(args.agent_option))
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
            agent_options=agent_options,
        )
    except KeyboardInterrupt as exc:
        # Every finished evaluation is already in the log (one fsynced line each).
        if (Path(args.out) / "evaluations.jsonl").exists():
            hint = (
                f"; the evaluations so far are in '{args.out}'. Run the same command with --resume "
                "to continue from them."
            )
        else:
            hint = " before the first evaluation: nothing to resume."
        print(f"\njpq: {_interruption(exc)}{hint}", file=sys.stderr)
        return _exit_code(exc)
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
    stopped = summary.get("stopped_early")  # e.g. greedy converged: nothing left to try
    if stopped:
        rows[1] = ("evaluations", f"{summary['evaluations']} of {args.episodes} (stopped early)")
    if best is None:
        rows.append(("best within budget", "none found"))
    else:
        rows += [
            ("best episode", best["episode"]),
            (
                "best accuracy (val / test)",
                f"{best['accuracy_val']:.2%} / {best['accuracy_test']:.2%}",
            ),
            ("BOPs of FP32", f"{best['bops_ratio']:.5f} ({_one_in(best['bops_ratio'])})"),
            ("size of FP32", f"{best['size_ratio']:.4f} ({_one_in(best['size_ratio'])})"),
        ]
    print(_table(("summary", ""), rows))
    if stopped:
        n, of = summary["evaluations"], args.episodes
        print(f"stopped early, after {n} of {of} evaluations: {stopped}")
    if summary.get("cut_short_by_budget"):
        print(f"cut short by the evaluation budget: {summary['cut_short_by_budget']}")
    replayed = summary.get("replayed_from_log", 0)
    if replayed:
        new = summary["evaluations"] - replayed
        print(
            f"resumed: {replayed} evaluations replayed from the log (not re-scored), {new} new"
            + (" (the run had already finished: this is its summary again)" if not new else "")
        )
    if best is not None and best.get("same_as"):
        print(
            f"the best policy is the reference policy '{best['same_as']}' (prune-then-quantize):"
            " the search found nothing better within budget"
        )
    from .out_dir import listing

    print(f"\nfiles in {args.out}: {listing(Path(args.out))}")
    return 0


def _file_task(data: dict[str, Any], path: str, cli_task: str | None) -> tuple[str, dict[str, Any]]:
    """The task a policy file may be evaluated on, and the options it brings.

    A policy file is data a user may have downloaded: it never chooses code to import. A built-in
    task name in it is used as is; a factory path (``module:function``) only if the user names
    the same factory with ``--task``. Its options must be a JSON object of plain values.
    """
    from jpq_env.tasks import BUILTIN_TASKS

    env = data.get("env", {})
    if not isinstance(env, dict):
        raise PolicyError(f"policy file '{path}': 'env' must be an object, got {env!r}")
    named = data.get("task", env.get("task", "digits"))
    if not isinstance(named, str):
        raise PolicyError(f"policy file '{path}': 'task' must be a string, got {named!r}")
    if "task" in env and env["task"] != named:
        raise PolicyError(
            f"policy file '{path}': 'task' is {named!r} but 'env.task' is {env['task']!r}"
        )
    options = env.get("task_options") or {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise PolicyError(
            f"policy file '{path}': 'env.task_options' must be an object of named options, "
            f"got {options!r}"
        )
    if cli_task is not None:  # the user chose the code; the file's options only for that task
        return cli_task, dict(options) if cli_task == named else {}
    if named not in BUILTIN_TASKS:
        raise PolicyError(
            f"policy file '{path}' names the task factory '{named}': a policy file never chooses "
            f"code to import. If you trust that code, name it yourself: --task {named}"
        )
    return named, dict(options)


def _load_policy(args: argparse.Namespace) -> tuple[Policy, LocalEvaluator, dict[str, Any]]:
    from jpq_env import validation as check
    from jpq_env.jsonfile import read_json

    path = args.policy
    data = read_json(path, "policy file", error=PolicyError)
    policy = Policy.from_json(data)
    task_name, options = _file_task(data, path, args.task)
    options.update(_task_options(args))  # the command line's options win
    env = data.get("env") or {}
    recalibrate = check.flag(
        f"policy file '{path}': env.bn_recalibration",
        env.get("bn_recalibration", True),
        error=PolicyError,
    )
    task = load_task(task_name, **options)
    evaluator = LocalEvaluator(task, bn_recalibration=recalibrate, device=args.device)
    policy.validate(evaluator.graph)
    _note_conventions(policy, evaluator, env, path)
    return policy, evaluator, data


def _note_conventions(policy: Policy, evaluator: Any, env: dict[str, Any], path: str) -> None:
    """Say so when a policy file departs from the conventions its search imposes.

    A search pins, for example, the layers reading the network input at 8-bit inputs; a file
    edited to 2 bits there describes a policy the search could never produce. It is evaluated as
    written, with a note, instead of silently scoring something else than the search did.
    """
    from jpq_env.core.policy import Conventions

    with contextlib.suppress(ValueError, TypeError):  # odd values: the env's own checks name them
        conventions = Conventions(
            input_bits=env.get("input_bits", 8), first_last_bits=env.get("first_last_bits")
        )
        imposed = conventions.apply(evaluator.graph, policy)
        changed = [
            a.name
            for a, b in zip(policy.layers, imposed.layers, strict=True)
            if a.act_bits != b.act_bits or not (a.bits == b.bits).all()
        ]
        if changed:
            print(
                f"jpq: note: policy file '{path}' departs from its search's conventions in "
                f"{', '.join(changed)} (e.g. the network input at {conventions.input_bits} bits); "
                "evaluated as written",
                file=sys.stderr,
            )


def _check_output_file(path: Path, args: argparse.Namespace) -> None:
    """Refuse an output path that cannot take a file or would destroy one, before any work.

    Never the policy file itself, the task's weights or data named in it or on the command line,
    or a run's own files; an existing file only with ``--force``.
    """
    if path.is_dir():
        raise ValueError(f"--out '{path}' is a directory: name a file in it")
    if not path.parent.is_dir():
        raise ValueError(f"--out '{path}': directory '{path.parent}' does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"--out '{path}': directory '{path.parent}' is not writable")
    target = path.resolve()
    inputs = [args.policy, *(str(v) for v in _task_options(args).values())]
    with contextlib.suppress(PolicyError, ValueError, AttributeError):  # named later if bad
        from jpq_env.jsonfile import read_json

        env = read_json(args.policy, "policy file", error=PolicyError).get("env", {})
        inputs += [str(v) for v in (env.get("task_options") or {}).values()]
    for given in inputs:
        same = False
        with contextlib.suppress(OSError, ValueError):  # not a path: not an input file
            same = Path(given).expanduser().resolve() == target
        if same:
            raise ValueError(
                f"--out '{path}' is an input of this command ('{given}'): it would be "
                "overwritten. Choose another file"
            )
    if (path.parent / "run.json").exists() and path.name in _RUN_FILES:
        raise ValueError(f"--out '{path}' is a file of the run in '{path.parent}': choose another")
    if path.exists() and not args.force:
        raise ValueError(f"--out '{path}' exists: pass --force to replace it")


_RUN_FILES = frozenset(
    {
        "run.json",
        "evaluations.jsonl",
        "policy.json",
        "summary.json",
        "reference.jsonl",
        "pareto.png",
        "model.zip",
    }
)


def _one_in(ratio: float) -> str:
    """``ratio`` as "1/N" (``0`` when nothing is left: every kernel pruned)."""
    return f"1/{1 / ratio:.1f}" if ratio > 0 else "0"


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
        f"({_one_in(cost.bops_ratio)}) | size {cost.size_bits:,} bits = {cost.size_ratio:.4f} "
        f"of FP32 ({cost.size_bytes('MB'):.4f} MB)"
    )
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jpq_env.export.packed import save_atomic
    from jpq_env.proxy.finetune import finetune

    out = Path(args.out) if args.out else Path(args.policy).with_name("finetuned.pt")
    _check_output_file(out, args)  # before the training, not after it
    policy, evaluator, _ = _load_policy(args)
    result = finetune(evaluator, policy, epochs=args.epochs, lr=args.lr, seed=args.seed)
    save_atomic(result.state_dict, out)
    print(
        f"test accuracy before fine-tuning {result.accuracy_before:.2%}, after {args.epochs} "
        f"epoch(s) {result.accuracy_after:.2%} (FP32 {evaluator.test_accuracy(None):.2%}); "
        f"weights in {out}"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    import os

    from jpq_env.core.costs import measure
    from jpq_env.export.packed import export_compressed, load_compressed
    from jpq_env.proxy.evaluator import top1

    _check_output_file(Path(args.out), args)
    policy, evaluator, _ = _load_policy(args)
    task = evaluator.task
    if args.format == "torch":
        from jpq_env.export.pruned import load_pruned, pruned_module, save_pruned

        save_pruned(pruned_module(evaluator, policy), task.example_input, args.out)
        reloaded = load_pruned(args.out)
        what = "torch.export program of the physically pruned model"
    elif args.format == "onnx":
        from jpq_env.export.onnx import ONNX_OPSET, export_onnx, load_onnx

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


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's help shows the options' defaults."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def _list(args: argparse.Namespace) -> int:
    print(listing())
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .validate import validate

    return validate(args.path, task=args.task, device=args.device)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jpq", description="Joint pruning and quantization of PyTorch networks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    listed = sub.add_parser("list", help="tasks, agents, reward designs and environment ids")
    listed.set_defaults(func=_list)
    check = sub.add_parser(
        "validate", help="replay logged policies and check their scores match the log"
    )
    check.add_argument("path", help="a run folder (its evaluations.jsonl) or a policy.json")
    check.add_argument("--task", default=None, help="task (default: the one the run names)")
    check.add_argument(
        "--device", default=None, help="where to replay: auto, cpu or cuda (default: the run's)"
    )
    check.set_defaults(func=_validate)
    report = sub.add_parser("report", help="measure a task: layers, FP32 accuracy, MACs, BOPs")
    _add_task_args(report, "digits")
    report.add_argument(
        "--no-bn-recalibration", action="store_true", help="score without BN re-calibration"
    )
    report.add_argument("--quiet", action="store_true", help="no progress bar")
    report.set_defaults(func=_report)

    search = sub.add_parser("search", help="search a compression policy with an agent")
    search.add_argument(
        "--agent", default="two-level", choices=sorted(AGENT_NAMES), help="search agent"
    )
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
    search.add_argument("--reward", default="galen", help="reward design name (see jpq list)")
    search.add_argument(
        "--enforcement",
        default="wall",
        choices=["wall", "lowering", "none"],
        help="budget enforcement: forward wall (AMC), backward lowering (HAQ), none (penalty only)",
    )
    search.add_argument("--episodes", type=_positive, default=300, help="evaluations to spend")
    search.add_argument(
        "--warmup-episodes", type=_natural, default=10, help="DDPG warm-up episodes"
    )
    search.add_argument("--seed", type=_seed, default=0, help="seed of the agent and the env")
    search.add_argument("--out", default="runs/search", help="output directory")
    search.add_argument(
        "--resume", action="store_true", help="continue the run in --out (or start one there)"
    )
    search.add_argument("--quiet", action="store_true", help="no progress bar")
    search.add_argument(
        "--env-option",
        type=_task_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another argument of the environment, e.g. val_images=1000, metric=kl, "
        "sensitivity=false, channel_groups=8 (repeatable; see the README's env table)",
    )
    search.add_argument(
        "--agent-option",
        type=_task_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a hyperparameter of the agent (repeatable): two-level: a TwoLevelConfig field "
        "(lr=0.001, refine_fraction=0.5, surrogate=false); ddpg/ppo/maskable-ppo: an argument "
        "of the SB3 algorithm (learning_rate=0.001, n_steps=96, noise_std=0.3)",
    )
    search.add_argument(
        "--hyperparams",
        default=None,
        metavar="FILE.yml",
        help="SB3 agents: hyperparameters in RL Zoo's format (a table keyed by env id, or "
        "'default'); its entry replaces the shipped values it names, --agent-option wins over it",
    )
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
    finetune.add_argument("policy", help="a policy.json written by jpq search")
    finetune.add_argument("--epochs", type=_positive, default=3, help="fine-tuning epochs")
    finetune.add_argument("--lr", type=float, default=1e-3, help="learning rate (Adam)")
    finetune.add_argument("--seed", type=_seed, default=0, help="seed of the data order")
    finetune.add_argument("--force", action="store_true", help="replace an existing --out file")
    _add_task_args(finetune, None)
    finetune.add_argument(
        "--out", default=None, help="weights file (default: finetuned.pt beside the policy)"
    )
    finetune.set_defaults(func=_finetune)

    export = sub.add_parser(
        "export", help="write a compressed checkpoint (integer weights, scales, masks)"
    )
    export.add_argument("policy", help="a policy.json written by jpq search")
    export.add_argument("--out", required=True, help="checkpoint file to write")
    export.add_argument("--force", action="store_true", help="replace an existing --out file")
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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the process is, so that it stops as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _: object) -> None:
    raise Terminated(signum)


def _interruption(exc: BaseException) -> str:
    if isinstance(exc, Terminated):
        import signal

        return f"stopped by {signal.Signals(exc.signum).name}"
    return "interrupted"


def _exit_code(exc: BaseException) -> int:
    return 128 + exc.signum if isinstance(exc, Terminated) else 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jpq`` command.

    Errors the user can fix end with one ``jpq: error:`` line and exit 2; Ctrl-C, SIGTERM and
    SIGHUP stop the work where it is (a search says how to resume) with 130, 143 and 129.
    """
    import signal

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        args = _parser().parse_args(argv)
        _import_core()  # torch and the core only once a command runs (fast --help)
        from jpq_env.threads import configure_threads

        from .search import SearchError

        try:
            configure_threads()  # the cores this process may use (JPQ_THREADS overrides)
            return int(args.func(args))
        except (TaskError, GraphError, PolicyError, SearchError, ValueError, OSError) as exc:
            print(f"jpq: error: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt as exc:  # during start-up, or in a command other than search
        print(f"\njpq: {_interruption(exc)}", file=sys.stderr)
        return _exit_code(exc)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
