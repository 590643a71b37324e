"""Running a search end to end: the agent, progress, TensorBoard, reference points, the summary.

``run_search`` is what ``jpq search`` calls; it is usable from Python as well.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import numbers
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
from tqdm import tqdm

from jpq_env.core.policy import Policy, record_key
from jpq_env.envs import JPQEnv
from jpq_env.envs.bench import JPQBenchEnv
from jpq_env.envs.registration import RENAMED
from jpq_env.errors import ArgumentError
from jpq_env.proxy import sensitivity
from jpq_env.proxy.evaluator import Evaluator, WrappedEvaluator
from jpq_env.tasks import Task
from jpq_env.validation import did_you_mean

from .agent_options import check_agent_options, two_level_config
from .baselines import BASELINES, Stop
from .optuna_search import OPTUNA_AGENTS, run_optuna
from .out_dir import missing_dirs, remove_empty
from .play import (
    act_level_near,
    jpq,
    least_uniform_pruning,
    level_pairs,
    play,
    uniform_choices,
)
from .plots import pareto_plot
from .provenance import provenance
from .sb3 import ALGOS, run_sb3
from .search import (
    FIDELITIES,
    LOG_NAME,
    RUN_NAME,
    RunSettings,
    Search,
    claim_directory,
    write_atomic,
)
from .two_level import run_two_level

__all__ = ["AGENTS", "DEFAULT_ENV", "LEARNER_ENV", "make_run_env", "run_search"]

DEFAULT_ENV = "jpq_env/JPQWeightsActs-v0"
"""The environment id of a search when none is given (``run_search``, ``jpq search``)."""

LEARNER_ENV: dict[str, dict[str, Any]] = {
    "two-level": {"sensitivity": True},
    "ddpg": {"sensitivity": True, "error_shaping": 1.0},
    "ppo": {"sensitivity": True, "error_shaping": 1.0},
    "maskable-ppo": {"sensitivity": True, "error_shaping": 1.0},
}
"""Environment arguments a learning agent's search gets by default (``env_kwargs`` overrides):
the layers' sensitivities in the observation (``jpq_env.proxy.sensitivity``) and, for the SB3
agents, the potential-based shaping on their predicted cost. Recorded in ``run.json`` like any
argument."""

_ENV_ARGS = frozenset(k for k in inspect.signature(JPQEnv.__init__).parameters if k != "self")
"""The keyword arguments of ``JPQEnv``: what ``env_kwargs`` may hold."""


def env_arguments(env_id: str) -> frozenset[str]:
    """The keyword arguments the environment ``env_id`` takes (its entry point's).

    An entry point that passes ``**kwargs`` on (a bench environment, a renamed id) takes
    ``JPQEnv``'s as well as its own.
    """
    entry = gym.registry[env_id].entry_point
    if entry is None:
        return _ENV_ARGS
    target = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    params = inspect.signature(target).parameters
    own = {
        k
        for k, p in params.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and k not in ("self", "old_id", "new_id")
    }
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        own |= _ENV_ARGS
    return frozenset(own)


def _agents() -> dict[str, Callable[[Search, int, dict[str, Any]], Stop]]:
    table: dict[str, Callable[[Search, int, dict[str, Any]], Stop]] = {
        "two-level": lambda search, seed, opts: run_two_level(
            search, seed, two_level_config(opts.get("agent_options", {}))
        ),
    }
    for name in ALGOS:
        table[name] = lambda search, seed, opts, name=name: run_sb3(  # type: ignore[misc]
            search,
            seed,
            name,
            opts["env_id"],
            opts.get("warmup_episodes", 10),
            opts.get("workers"),
            opts.get("num_gpus", 0.0),
            opts.get("agent_options"),
        )
    for name, fn in BASELINES.items():
        table[name] = lambda search, seed, _, fn=fn: fn(search, seed)  # type: ignore[misc]
    for name, (sampler, warm) in OPTUNA_AGENTS.items():
        table[name] = lambda search, seed, _, s=sampler, w=warm: run_optuna(search, seed, s, w)  # type: ignore[misc]
    return table


AGENTS = _agents()


def _local(env: JPQEnv) -> Evaluator:
    """The evaluator that scores for real: beneath a resumed run's log replay or a padding."""
    evaluator = env.evaluator
    if isinstance(evaluator, WrappedEvaluator):
        evaluator = evaluator.inner
    if not evaluator.has_test_split:
        raise TypeError("the summary needs an evaluator with test_accuracy (LocalEvaluator)")
    return evaluator


def _reference(env_id: str, env_kwargs: dict[str, Any], evaluator: Any) -> list[dict[str, Any]]:
    """Prune-then-quantize points for every width (not counted in the search's evaluations)."""
    ref = gym.make(env_id, **env_kwargs, evaluator=evaluator).unwrapped
    base = jpq(ref)
    pairs = [(lv, act_level_near(base, base.bits[lv])) for lv in range(len(base.bits))]
    return [  # activation decisions at the weights' width: WxAx
        {
            "label": label,
            "accuracy": info["accuracy"],
            "bops_ratio": info["bops_ratio"],
            "budget_met": info["budget_met"],
            "policy": [{"act_bits": p["act_bits"], "bits": p["bits"]} for p in info["policy"]],
        }
        for label, info in _two_stage_episodes(ref, pairs)
    ]


def _two_stage_episodes(
    ref: gym.Env[Any, Any], pairs: list[tuple[int, int | None]]
) -> list[tuple[str, dict[str, Any]]]:
    """``(label, final info)`` of each level pair's prune-then-quantize episode.

    Per (weight, activation) level pair that fits the budget: uniform widths and the least
    uniform pruning that fits.
    """
    base = jpq(ref)
    n = base.num_layers
    out = []
    for w, a in pairs:
        pruned = least_uniform_pruning(base, [w] * n, [a] * n)
        if pruned is None:
            continue
        info = play(ref, uniform_choices(base, pruned, [w] * n, [a] * n))
        sparsity = sum(p["sparsity"] for p in info["policy"]) / len(info["policy"])
        name = f"W{base.bits[w]}" + ("" if a is None else f"A{base.space.act_bits[a]}")
        out.append((f"two-stage {name} (sparsity {sparsity:.2f})", info))
    return out


def _fidelity(fidelity: str | None, out: Path, resume: bool) -> str:
    """The run's fidelity: as given, else a resumed run's own, else ``"race"``.

    A run that predates the setting scored in full, so it resumes as ``"full"``.
    """
    if fidelity is not None:
        if fidelity not in FIDELITIES:
            raise ArgumentError(f"fidelity must be one of {FIDELITIES}, got {fidelity!r}")
        return fidelity
    run_file = out / RUN_NAME
    if resume and run_file.is_file():
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads(run_file.read_text())
            if isinstance(previous, dict):
                value = previous.get("fidelity", "full")
                return value if value in FIDELITIES else "full"
    return "race"


def run_search(
    agent: str,
    out: str | Path,
    episodes: int,
    seed: int = 0,
    env_id: str = DEFAULT_ENV,
    env_kwargs: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    warmup_episodes: int = 10,
    ray: str | None = None,
    workers: int | None = None,
    agent_options: dict[str, Any] | None = None,
    fidelity: str | None = None,
) -> dict[str, Any]:
    """Run ``agent`` for ``episodes`` evaluations and write the run's files into ``out``.

    ``env_id`` defaults to ``DEFAULT_ENV`` (``jpq_env/JPQWeightsActs-v0``: weights and
    activations), as ``jpq search`` does. ``env_kwargs`` may
    hold a ``Task`` object (from ``jpq_env.make_task``) as ``task``; the run's
    files name it by ``task.name``.

    Files: ``run.json`` (settings), ``evaluations.jsonl`` (every evaluated policy),
    ``policy.json`` (the best within budget), ``reference.jsonl`` (two-stage points),
    ``pareto.png``, ``summary.json`` and TensorBoard logs in ``tensorboard/`` (the episodes, and
    the learners' losses and entropy); the SB3 agents also save their trained model as
    ``model.zip``.

    ``agent_options`` sets the agent's hyperparameters (``jpq_agents.agent_options``: the
    two-level controller's ``TwoLevelConfig`` fields, the SB3 algorithms' arguments); they are
    checked before anything is written and recorded in ``run.json``.

    With ``ray`` (a cluster address, or ``"auto"``) or ``workers``, evaluations run on Ray (see
    ``jpq_agents.scale_out``); otherwise everything runs in this process, without importing Ray.

    ``fidelity`` (``jpq_agents.search.RunSettings``): ``"race"`` (evaluations that cannot beat
    the best so far stop early) or ``"full"``; None: a resumed run's own, else ``"race"``.

    Returns:
        The summary (also written to ``summary.json``).
    """
    if agent not in AGENTS:
        hint = did_you_mean(agent, AGENTS)
        raise ArgumentError(f"unknown agent '{agent}'{hint}: choose one of {sorted(AGENTS)}")
    if not str(out).strip():
        raise ArgumentError("out must name a directory, got ''")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ArgumentError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if episodes < 1:
        raise ArgumentError(f"episodes must be at least 1, got {episodes}")
    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if "JPQ" in k and k not in RENAMED)
        hint = did_you_mean(env_id, known)
        raise ArgumentError(f"unknown environment id '{env_id}'{hint}: choose one of {known}")
    if workers is not None and workers < 1:
        raise ArgumentError(f"workers must be at least 1, got {workers}")
    agent_options = check_agent_options(agent, agent_options)
    fidelity = _fidelity(fidelity, Path(out), resume)
    allowed = env_arguments(env_id)
    unknown = sorted(set(env_kwargs or {}) - allowed)
    if unknown:
        raise ArgumentError(
            f"unknown environment argument(s) {unknown}: choose from {sorted(allowed)}"
        )
    # The learning agents get the learning signals unless the caller says otherwise.
    env_kwargs = {**LEARNER_ENV.get(agent, {}), **(env_kwargs or {})}
    # Claimed before the task, the environment or a Ray pool is built: a second search on a busy
    # directory stops at once. A run that cannot start removes the empty folders it created.
    created = missing_dirs(Path(out))
    lock = claim_directory(Path(out))
    before = _entries(Path(out))
    try:
        common = (agent, out, episodes, seed, env_id, env_kwargs, resume, progress, fidelity)
        if ray is None and workers is None:
            return _run(*common, warmup_episodes, agent_options=agent_options)
        from .scale_out import ScaleOut

        with ScaleOut(ray, workers, agent in ALGOS, env_kwargs) as scale:
            pool = {"workers": scale.workers, "num_gpus": scale.num_gpus}
            return _run(*common, warmup_episodes, scale.evaluator, pool, agent_options)
    except BaseException:
        if RUN_NAME not in before:  # a new run that failed before its first evaluation: undone
            _undo_start(Path(out), before, {"agent": agent, "seed": seed, "episodes": episodes})
        lock.release()
        remove_empty(created)
        raise
    finally:
        lock.release()


def _entries(out: Path) -> set[str]:
    """The names in ``out`` (hidden ones, such as the run lock, left out)."""
    return {p.name for p in out.iterdir() if not p.name.startswith(".")} if out.is_dir() else set()


def _undo_start(out: Path, before: set[str], mine: dict[str, Any]) -> None:
    """Remove what a new run wrote into ``out`` if it logged no evaluation.

    A run that fails at start (an option SB3 refuses, a task that cannot load) would otherwise
    leave a ``run.json`` behind that makes the corrected rerun stop with "already holds a run".
    A run that logged anything is kept (``--resume`` continues it).
    """
    log = out / LOG_NAME
    if log.is_file() and log.stat().st_size > 0:
        return
    try:  # only this run's own files: another process's run.json is never touched
        written = json.loads((out / RUN_NAME).read_text())
    except (OSError, ValueError):
        written = None
    if written is not None and (
        not isinstance(written, dict) or any(written.get(k) != v for k, v in mine.items())
    ):
        return
    for name in sorted(_entries(out) - before):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _run(
    agent: str,
    out: str | Path,
    episodes: int,
    seed: int,
    env_id: str,
    env_kwargs: dict[str, Any],
    resume: bool,
    progress: bool,
    fidelity: str,
    warmup_episodes: int,
    evaluator: Any = None,
    scale: dict[str, Any] | None = None,
    agent_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out = Path(out)
    extra = {} if evaluator is None else {"evaluator": evaluator}
    setup_started = time.perf_counter()
    env = _make_env(env_id, {**env_kwargs, **extra}, progress)
    setup_seconds = time.perf_counter() - setup_started
    _local(env).check_split("test")  # the test split is scored at the end: check it now
    # A Task object (jpq_env.make_task) is recorded by its name: the run's files stay JSON.
    named = {k: v.name if isinstance(v, Task) else v for k, v in env_kwargs.items()}
    settings = RunSettings(
        agent, episodes, seed, {"id": env_id, **named}, agent_options or {}, fidelity
    )
    writer: Any = None

    def tensorboard() -> Any:
        nonlocal writer
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        return writer

    def on_record(record: dict[str, Any], replayed: bool) -> None:
        nonlocal writer
        bar.update(1)
        best = search.best
        if best is not None:
            bar.set_postfix(best=f"{best['accuracy']:.2%}", bops=f"1/{1 / best['bops_ratio']:.0f}")
        if replayed:
            return
        step = record["episode"]
        for key in ("accuracy", "reward", "bops_ratio", "size_ratio"):
            tensorboard().add_scalar(f"episode/{key}", record[key], step)
        for key, value in record.get("reward_terms", {}).items():
            tensorboard().add_scalar(f"reward/{key}", value, step)
        if best is not None:
            tensorboard().add_scalar("search/best_accuracy", best["accuracy"], step)

    means = _StepMeans(lambda name, value, step: tensorboard().add_scalar(name, value, step))
    on_scalar = means.add

    search = Search(out, settings, env, resume=resume, on_record=on_record, on_scalar=on_scalar)
    finished = _finished_summary(Path(out), episodes) if resume else None
    if finished is not None:  # nothing left to evaluate: the run's own summary, not a replay
        search.release()
        return finished
    # Every record names the phase it came from; two-level refines it (warm-start, refinement).
    search.phase = "learning" if agent in ALGOS else "search"
    replayed_at_start = search.replay_left  # answered from a resumed run's log
    try:
        # The bar starts once the directory is known to be usable (no 0% bar before an error).
        bar = tqdm(total=episodes, desc=f"{agent} search", unit="episode", disable=not progress)
        start = time.perf_counter()
        try:
            opts = {
                "env_id": env_id,
                "warmup_episodes": warmup_episodes,
                "agent_options": agent_options or {},
                **(scale or {}),
            }
            stop = AGENTS[agent](search, seed, opts)  # why it ended early, if it did
        finally:
            bar.close()
            means.flush()
            if writer is not None:
                _log_hparams(writer, settings, search)
                writer.close()
        seconds = time.perf_counter() - start
        # A resumed run: its first evaluations came from its log, not from the proxy.
        replayed = min(replayed_at_start, search.count)
        setup = _setup_summary(setup_seconds, env)
        return _summarize(
            search, agent, env, env_id, env_kwargs, seed, seconds, stop, replayed, setup
        )
    finally:
        search.release()


class _StepMeans:
    """A learner's scalars, one value per tag and step: the mean of what was reported at it.

    The two-level controller updates several times per evaluation; written as they come, its
    ``two_level/*`` scalars drew as vertical bars on TensorBoard's step axis.
    """

    def __init__(self, write: Callable[[str, float, int], None]) -> None:
        self.write = write
        self.pending: dict[str, tuple[int, float, int]] = {}

    def add(self, name: str, value: float, step: int) -> None:
        """Report ``value`` of ``name`` at ``step`` (written once the step moves on)."""
        held = self.pending.get(name)
        if held is not None and held[0] == step:
            self.pending[name] = (step, held[1] + value, held[2] + 1)
            return
        if held is not None:
            self.write(name, held[1] / held[2], held[0])
        self.pending[name] = (step, value, 1)

    def flush(self) -> None:
        """Write every pending mean."""
        for name, (step, total, n) in self.pending.items():
            self.write(name, total / n, step)
        self.pending.clear()


def _log_hparams(writer: Any, settings: RunSettings, search: Search) -> None:
    """The run's settings and agent options as TensorBoard hparams, with its best score."""
    hparams: dict[str, Any] = {"agent": settings.agent, "seed": settings.seed}
    hparams["fidelity"] = settings.fidelity
    for key, value in {**settings.env, **settings.agent_options}.items():
        if isinstance(value, (bool, int, float, str)):
            hparams[key] = value
        elif value is not None:
            hparams[key] = json.dumps(value, default=str)
    best = search.best
    metrics = {"hparam/best_accuracy": float(best["accuracy"]) if best else 0.0}
    with contextlib.suppress(ValueError, TypeError, OSError):  # a convenience, not a result
        writer.add_hparams(hparams, metrics, run_name=".")


def make_run_env(run: str | Path, view: bool = True, **overrides: Any) -> gym.Env[Any, Any]:
    """The environment a run searched on, rebuilt from its ``run.json``.

    What a saved SB3 model needs to act again: ``PPO.load(run / "model.zip")`` expects the
    observation of the env its search built (with the learning signals on, 40 features on
    digits), and this is that env, with the agent's view (``FlatBoxView``, ``MultiDiscreteView``
    for maskable-ppo) when ``view`` and the run's agent is an SB3 one::

        env = make_run_env("runs/ppo")
        model = PPO.load("runs/ppo/model.zip", env=env)

    Args:
        run: The run directory (its ``run.json``).
        view: Wrap the env in the run's SB3 agent's view.
        overrides: Environment arguments replacing the recorded ones (``device="cpu"``, say).

    Raises:
        ArgumentError: If ``run.json`` is missing or not a run's settings, or its task was a
            Python ``Task`` object (recorded by name only: pass ``task=`` again).
    """
    run_file = Path(run) / RUN_NAME
    try:
        settings = json.loads(run_file.read_text())
    except OSError as exc:
        raise ArgumentError(f"cannot read '{run_file}': {exc.strerror}") from None
    except ValueError as exc:
        raise ArgumentError(f"'{run_file}' is not valid JSON: {exc}") from None
    if not isinstance(settings, dict) or not isinstance(settings.get("env"), dict):
        raise ArgumentError(f"'{run_file}' holds no environment settings ('env')")
    kwargs = dict(settings["env"])
    env_id = str(kwargs.pop("id", DEFAULT_ENV))
    kwargs.update(overrides)
    try:
        env = gym.make(env_id, **kwargs)
    except (ArgumentError, gym.error.Error) as exc:
        raise ArgumentError(
            f"cannot rebuild the env of '{run_file}': {exc} (a task passed as a Python object is "
            "recorded by its name only: pass task= again)"
        ) from None
    agent = settings.get("agent")
    if view and agent in ALGOS:
        return ALGOS[agent][1](env)
    return env


def _finished_summary(out: Path, episodes: int) -> dict[str, Any] | None:
    """The summary of a run in ``out`` that already holds ``episodes`` evaluations, if it has one.

    Resuming a finished run (same settings, checked by ``Search``) would replay every evaluation
    through the agent to reach the same result (75 s for 300 on digits): its ``summary.json``
    is that result (returned with ``"already_finished": True``, not written). None if the log is
    shorter, or the summary is missing or of another length.
    """
    summary_file = out / "summary.json"
    try:
        summary = json.loads(summary_file.read_text())
        with (out / LOG_NAME).open("rb") as log:
            logged = sum(1 for line in log if line.strip())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("evaluations") != episodes:
        return None
    return {**summary, "already_finished": True} if logged == episodes else None


def _make_env(env_id: str, kwargs: dict[str, Any], progress: bool) -> JPQEnv:
    """The environment, with a progress bar while it measures the layers' sensitivities."""
    bar: Any = None

    def report(done: int, layers: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=layers, desc="layer sensitivities", unit="layer", disable=not progress)
        bar.update(done - bar.n)

    try:
        with sensitivity.reporting(report):
            env = gym.make(env_id, **kwargs).unwrapped
    finally:
        if bar is not None:
            bar.close()
    if not isinstance(env, JPQEnv):
        raise TypeError(f"{env_id} is not a JPQ environment")
    return env


def _setup_summary(setup_seconds: float, env: JPQEnv) -> dict[str, Any]:
    """The set-up's time (the sensitivity table's included) and the proxy's spending."""
    measured = sensitivity.last_measurement() if env.sensitivity is not None else None
    stats = env.evaluator.stats
    extra: dict[str, Any] = {"setup_seconds": round(setup_seconds, 2)}
    if measured is not None:
        extra["sensitivity"] = {
            "source": measured.source,
            "seconds": round(measured.seconds, 2),
            "evaluations": measured.evaluations,
            "cache": str(measured.path),
        }
    if stats is not None:
        extra["proxy"] = {
            "image_forwards": round(stats.image_forwards, 1),
            "complete_evaluations": stats.complete,
            "evaluations": stats.evaluations,
        }
    return extra


def _same_as_reference(
    best: dict[str, Any], reference: list[dict[str, Any]], env_id: str, env_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``{"same_as": label}`` when the best policy is a two-stage (prune-then-quantize) policy.

    A search whose best is its warm start found nothing better than prune-then-quantize; the
    summary says so rather than leaving it to a comparison of numbers. Every pair of weight and
    activation widths the warm starts play counts (36 on JPQWeightsActs-v0), not only the equal
    widths the reference points plot; their policies are built without scoring them.
    """
    key = record_key(best["policy"])
    for point in reference:
        if "policy" in point and record_key(point["policy"]) == key:
            return {"same_as": point["label"]}
    return {"same_as": label} if (label := _two_stage_labels(env_id, env_kwargs).get(key)) else {}


class _Unscored(Evaluator):
    """An evaluator that scores nothing (0): to read which policy an episode applies."""

    fp32_accuracy = 1.0

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        return 0.0


def _two_stage_labels(env_id: str, env_kwargs: dict[str, Any]) -> dict[tuple[bytes, ...], str]:
    """Policy key -> "two-stage WxAy (sparsity s)" for every width pair (``level_pairs``)."""
    ref = gym.make(env_id, **env_kwargs, evaluator=_Unscored()).unwrapped
    episodes = _two_stage_episodes(ref, level_pairs(jpq(ref)))
    return {record_key(info["policy"]): label for label, info in episodes}


def _summarize(
    search: Search,
    agent: str,
    env: JPQEnv,
    env_id: str,
    env_kwargs: dict[str, Any],
    seed: int,
    seconds: float,
    stop: Stop = None,
    replayed: int = 0,
    setup: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Reference points, test scores of FP32 and the best policy, the Pareto plot, summary.json.

    A run that ended before its evaluation budget was spent says why in ``"stopped_early"``; a
    resumed run says how many evaluations it took from its log in ``"replayed_from_log"``.
    """
    out, settings = search.out, search.settings
    evaluator = _local(env)
    reference = _reference(env_id, env_kwargs, evaluator)
    write_atomic(out / "reference.jsonl", "".join(json.dumps(p) + "\n" for p in reference))
    best_policy = search.best_policy()
    best = search.best
    summary = {
        "agent": agent,
        "env": settings.env,
        "seed": seed,
        "evaluations": search.count,
        **({} if search.done else {"stopped_early": stop or "the agent ended (no reason given)"}),
        "seconds": round(seconds, 2),
        "accuracy_fp32_val": evaluator.fp32_accuracy,
        "accuracy_fp32_test": evaluator.test_accuracy(None),
        "best": None
        if best is None or best_policy is None
        else {
            "episode": best["episode"],
            "accuracy_val": best["accuracy"],
            "accuracy_test": evaluator.test_accuracy(best_policy),
            "bops_ratio": best["bops_ratio"],
            "size_ratio": best["size_ratio"],
            **({"phase": best["phase"]} if best.get("phase") else {}),
            **_same_as_reference(best, reference, env_id, env_kwargs),
        },
        "budget_violations": sum(not r["budget_met"] for r in search.records),
        **provenance(env.budget.targets, seconds, search.count),
    }
    if isinstance(env, JPQBenchEnv):  # the accuracies are the bench's predictions
        summary["bench"] = env.bench.name
    if search.stop_reason:
        summary["cut_short_by_budget"] = search.stop_reason
    if replayed:
        summary["replayed_from_log"] = replayed
    summary["val_images"] = int(env.evaluator.val_images)  # a complete evaluation's images
    summary.update(setup or {})
    pareto_plot(
        search.records,
        reference,
        env.budget.targets.get("bops"),
        out / "pareto.png",
        f"{agent} on {env.task.name} ({env_id.split('/')[-1]})",
    )
    write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    return summary
