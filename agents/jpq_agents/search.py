"""The search loop every agent runs in: one evaluation counter, the run's files, resume.

``Search`` wraps a JPQ environment (``SearchRecorder``) so that every finished episode, whichever
agent played it, is one evaluation: it is counted, appended to ``DIR/evaluations.jsonl`` as one
JSON line, written to TensorBoard, and, if it is the most accurate policy within budget so far,
saved atomically as ``DIR/policy.json``.

Resume works by replay: the agent runs again from the start with the same seed, and the episodes
already in the log are answered from it instead of by the accuracy proxy. Agents and the proxy are
deterministic on the CPU, so the replay regenerates the same episodes and the run continues where
it stopped, reaching the same result as an uninterrupted run; a replayed episode whose policy
differs from the logged one stops the run with an error instead of mixing two runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from jpq_env.atomic import write_atomic
from jpq_env.core.policy import Policy, record_key
from jpq_env.envs import JPQEnv
from jpq_env.errors import SearchError
from jpq_env.jsonfile import loads, read_json
from jpq_env.proxy.evaluator import Evaluation, Evaluator, WrappedEvaluator, as_evaluator

from .run_lock import RunLock, RunLockedError

__all__ = [
    "LOG_NAME",
    "MONITOR_NAME",
    "POLICY_NAME",
    "RUN_NAME",
    "RunSettings",
    "Search",
    "SearchError",
    "check_record",
    "claim_directory",
    "read_log",
    "write_atomic",
]

LOG_NAME = "evaluations.jsonl"
MONITOR_NAME = "monitor.csv"
"""One line per evaluation in SB3's ``Monitor`` format (``stable_baselines3.common.monitor``)."""
POLICY_NAME = "policy.json"
RUN_NAME = "run.json"


@dataclass(frozen=True)
class RunSettings:
    """What defines a run; a resumed run must have the same settings (episodes may grow).

    Attributes:
        agent: Agent name.
        episodes: Evaluations the search may spend.
        seed: Seed of the agent (and of the environment's reset).
        env: Keyword arguments of the environment (JSON-able).
        agent_options: The agent's hyperparameters set by the user (``jpq_agents.agent_options``;
            empty: the agent's defaults).
        fidelity: ``"race"`` (default): each evaluation races against the best policy so far
            and stops once it cannot beat it (multi-fidelity: a policy that cannot matter costs
            a slice of the held-out split; its record says ``proxy_complete: false``), whatever
            the agent; ``"full"``: every evaluation scores the whole split. Racing needs an
            evaluator that races one policy at a time (in process): a Ray pool or a batch
            evaluator always scores completely. A run started before this setting existed
            resumes as ``"full"``.
    """

    agent: str
    episodes: int
    seed: int
    env: dict[str, Any] = field(default_factory=dict)
    agent_options: dict[str, Any] = field(default_factory=dict)
    fidelity: str = "race"


FIDELITIES = ("race", "full")
"""How much of the held-out split an evaluation scores (``RunSettings.fidelity``)."""

_SETTINGS_TYPES: dict[str, type | tuple[type, ...]] = {
    "agent": str,
    "episodes": int,
    "seed": int,
    "env": dict,
}


def _read_settings(path: Path) -> dict[str, Any]:
    """A run's ``run.json``, checked: the four settings with their types.

    Raises:
        SearchError: If the file cannot be read, is not JSON or not a run's settings.
    """
    data = read_json(path, "run settings", error=SearchError)
    if not isinstance(data, dict):
        raise SearchError(
            f"cannot resume: '{path}' holds {type(data).__name__}, not a run's settings"
        )
    for key, kind in _SETTINGS_TYPES.items():
        value = data.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SearchError(
                f"cannot resume: '{path}' needs '{key}' ({getattr(kind, '__name__', kind)}), got "
                f"{value!r}"
            )
    if not isinstance(data.get("agent_options", {}), dict):  # absent in runs of jpq-env 0.1
        raise SearchError(f"cannot resume: '{path}': 'agent_options' must be an object")
    return data


def _normal_env(env: dict[str, Any]) -> dict[str, Any]:
    """Environment settings with the defaults filled in, so that equivalent runs compare equal.

    ``--budget-bops 1/128`` on an id whose default is 1/128, or ``--device cpu`` on a machine
    without CUDA, is the same run as leaving them out.
    """
    import inspect

    from jpq_env.proxy.data import resolve_device

    env = dict(env)
    spec = gym.registry.get(str(env.get("id")))
    defaults: dict[str, Any] = {
        k: p.default
        for k, p in inspect.signature(JPQEnv.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty and _plain(p.default)
    }
    if spec is not None:
        defaults.update({k: v for k, v in spec.kwargs.items() if _plain(v)})
    normal = {**defaults, **env}
    with contextlib.suppress(ValueError, RuntimeError):  # an unusable device: as written
        normal["device"] = resolve_device(normal.get("device")).type
    return normal


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple, dict))


def _differences(previous: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    """The settings (other than ``episodes``) in which two runs differ, each named."""
    env_id = previous.get("env", {}).get("id")
    if env_id is not None and env_id not in gym.registry:
        return [f"env.id {env_id!r} there is not a registered environment"]
    out = []
    for key in ("agent", "seed"):
        if previous.get(key) != mine.get(key):
            out.append(f"{key} is {previous.get(key)!r} there, {mine.get(key)!r} here")
    fidelity = previous.get("fidelity", "full")  # runs from before the setting scored in full
    if fidelity != mine.get("fidelity", "full"):
        out.append(f"fidelity is {fidelity!r} there, {mine.get('fidelity')!r} here")
    a_opts, b_opts = previous.get("agent_options") or {}, mine.get("agent_options") or {}
    for key in sorted(set(a_opts) | set(b_opts)):
        if _jsonable(a_opts.get(key)) != _jsonable(b_opts.get(key)):
            there, here = a_opts.get(key, "default"), b_opts.get(key, "default")
            out.append(f"agent option {key} is {there!r} there, {here!r} here")
    a, b = _normal_env(previous.get("env", {})), _normal_env(mine.get("env", {}))
    for key in sorted(set(a) | set(b)):
        if _jsonable(a.get(key)) != _jsonable(b.get(key)):
            out.append(f"env.{key} is {a.get(key)!r} there, {b.get(key)!r} here")
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def check_record(record: dict[str, Any], where: str) -> None:
    """Type-check one logged evaluation: a resumed or validated run trusts nothing unchecked.

    Raises:
        SearchError: Naming ``where`` (``file:line``) and the field that is missing or wrong.
    """

    def bad(name: str, expected: str) -> SearchError:
        return SearchError(
            f"{where}: '{name}' must be {expected}, got "
            f"{record.get(name)!r:.80}; the log was edited or is corrupt"
        )

    def number(value: Any) -> bool:
        real = isinstance(value, (int, float)) and not isinstance(value, bool)
        return real and bool(np.isfinite(value))

    for key in ("accuracy", "accuracy_fp32"):
        if not number(record.get(key)) or not 0.0 <= record[key] <= 1.0:
            raise bad(key, "a number in [0, 1]")
    for key in ("bops_ratio", "size_ratio"):
        if not number(record.get(key)) or record[key] < 0:
            raise bad(key, "a number >= 0")
    if not number(record.get("reward")):
        raise bad("reward", "a finite number")
    if not isinstance(record.get("budget_met"), bool):
        raise bad("budget_met", "true or false")
    policy = record.get("policy")
    if not isinstance(policy, list) or not all(
        isinstance(p, dict)
        and isinstance(p.get("name"), str)
        and type(p.get("act_bits")) is int
        and isinstance(p.get("bits"), list)
        and all(type(b) is int for b in p["bits"])
        for p in policy
    ):
        raise bad("policy", "a list of layers with 'name', 'act_bits' and 'bits' (integers)")
    if "proxy_complete" in record and not isinstance(record["proxy_complete"], bool):
        raise bad("proxy_complete", "true or false")
    if "proxy_images" in record and type(record["proxy_images"]) is not int:
        raise bad("proxy_images", "an integer")
    if "phase" in record and not isinstance(record["phase"], str):
        raise bad("phase", "a string")
    terms = record.get("reward_terms", {})
    if not isinstance(terms, dict) or not all(
        isinstance(k, str) and number(v) for k, v in terms.items()
    ):
        raise bad("reward_terms", "an object of finite numbers")


def read_log(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """A run's log (``evaluations.jsonl``): every record checked, in episode order.

    The one reader of logs: ``--resume`` and ``jpq validate`` accept and refuse the same files.
    Each line must be a record (``check_record``) of the next episode (0, 1, 2, ...: a duplicated,
    missing or reordered episode is an edit). A killed process can leave the last line unfinished
    (no newline, or not valid JSON): that line is reported and, with ``repair``, cut from the file
    with a warning so that its episode is evaluated again (without ``repair`` it is skipped, with
    the same warning). A last line that is valid JSON but not a valid record was written whole: it
    is an edit, refused like any other line.

    Raises:
        SearchError: ``"<file>:<line>: ..."``, naming what is wrong with the first bad line.
    """
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # after the last newline: empty unless the last write was cut
    records: list[dict[str, Any]] = []
    torn = [tail] if tail else []
    why = ""
    for number, line in enumerate(lines, 1):
        try:
            record = loads(line, f"line {number}", error=ValueError)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
            if number < len(lines):
                raise SearchError(
                    f"{path}:{number} is not a valid record ({exc}); the log was edited or is "
                    "corrupt"
                ) from exc
            torn.insert(0, line + b"\n")
            why = f" ({exc})"
            break
        episode = record.get("episode") if isinstance(record, dict) else None
        if type(episode) is not int or episode != len(records):
            got = record.get("episode") if isinstance(record, dict) else type(record).__name__
            raise SearchError(
                f"{path}:{number} is not a valid record (expected the record of episode "
                f"{len(records)}, got {got!r:.40}); the log was edited or is corrupt"
            )
        check_record(record, f"{path}:{number}")
        records.append(record)
    if torn:
        warnings.warn(
            f"'{path}': dropped a last line cut short by an interrupted run "
            f"({sum(map(len, torn))} bytes){why}; its episode is evaluated again",
            stacklevel=3,
        )
        if repair:  # rewrite the log without it, atomically: new records follow complete lines
            write_atomic(path, b"".join(line + b"\n" for line in lines[: len(records)]).decode())
    return records


class _ReplayEvaluator(WrappedEvaluator):
    """Answers logged policies from the log, in order; new ones from the real proxy.

    One evaluation at a time (``workers`` 1): a resumed run plays its episodes in order.
    """

    workers = 1

    def __init__(self, inner: Evaluator, records: list[dict[str, Any]]) -> None:
        super().__init__(inner)
        self.records = records
        self.position = 0
        self.last: Evaluation | None = None

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        """The logged score of the next logged episode, else the real proxy's."""
        if self.position < len(self.records):
            record = self.records[self.position]
            self.position += 1
            if policy.key() != record_key(record["policy"]):
                raise SearchError(
                    f"cannot resume: episode {record['episode']} replayed a different policy than "
                    "the log holds (the code or its settings changed since the run started)"
                )
            score = float(record["accuracy"])
            images = int(record.get("proxy_images", 0))
            self.last = Evaluation(score, images, bool(record.get("proxy_complete", True)))
            return score
        score = float(self.inner.accuracy(policy, at_least=at_least))
        self.last = self.inner.last
        return score


class SearchRecorder(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Counts, logs and keeps the best of every finished episode of the wrapped environment."""

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray], search: Search) -> None:
        super().__init__(env)
        self.search = search

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step; on the last step of an episode, record the evaluation."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated:
            self.search.record(info, float(reward))
        return obs, reward, terminated, truncated, info


def claim_directory(out: Path) -> RunLock:
    """Create ``out`` if missing and lock it for this process (see ``jpq_agents.run_lock``).

    Raises:
        SearchError: If ``out`` cannot be created, or another process is searching in it.
    """
    if out.exists() and not out.is_dir():
        raise SearchError(f"cannot use '{out}' as the output directory: it is a file")
    if out.is_dir() and not (out / RUN_NAME).exists():
        foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise SearchError(
                f"'{out}' is not empty and holds no run ({RUN_NAME} is missing): it holds "
                f"{shown}. Choose a new or empty output directory (nothing was written)"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"cannot use '{out}' as the output directory: {exc.strerror}") from exc
    lock = RunLock(out)
    try:
        lock.acquire()
    except RunLockedError as exc:
        raise SearchError(str(exc)) from None
    return lock


class Search:
    """A search run in a directory: the environment, the evaluation counter and the files.

    Args:
        out: Output directory (created if missing).
        settings: The run's settings.
        env: The native environment the agent plays (its evaluator may be replaced for resume).
        resume: Continue the run already in ``out`` (start one if ``out`` holds none).
        on_record: Called after each recorded evaluation with the record and whether it was
            replayed from the log (progress bars, TensorBoard).
        on_scalar: Called with a learner's quantity (name, value, evaluations so far) that an
            agent reports through ``scalar`` (losses, entropy: TensorBoard).

    The directory is locked for this process from here until ``release()`` (or the end of a
    ``with`` block, or the process's exit), so that a second search started on it by another
    process stops at once.

    Raises:
        SearchError: If ``out`` holds another run, another process is searching in it, or (with
            ``resume``) it holds a run with other settings.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        settings: RunSettings,
        env: JPQEnv,
        resume: bool = False,
        on_record: Callable[[dict[str, Any], bool], None] | None = None,
        on_scalar: Callable[[str, float, int], None] | None = None,
    ) -> None:
        self.out = Path(out)
        self.settings = settings
        self.base = env
        self.on_record = on_record
        self.on_scalar = on_scalar
        self.records: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.phase = ""  # set by agents ("warm-start", "learning", ...); logged with each record
        self.stop_reason = ""  # set by an agent cut short by the evaluation budget (summary)
        self._raced: dict[str, Any] | None = None  # the best record racing was last set for
        self._raced_policy: Policy | None = None
        if settings.fidelity not in FIDELITIES:
            raise SearchError(f"fidelity must be one of {FIDELITIES}, got {settings.fidelity!r}")
        self._lock = claim_directory(self.out)
        try:
            self._open(env, resume)
        except BaseException:
            self.release()
            raise
        self.env = SearchRecorder(env, self)

    def scalar(self, name: str, value: float) -> None:
        """Report a learner's quantity (a loss, an entropy) at the current evaluation count.

        Quantities of a resumed run's replayed part were reported by the first run: dropped.
        """
        if self.on_scalar is not None and self.replay_left == 0:
            self.on_scalar(name, float(value), self.count)

    @property
    def evaluator(self) -> Evaluator:
        """The evaluator that really scores policies (beneath a resumed run's log replay)."""
        outer = self.base.evaluator
        return outer.inner if isinstance(outer, _ReplayEvaluator) else outer

    @evaluator.setter
    def evaluator(self, value: Evaluator) -> None:
        outer = self.base.evaluator
        if isinstance(outer, _ReplayEvaluator):
            outer.inner = as_evaluator(value)
        else:
            self.base.evaluator = value

    def release(self) -> None:
        """Let go of the directory (once; later calls do nothing): another process may use it."""
        self._lock.release()

    def __enter__(self) -> Search:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _open(self, env: JPQEnv, resume: bool) -> None:
        """Check the directory's run against this one; set up the replay of a resumed log."""
        settings = self.settings
        run_file, log_file = self.out / RUN_NAME, self.out / LOG_NAME
        links = sorted(p.name for p in self.out.iterdir() if p.is_symlink())
        if links:  # a run's files are written in place: never through a link out of the folder
            raise SearchError(
                f"'{self.out}' holds symbolic links ({', '.join(links)}): a run directory holds "
                "only its own files. Remove them (nothing was written)"
            )
        if resume and not run_file.exists() and log_file.exists():
            raise SearchError(f"cannot resume: '{self.out}' has a log but no {RUN_NAME}")
        if resume and run_file.exists():
            previous = _read_settings(run_file)
            differ = _differences(previous, asdict(settings))
            if differ:
                raise SearchError(
                    f"cannot resume: '{self.out}' holds a run with other settings: "
                    + "; ".join(differ)
                    + " (nothing was overwritten)"
                )
            if previous["episodes"] > settings.episodes:
                raise SearchError(
                    f"cannot resume with {settings.episodes} episodes: the run in '{self.out}' "
                    f"was started for {previous['episodes']}. A resumed run never shrinks: pass "
                    f"--episodes {previous['episodes']} or more (nothing was overwritten)"
                )
            logged = self._read_log(log_file)
            if len(logged) > settings.episodes:
                raise SearchError(
                    f"cannot resume with {settings.episodes} episodes: '{log_file}' already holds "
                    f"{len(logged)} (nothing was overwritten)"
                )
            env.evaluator = _ReplayEvaluator(env.evaluator, logged)
            self._replay = logged
        else:
            if run_file.exists() or log_file.exists():
                raise SearchError(
                    f"'{self.out}' already holds a run: pass --resume to continue it, or choose "
                    "another output directory (nothing was overwritten)"
                )
            self._replay = []
        write_atomic(run_file, json.dumps(asdict(settings), indent=1))
        self._monitor_open = False  # started with the first new record: a refused resume
        # (an edited log found out during its replay) leaves the file as it was

    @staticmethod
    def _read_log(path: Path) -> list[dict[str, Any]]:
        """The log's records for a resume (``read_log`` repairing a torn last line)."""
        try:
            return read_log(path, repair=True)
        except SearchError as exc:
            raise SearchError(f"cannot resume: {exc}") from None

    @property
    def count(self) -> int:
        """Evaluations recorded so far (replayed ones included)."""
        return len(self.records)

    @property
    def replay_left(self) -> int:
        """Evaluations a resumed run logged that are not replayed yet (answered from the log)."""
        return max(len(self._replay) - self.count, 0)

    def logged(self, start: int, stop: int) -> list[dict[str, Any]]:
        """Records ``start`` to ``stop - 1`` of the log a resumed run replays (empty past it)."""
        return self._replay[start:stop]

    @property
    def done(self) -> bool:
        """True once the evaluation budget is spent."""
        return self.count >= self.settings.episodes

    def record(self, info: dict[str, Any], reward: float) -> None:
        """Account for one finished episode (called by the recorder wrapper)."""
        episode = self.count
        record = {
            "episode": episode,
            "agent": self.settings.agent,
            "accuracy": info["accuracy"],
            "split": "val",  # the proxy's: held-out images, never the test split
            "accuracy_fp32": info["accuracy_fp32"],
            "bops_ratio": info["bops_ratio"],
            "size_ratio": info["size_ratio"],
            "budget_met": bool(info["budget_met"]),
            "reward": reward,
            "policy": info["policy"],
        }
        if self.phase:
            record["phase"] = self.phase
        terms = {k[len("reward_") :]: float(v) for k, v in info.items() if k.startswith("reward_")}
        if terms:
            record["reward_terms"] = terms
        if info.get("proxy_complete") is False:  # raced: it lost, scored on part of the split
            record["proxy_complete"] = False
            record["proxy_images"] = int(info["proxy_images"])
        replayed = episode < len(self._replay)
        if replayed and record_key(record["policy"]) != record_key(self._replay[episode]["policy"]):
            raise SearchError(
                f"cannot resume: episode {episode} replayed a different policy than the log holds"
            )
        if not replayed:
            self._append(record)
            self._monitor(record)
        self.records.append(record)
        better = self.best is None or record["accuracy"] > self.best["accuracy"]
        # A raced evaluation (stopped early: it lost) scored only part of the held-out split.
        if record["budget_met"] and record.get("proxy_complete", True) and better:
            self.best = record
            if not replayed:
                self._save_best()
        if replayed and episode == len(self._replay) - 1 and self.best is not None:
            # The replay is over: its best came from the log. Check its score with the proxy
            # before it is written anywhere (an edited accuracy must not become the result).
            self._verify(self.best)
            self._check_saved_best()
            self._save_best()
        self._race_the_best()
        if self.on_record is not None:
            self.on_record(record, replayed)

    def _race_the_best(self) -> None:
        """With ``fidelity="race"``, make the next evaluations race against the best so far.

        The evaluator pairs each candidate with the best policy's per-image results (a tighter
        bound than the candidate's own) and keeps its activations for prefix reuse. Agents that
        race on their own terms (the two-level refinement, against its incumbent's reward) set
        their target on top of this one for as long as they need it.
        """
        evaluator = self.evaluator
        if (
            self.settings.fidelity != "race"
            or self.best is None
            or not evaluator.supports_racing
            or evaluator.workers > 1
            or self.base.race_target is not None  # an agent racing on its own terms, pinned
        ):
            return
        if self._raced is not self.best:
            self._raced = self.best
            self._raced_policy = Policy.from_layers(
                self.best["policy"], self.base.graph.fingerprint
            )
        self.base.race_accuracy(float(self.best["accuracy"]))
        evaluator.set_incumbent(self._raced_policy)

    def _open_monitor(self, logged: int) -> None:
        """Start ``monitor.csv`` (SB3's ``Monitor`` format), or keep a resumed run's first lines.

        One line per recorded evaluation: ``r`` the episode's reward, ``l`` its native steps (two
        per layer), ``t`` seconds since the run started; SB3's ``load_results`` and RL Zoo's
        plotting scripts read it. A resumed run keeps the lines of the evaluations its log holds
        (and their times) and appends the new ones.
        """
        path = self.out / MONITOR_NAME
        self._steps = 2 * len(self.base.graph)
        lines: list[str] = []
        if logged and path.is_file():
            try:
                lines = path.read_text().splitlines()[: 2 + logged]
                header = json.loads(lines[0].lstrip("#"))
                self._t_start = float(header["t_start"])
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                lines = []
        if len(lines) != 2 + logged:  # none, or unreadable: times of logged lines unknown
            self._t_start = time.time()
            header = {"t_start": self._t_start, "env_id": str(self.settings.env.get("id", ""))}
            lines = ["#" + json.dumps(header), "r,l,t"]
            lines += [f"{r['reward']},{self._steps},nan" for r in self._replay[:logged]]
        try:
            write_atomic(path, "\n".join(lines) + "\n")
        except OSError:  # the log is the record; this file is a convenience: none then
            self._monitor_ok = False

    def _monitor(self, record: dict[str, Any]) -> None:
        if not self._monitor_open:
            self._monitor_ok = True
            self._open_monitor(len(self._replay))
            self._monitor_open = True
        if not self._monitor_ok:
            return
        with contextlib.suppress(OSError), (self.out / MONITOR_NAME).open("a") as f:
            f.write(f"{record['reward']},{self._steps},{time.time() - self._t_start:.3f}\n")

    def _append(self, record: dict[str, Any]) -> None:
        path = self.out / LOG_NAME
        try:
            with path.open("a") as f:
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise SearchError(
                f"cannot append episode {record['episode']} to '{path}': {exc.strerror}; the "
                "episodes before it are in the log (resume once there is room)"
            ) from exc

    def _check_saved_best(self) -> None:
        """The best the run saved (``policy.json``) must be the best its log replays to.

        An edit that lowers the real best's accuracy, or marks it as raced or over budget, makes
        another record the best; the policy file the run wrote names the real one.
        """
        assert self.best is not None
        path = self.out / POLICY_NAME
        if not path.exists():
            return
        saved = read_json(path, "policy file", error=SearchError)
        episode = saved.get("episode") if isinstance(saved, dict) else None
        if episode == self.best["episode"]:
            return
        log = self.out / LOG_NAME
        if type(episode) is not int or not 0 <= episode < len(self._replay):
            raise SearchError(
                f"cannot resume: '{path}' names episode {episode!r} as the best, which "
                f"'{log}' does not hold (the files were edited; nothing was overwritten)"
            )
        record = self._replay[episode]
        if not record["budget_met"] or record.get("proxy_complete", True) is False:
            raise SearchError(
                f"cannot resume: '{path}' holds episode {episode} as the run's best, but '{log}' "
                "says it was over budget or raced (the log was edited; nothing was overwritten)"
            )
        self._verify(record)  # its claimed accuracy is checked too
        if episode < self.best["episode"] and record["accuracy"] < self.best["accuracy"]:
            return  # a crash between logging a new best and saving it: the log is ahead
        raise SearchError(
            f"cannot resume: '{path}' holds episode {episode} as the run's best, but '{log}' "
            f"replays to episode {self.best['episode']} (the files were edited; nothing was "
            "overwritten)"
        )

    def _verify(self, record: dict[str, Any]) -> None:
        """Score a logged record's policy again; stop if the log claims another accuracy."""
        try:
            policy = Policy.from_layers(record["policy"], self.base.graph.fingerprint)
            scorer = self.evaluator.scorer  # beneath a batch's answers: the real proxy
            score = float(scorer.accuracy(policy))
        except ValueError as exc:
            raise SearchError(
                f"cannot resume: episode {record['episode']} of '{self.out / LOG_NAME}' holds a "
                f"policy this model cannot take: {exc}"
            ) from exc
        if score != record["accuracy"]:
            raise SearchError(
                f"cannot resume: episode {record['episode']} of '{self.out / LOG_NAME}' claims "
                f"held-out accuracy {record['accuracy']!r}, the proxy gives {score!r}: the log was "
                "edited, or the code, data or device changed since the run started (nothing was "
                "overwritten)"
            )

    def _save_best(self) -> None:
        assert self.best is not None
        data = {
            **Policy.from_layers(self.best["policy"], self.base.graph.fingerprint).to_json(),
            "task": self.settings.env.get("task", "digits"),
            "env": self.settings.env,
            "episode": self.best["episode"],
            "accuracy_val": self.best["accuracy"],
            "bops_ratio": self.best["bops_ratio"],
            "size_ratio": self.best["size_ratio"],
        }
        write_atomic(self.out / POLICY_NAME, json.dumps(data, indent=1))

    def best_policy(self) -> Policy | None:
        """The most accurate policy within budget so far."""
        if self.best is None:
            return None
        return Policy.load(self.out / POLICY_NAME)
