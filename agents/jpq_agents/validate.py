"""``jpq validate``: replay a run's logged policies through a fresh evaluator (CompilerGym's sense).

Each logged evaluation is scored again from scratch (a new environment built from the run's
recorded settings, so a new task, graph and accuracy proxy) and its accuracy, BOPs ratio and
size ratio must equal the logged ones exactly: the proxy is deterministic, so any difference
means the log, the code or the data changed. Raced evaluations (``proxy_complete`` false:
stopped early, scored on part of the held-out split) are skipped and counted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from jpq_env.errors import ArgumentError

__all__ = ["Mismatch", "replay", "validate"]

_CHECKED = ("accuracy", "bops_ratio", "size_ratio")
# Environment arguments that change what an agent observes, never a policy's scores.
_NOT_SCORING = {"sensitivity": False, "error_shaping": 0.0, "shaping": 0.0}


class Mismatch(ValueError):
    """A replayed evaluation whose scores differ from the logged ones."""

    def __init__(self, episode: int, field: str, logged: Any, replayed: float) -> None:
        super().__init__(f"episode {episode}: {field} logged {logged!r}, replayed {replayed!r}")
        self.episode, self.field, self.logged, self.replayed = episode, field, logged, replayed


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ArgumentError(f"cannot read '{path}': {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ArgumentError(f"'{path}' is not valid JSON: {exc}") from exc


def _load(path: Path) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """The environment settings (with ``id``) and the records to replay, each with its place.

    The place is ``file:line`` in a run's log, or the policy file's path.

    A run's log is read by ``jpq_agents.search.read_log``, the reader ``--resume`` uses: a log
    that resume would refuse (an edited line, a duplicated episode) is refused here too.
    """
    from .search import LOG_NAME, RUN_NAME, SearchError, read_log

    if path.is_dir():
        run = _read_json(path / RUN_NAME)
        if not isinstance(run, dict) or not isinstance(run.get("env"), dict):
            raise ArgumentError(f"'{path / RUN_NAME}' holds no environment settings ('env')")
        log = path / LOG_NAME
        if not log.is_file():
            raise ArgumentError(f"cannot read '{log}': no such file")
        try:
            records = read_log(log)
        except SearchError as exc:
            raise ArgumentError(str(exc)) from None
        except OSError as exc:
            raise ArgumentError(f"cannot read '{log}': {exc.strerror}") from exc
        return dict(run["env"]), [(f"{log}:{i + 1}", r) for i, r in enumerate(records)]
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("env"), dict):
        raise ArgumentError(f"'{path}' is not a policy file of jpq search (no 'env' settings)")
    record = {
        "episode": data.get("episode", 0),
        "accuracy": data.get("accuracy_val"),
        "bops_ratio": data.get("bops_ratio"),
        "size_ratio": data.get("size_ratio"),
        "policy": data.get("layers"),
        "fingerprint": data.get("fingerprint"),
    }
    return dict(data["env"]), [(str(path), record)]


def replay(
    path: str | Path, task: str | None = None, device: str | None = None, progress: bool = False
) -> tuple[int, int]:
    """Replay every logged evaluation of ``path`` (a run folder or a ``policy.json``).

    Args:
        path: A run folder (``run.json`` and ``evaluations.jsonl``) or a policy file.
        task: Another task to load instead of the recorded one (same model expected).
        device: Where the proxy runs (default: the run's own setting).
        progress: Show a progress bar over the evaluations.

    Returns:
        ``(replayed, skipped)``: evaluations checked, and raced ones skipped.

    Raises:
        Mismatch: At the first evaluation whose scores differ from the log.
        ValueError: For unreadable files, naming ``file:line`` (a ``PolicyError`` for a policy
            that is malformed or of another model).
    """
    import gymnasium as gym
    from tqdm import tqdm

    import jpq_env  # noqa: F401 - registers the ids
    from jpq_env.core.costs import measure
    from jpq_env.core.policy import Policy
    from jpq_env.envs import JPQEnv
    from jpq_env.errors import PolicyError

    from .run import DEFAULT_ENV

    settings, records = _load(Path(path))
    kwargs = {**settings, **_NOT_SCORING}
    env_id = str(kwargs.pop("id", DEFAULT_ENV))
    if task is not None:
        kwargs["task"] = task
    if device is not None:
        kwargs["device"] = device
    env = gym.make(env_id, **kwargs).unwrapped
    if not isinstance(env, JPQEnv):
        raise ArgumentError(f"{env_id} is not a JPQ environment")
    graph, evaluator = env.graph, env.evaluator
    replayed = skipped = 0
    for where, record in tqdm(records, desc="replaying", unit="evaluation", disable=not progress):
        if record.get("proxy_complete") is False:
            skipped += 1
            continue
        try:
            policy = Policy.from_json(
                {
                    "schema": 1,
                    "fingerprint": record.get("fingerprint") or graph.fingerprint,
                    "layers": record.get("policy"),
                }
            )
            policy.validate(graph)
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None
        cost = measure(graph, policy)
        scores = {
            "accuracy": float(evaluator.accuracy(policy)),
            "bops_ratio": cost.bops_ratio,
            "size_ratio": cost.size_ratio,
        }
        for field in _CHECKED:
            if record.get(field) != scores[field]:
                raise Mismatch(
                    int(record.get("episode", -1)), field, record.get(field), scores[field]
                )
        replayed += 1
    return replayed, skipped


def validate(
    path: str | Path,
    task: str | None = None,
    device: str | None = None,
    out: TextIO | None = None,
    progress: bool = False,
) -> int:
    """``jpq validate``: 0 when every replayed evaluation matches its log entry, 1 at a mismatch.

    The message names the first mismatching episode, the field, and both values.
    """
    try:
        replayed, skipped = replay(path, task, device, progress)
    except Mismatch as exc:
        print(f"jpq: validate: mismatch at {exc}", file=sys.stderr)
        return 1
    note = f" ({skipped} raced evaluations skipped)" if skipped else ""
    print(
        f"{replayed} evaluations replayed: accuracy, BOPs and size match the log{note}",
        file=out or sys.stdout,
    )
    return 0


REAL_ENV = "jpq_env/JPQWeightsActs-v0"
"""The real problem a bench stands for (``jpq_env.envs.bench``)."""


def replay_real(
    path: str | Path,
    task: str | None = None,
    task_options: dict[str, Any] | None = None,
    device: str | None = None,
    progress: bool = False,
    envs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Score the policy of a bench run with the real proxy (``jpq validate --real``).

    Args:
        path: A ``policy.json`` found on a bench (or a bench run's folder: its ``policy.json``).
        task: The real task (default: the bench's, by name).
        task_options: Its factory's arguments (the data folder and weights of ResNet-20).
        device: Where the real proxy runs.
        progress: Show a progress bar.
        envs: Real environments already built, by their arguments: one found here is reused,
            one built is added (a caller scoring many policies builds the real task once).

    Returns:
        One row per policy: predicted and real held-out score and test accuracy, the spread.

    Raises:
        ArgumentError: If ``path`` was not found on a bench, or the real task cannot load.
    """
    import gymnasium as gym
    from tqdm import tqdm

    import jpq_env  # noqa: F401 - registers the ids
    from jpq_env.core.policy import Policy
    from jpq_env.envs import JPQEnv
    from jpq_env.errors import PolicyError
    from jpq_env.proxy.bench import BenchModel

    from .run import env_arguments

    p = Path(path)
    if p.is_dir():
        p = p / "policy.json"
    settings, records = _load(p)
    env_id = str(settings.pop("id", ""))
    if "bench" not in settings and "JPQBench" not in env_id:
        raise ArgumentError(
            f"'{p}' was not found on a bench (its environment is {env_id or 'not named'}): "
            "replay it without --real"
        )
    bench = BenchModel.load(settings.pop("bench", "resnet20-cifar"))
    allowed = env_arguments(REAL_ENV) - {"evaluator", "task", "task_options", "sensitivity"}
    kwargs = {k: v for k, v in settings.items() if k in allowed}
    kwargs.update(bench.meta["env"])
    kwargs["task"] = task or bench.meta["task"]
    # The options the bench's data were made with (e.g. ResNet-20's input normalisation), then
    # the caller's (its data folder and weights).
    kwargs["task_options"] = {**bench.meta.get("task_options", {}), **(task_options or {})}
    if device is not None:
        kwargs["device"] = device
    key = json.dumps(kwargs, sort_keys=True, default=str)
    env = (envs or {}).get(key) or gym.make(REAL_ENV, **kwargs).unwrapped
    assert isinstance(env, JPQEnv)
    if envs is not None:
        envs[key] = env
    rows = []
    for where, record in tqdm(records, desc="scoring", unit="policy", disable=not progress):
        try:
            policy = Policy.from_layers(record.get("policy"), env.graph.fingerprint)
            policy.validate(env.graph)
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None
        pred = bench.predict([policy])
        rows.append(
            {
                "where": where,
                "predicted_val": float(pred["val"][0]),
                "predicted_val_std": float(pred["val_std"][0]),
                "real_val": float(env.evaluator.accuracy(policy)),
                "predicted_test": float(pred["test"][0]) if "test" in pred else None,
                "real_test": float(env.evaluator.test_accuracy(policy)),
            }
        )
    return rows


def validate_real(
    path: str | Path,
    task: str | None = None,
    task_options: dict[str, Any] | None = None,
    device: str | None = None,
    out: TextIO | None = None,
    progress: bool = False,
) -> int:
    """``jpq validate --real``: print the bench's prediction beside the real scores; 0."""
    rows = replay_real(path, task, task_options, device, progress)
    stream = out or sys.stdout
    for r in rows:
        test = (
            f"predicted {r['predicted_test']:.2%}, real {r['real_test']:.2%}"
            if r["predicted_test"] is not None
            else f"real {r['real_test']:.2%}"
        )
        print(
            f"{r['where']}: held-out score predicted {r['predicted_val']:.2%} "
            f"(± {r['predicted_val_std']:.2%}), real {r['real_val']:.2%} "
            f"({(r['real_val'] - r['predicted_val']) * 100:+.2f} points) | test accuracy {test}",
            file=stream,
        )
    return 0
