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

__all__ = ["check_agent_options", "read_hyperparams", "two_level_config"]

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
            kind = keys[name]
            out[name] = value if kind is None else _convert(name, value, kind)
        if isinstance(out.get("policy_kwargs"), str):
            from .sb3 import policy_kwargs

            policy_kwargs(out["policy_kwargs"])  # parsed now: a bad string fails before the run
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
        with open(path, encoding="utf-8") as f:
            table = yaml.safe_load(f)
    except OSError as exc:
        raise ArgumentError(f"cannot read hyperparameters '{path}': {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"hyperparameters '{path}' are not YAML: {exc}") from None
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
