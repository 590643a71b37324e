"""Agent hyperparameters set by the user: checked once, recorded in ``run.json``, then applied.

``jpq search --agent-option KEY=VALUE`` (repeatable) and ``--hyperparams FILE.yml`` reach the
agents through ``run_search(agent_options=...)``, a flat dict of plain values:

- ``two-level``: fields of ``TwoLevelConfig`` (``lr``, ``hidden``, ``refine_fraction``,
  ``surrogate``, ...), each converted to its field's type;
- ``ddpg``, ``ppo``, ``maskable-ppo``: constructor arguments of the SB3 algorithm (``gamma``,
  ``learning_rate``, ``n_steps``, ``policy_kwargs`` as RL Zoo's string, ...) and ``noise_std``
  (DDPG's exploration), each replacing the shipped entry's value for the env id. A hyperparameter
  file in RL Zoo's format (a table keyed by env id, with ``default``) contributes its entry for
  the run's id first; RL Zoo's own keys that a search sets itself (``n_timesteps``: the
  evaluation budget; ``env_wrapper``: the agent's view; ``n_envs``, ``normalize``) are ignored
  there, and refused on the command line.

Every value is checked against its hyperparameter's type and range (``SB3_SPECS``: a learning
rate is a finite number > 0 or RL Zoo's schedule ``lin_<initial>``, ``gamma`` in [0, 1],
``n_steps`` an integer >= 2, ...) before anything is written, so a wrong value fails at once
instead of inside SB3 after the run's folder was created. Hyperparameters that are objects
(buffer classes, action noise) cannot be set from a plain value and are refused by name. A
hyperparameter file is bounded: at most ``MAX_HYPERPARAMS_BYTES`` and ``MAX_HYPERPARAMS_NODES``
values once its YAML aliases are expanded (a few lines of nested aliases can expand to billions).

The other agents have no hyperparameters to set; options for them are refused by name. Resuming
a run compares the options like any other setting.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from typing import Any

from jpq_env.errors import ArgumentError

__all__ = [
    "SB3_SPECS",
    "check_agent_options",
    "read_hyperparams",
    "schedule",
    "two_level_config",
]

_SB3_SET_BY_SEARCH = {
    "n_timesteps": "the evaluation budget sets it (--episodes)",
    "env_wrapper": "the agent's view is fixed (FlatBoxView, or MultiDiscreteView for maskable-ppo)",
    "n_envs": "one environment, or --workers Ray actors",
    "normalize": "observations are already scaled to [-1, 1]",
    "env": "the run's environment is given by --env",
    "seed": "set by --seed",
    "verbose": "the search reports progress itself",
    "tensorboard_log": "written to the run's tensorboard/ folder",
    "noise_type": "DDPG explores with the runner's decaying truncated normal noise (its scale: "
    "noise_std)",
}
_SB3_EXTRA = {"policy": str, "noise_std": float}  # RL Zoo keys the runner reads
# Keys of an RL Zoo entry that are not SB3 constructor arguments (the runner's own or set by it).
NOT_CONSTRUCTOR_ARGS = frozenset(_SB3_SET_BY_SEARCH) | frozenset(_SB3_EXTRA)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What one SB3 hyperparameter accepts.

    Attributes:
        kind: ``"int"``, ``"float"``, ``"rate"`` (a float, or RL Zoo's ``lin_<float>`` schedule),
            ``"bool"``, ``"str"``, ``"train_freq"`` (an int, or ``[int, "step"|"episode"]``) or
            ``"kwargs"`` (RL Zoo's ``policy_kwargs`` string, or a table).
        low: Smallest value (None: unbounded); ``low_open``: excluded.
        high: Largest value (None: unbounded).
        optional: ``None`` is allowed.
        choices: The allowed strings (``"str"`` only; empty: any).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    optional: bool = False
    choices: tuple[str, ...] = ()


SB3_SPECS: dict[str, Spec] = {
    "learning_rate": Spec("rate", 0, low_open=True),
    "gamma": Spec("float", 0, 1),
    "gae_lambda": Spec("float", 0, 1),
    "n_steps": Spec("int", 2, 10**6),  # PPO needs a rollout of more than one step
    "batch_size": Spec("int", 2, 10**6),  # PPO normalizes advantages over a batch
    "n_epochs": Spec("int", 1),
    "clip_range": Spec("rate", 0, low_open=True),
    "clip_range_vf": Spec("rate", 0, low_open=True, optional=True),
    "ent_coef": Spec("float", 0),
    "vf_coef": Spec("float", 0),
    "max_grad_norm": Spec("float", 0, low_open=True),
    "target_kl": Spec("float", 0, low_open=True, optional=True),
    "normalize_advantage": Spec("bool"),
    "use_sde": Spec("bool"),
    "sde_sample_freq": Spec("int", -1),
    "stats_window_size": Spec("int", 1),
    "buffer_size": Spec("int", 1, 10**7),
    "learning_starts": Spec("int", 0),
    "tau": Spec("float", 0, 1),
    "train_freq": Spec("train_freq"),
    "gradient_steps": Spec("int", -1),
    "optimize_memory_usage": Spec("bool"),
    "noise_std": Spec("float", 0),
    "policy": Spec("str", choices=("MlpPolicy",)),
    "device": Spec("str", choices=("auto", "cpu", "cuda")),
    "policy_kwargs": Spec("kwargs"),
}
"""The SB3 hyperparameters a search accepts, with their types and ranges. The constructors'
other arguments are objects (``replay_buffer_class``, ``action_noise``, ...): not settable here."""

MAX_HYPERPARAMS_BYTES = 1_000_000
MAX_HYPERPARAMS_NODES = 10_000
_SCHEDULE = "lin_"


def schedule(value: Any) -> Any:
    """RL Zoo's ``lin_<initial>`` as SB3's schedule, else ``value`` unchanged.

    The schedule is RL Zoo's linear one: ``progress_remaining * initial``.
    """
    if isinstance(value, str) and value.startswith(_SCHEDULE):
        initial = float(value[len(_SCHEDULE) :])
        return lambda progress_remaining: progress_remaining * initial
    return value


def _range_text(spec: Spec) -> str:
    low, high = spec.low, spec.high
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]"
    if low is not None:
        return f" {'>' if spec.low_open else '>='} {low:g}"
    return ""


def _check_sb3(agent: str, name: str, value: Any, spec: Spec) -> Any:
    """``value`` of SB3 hyperparameter ``name`` converted and checked against ``spec``."""
    given = value

    def refuse(expected: str) -> ArgumentError:
        return ArgumentError(f"{agent} hyperparameter {name}={given!r}: expected {expected}")

    if value is None:
        if spec.optional:
            return None
        raise refuse(f"a value{_range_text(spec)}")
    kind = spec.kind
    if kind == "rate" and isinstance(value, str) and value.startswith(_SCHEDULE):
        try:
            initial = float(value[len(_SCHEDULE) :])
        except ValueError:
            raise refuse(f"RL Zoo's schedule {_SCHEDULE}<number>") from None
        _check_sb3(agent, name, initial, dataclasses.replace(spec, kind="float"))
        return value  # kept as RL Zoo's string (run.json stays JSON); made a schedule at start
    if kind in ("int", "float", "rate"):
        expected = ("an integer" if kind == "int" else "a finite number") + _range_text(spec)
        if kind == "rate":
            expected += f" or RL Zoo's schedule {_SCHEDULE}<number>"
        if isinstance(value, str):  # "1e-3" or "1e6" from a file whose YAML read a string
            try:
                value = float(value)
            except ValueError:
                raise refuse(expected) from None
        try:
            number = _convert(name, value, int if kind == "int" else float)
        except ArgumentError:
            raise refuse(expected) from None
        too_low = spec.low is not None and (
            number <= spec.low if spec.low_open else number < spec.low
        )
        if too_low or (spec.high is not None and number > spec.high):
            raise refuse(expected)
        return number
    if kind == "bool":
        try:
            return _convert(name, value, bool)
        except ArgumentError:
            raise refuse("true or false") from None
    if kind == "str":
        if not isinstance(value, str) or (spec.choices and value not in spec.choices):
            raise refuse(f"one of {list(spec.choices)}" if spec.choices else "a string")
        return value
    if kind == "train_freq":
        if isinstance(value, list) and len(value) == 2 and value[1] in ("step", "episode"):
            return [_check_sb3(agent, name, value[0], Spec("int", 1)), value[1]]
        return _check_sb3(agent, name, value, Spec("int", 1))
    if isinstance(value, str):  # kwargs: RL Zoo's string, parsed now so it fails before the run
        from .sb3 import policy_kwargs

        policy_kwargs(value)
        return value
    if not isinstance(value, dict):
        raise refuse("RL Zoo's dict(...) string or a table")
    return value


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def _convert(name: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (int, float or bool), refusing what would change its meaning."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        real = isinstance(value, (int, float)) and not isinstance(value, bool)
        if real and math.isfinite(value):
            return float(value)
    raise ArgumentError(f"agent option {name}={value!r}: expected {kind.__name__}")


def _two_level_fields() -> dict[str, type]:
    from .two_level import TwoLevelConfig

    hints = {"int": int, "float": float, "bool": bool}
    return {
        f.name: f.type if isinstance(f.type, type) else hints[str(f.type)]
        for f in dataclasses.fields(TwoLevelConfig)
    }


def _sb3_keys(agent: str) -> dict[str, type | None]:
    from .sb3 import algorithm_class

    params = inspect.signature(algorithm_class(agent).__init__).parameters
    keys: dict[str, type | None] = {k: None for k in params if k not in ("self", "kwargs")}
    keys.update(_SB3_EXTRA)
    for key in _SB3_SET_BY_SEARCH:
        keys.pop(key, None)
    return keys


def check_agent_options(agent: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` checked for ``agent`` and converted to the types the agent uses.

    Raises:
        ValueError: Naming the option that the agent does not have, or the value of the wrong
            type; listing the options it has.
    """
    from .sb3 import ALGOS

    options = dict(options or {})
    if not options:
        return {}
    for name, value in options.items():
        if not isinstance(name, str) or not _plain(value):
            raise ArgumentError(f"agent option {name!r}: values must be plain (numbers, strings)")
    if agent == "two-level":
        fields = _two_level_fields()
        out = {}
        for name, value in options.items():
            if name not in fields:
                raise ArgumentError(
                    f"the two-level agent has no option {name!r}: choose from {sorted(fields)} "
                    "(TwoLevelConfig)"
                )
            out[name] = _convert(name, value, fields[name])
        two_level_config(out)  # the config's own checks, now rather than mid-run
        return out
    if agent in ALGOS:
        keys = _sb3_keys(agent)
        out = {}
        for name, value in options.items():
            if name in _SB3_SET_BY_SEARCH:
                raise ArgumentError(
                    f"agent option {name!r} is not settable: {_SB3_SET_BY_SEARCH[name]}"
                )
            if name not in keys:
                raise ArgumentError(
                    f"{agent} has no hyperparameter {name!r}: choose from {sorted(keys)}"
                )
            if name not in SB3_SPECS:
                raise ArgumentError(
                    f"{agent} hyperparameter {name!r} is an object, not settable from a plain "
                    f"value: choose from {sorted(k for k in keys if k in SB3_SPECS)}"
                )
            out[name] = _check_sb3(agent, name, value, SB3_SPECS[name])
        return out
    raise ArgumentError(
        f"agent {agent!r} takes no options (only two-level and the SB3 agents do), got "
        f"{sorted(options)}"
    )


def two_level_config(options: dict[str, Any]) -> Any:
    """The ``TwoLevelConfig`` with ``options`` replacing its defaults."""
    from .two_level import TwoLevelConfig

    return TwoLevelConfig(**options)


def read_hyperparams(path: str | os.PathLike[str], env_id: str) -> dict[str, Any]:
    """The entry for ``env_id`` (else ``default``) of an RL Zoo hyperparameter file.

    RL Zoo's keys that a search sets itself (``n_timesteps``, ``env_wrapper``, ...) are dropped.

    Raises:
        ValueError: Naming the file if it cannot be read, is not YAML, or has no entry for the id.
    """
    import yaml

    try:
        size = os.path.getsize(path)
        if size > MAX_HYPERPARAMS_BYTES:
            raise ArgumentError(
                f"hyperparameters '{path}' hold {size} bytes, more than {MAX_HYPERPARAMS_BYTES}"
            )
        with open(path, encoding="utf-8") as f:
            table = yaml.safe_load(f)
    except OSError as exc:
        raise ArgumentError(f"cannot read hyperparameters '{path}': {exc.strerror}") from None
    except RecursionError:
        raise ArgumentError(f"hyperparameters '{path}' are nested too deeply") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"hyperparameters '{path}' are not YAML: {exc}") from None
    if _expanded_size(table, MAX_HYPERPARAMS_NODES) > MAX_HYPERPARAMS_NODES:
        raise ArgumentError(
            f"hyperparameters '{path}' expand to more than {MAX_HYPERPARAMS_NODES} values "
            "(nested YAML aliases?): refused"
        )
    if not isinstance(table, dict):
        raise ArgumentError(f"hyperparameters '{path}': expected a table keyed by env id (RL Zoo)")
    entry = table.get(env_id, table.get("default"))
    if entry is None:
        raise ArgumentError(
            f"hyperparameters '{path}' have no entry for {env_id!r} nor 'default' (keys: "
            f"{sorted(map(str, table))})"
        )
    if not isinstance(entry, dict):
        raise ArgumentError(f"hyperparameters '{path}': the entry for {env_id!r} is not a table")
    return {str(k): v for k, v in entry.items() if k not in _SB3_SET_BY_SEARCH}


def _expanded_size(value: Any, limit: int) -> int:
    """How many values ``value`` holds once aliases are expanded (counting stops past ``limit``).

    A file of nested aliases thus costs ``limit`` steps here, not billions later.
    """
    count = 0
    stack = [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count
