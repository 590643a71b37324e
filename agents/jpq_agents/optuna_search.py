"""Off-the-shelf black-box optimizers as baselines: Optuna's TPE and CMA-ES over the flat view.

A learned search should beat a good general-purpose optimizer given the same evaluations, or it
has not earned its complexity. Each Optuna trial is one episode: one float in [-1, 1] per entry
of the native action of every layer (``FlatBoxView``'s action, one step per layer), read exactly
as the environment reads it, so every trial is counted, enforced and logged like any agent's
episode. The objective is the episode's reward.

- ``tpe`` / ``cmaes``: cold, the optimizer starts from nothing (CMA-ES from the centre of the
  box with Optuna's default step, a sixth of the range);
- ``tpe-warm`` / ``cmaes-warm``: warm-started from the two-stage (prune-then-quantize) policies:
  they are enqueued as the first trials (TPE), or evaluated first and handed to CMA-ES as
  ``source_trials`` (Optuna's warm-starting CMA-ES, Nomura et al. 2021: the initial mean and
  covariance from the best of them).

Both are seeded (``TPESampler(seed)``, ``CmaEsSampler(seed)``): the same seed gives the same
trials. CMA-ES needs the ``cmaes`` package (a dependency of jpq-env).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .batch import choice_actions
from .play import jpq, least_uniform_pruning, level_pairs, uniform_choices
from .search import Search

__all__ = ["OPTUNA_AGENTS", "run_optuna"]


def _names(base: Any) -> list[str]:
    return [f"l{layer}_a{j}" for layer in range(base.num_layers) for j in range(base.action_size)]


def _flat(base: Any, choices: list[Any]) -> dict[str, float]:
    """The trial parameters that play ``choices``: layer entries, then channel entries."""
    actions = choice_actions(base, choices)
    params = {}
    for layer in range(base.num_layers):
        layer_a, channel_a = actions[2 * layer], actions[2 * layer + 1]
        merged = np.concatenate([layer_a[: base.layer_slots], channel_a[base.layer_slots :]])
        for j, value in enumerate(merged):
            params[f"l{layer}_a{j}"] = float(np.clip(value, -1.0, 1.0))
    return params


def _two_stage(base: Any) -> list[dict[str, float]]:
    n = base.num_layers
    out = []
    for w, a in level_pairs(base):
        pruned = least_uniform_pruning(base, [w] * n, [a] * n)
        if pruned is not None:
            out.append(_flat(base, uniform_choices(base, pruned, [w] * n, [a] * n)))
    return out


def _episode(search: Search, base: Any, params: dict[str, float], seed: int) -> float:
    """Play the episode a trial's parameters describe; its reward."""
    env = search.env
    env.reset(seed=seed)
    reward = 0.0
    width = base.action_size
    for layer in range(base.num_layers):
        action = np.array([params[f"l{layer}_a{j}"] for j in range(width)], dtype=np.float32)
        _, r1, _, _, _ = env.step(action)
        _, r2, terminated, _, _ = env.step(action)
        reward += float(r1) + float(r2)
        if terminated:
            break
    return reward


def run_optuna(search: Search, seed: int, sampler: str, warm: bool) -> None:
    """Optimise the episode reward with Optuna's ``sampler`` (``"tpe"`` or ``"cmaes"``)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = jpq(search.env)
    names = _names(base)
    starts = _two_stage(base) if warm else []
    if sampler == "tpe":
        chosen: Any = optuna.samplers.TPESampler(seed=seed)
    else:
        source = None
        if starts:  # evaluate the two-stage policies, then warm-start CMA-ES from them
            first = optuna.create_study(direction="maximize")
            for params in starts:
                if search.done:
                    return
                first.enqueue_trial(params)
                _ask_and_tell(first, search, base, names, seed)
            source = _enough_sources(first.trials)
            starts = []
        with warnings.catch_warnings():  # source_trials is marked experimental; it is tested here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            chosen = optuna.samplers.CmaEsSampler(seed=seed, source_trials=source)
    study = optuna.create_study(direction="maximize", sampler=chosen)
    for params in starts:
        study.enqueue_trial(params)
    while not search.done:
        _ask_and_tell(study, search, base, names, seed)


WARM_START_GAMMA = 0.1
"""The share of source trials CMA-ES's warm start keeps (``cmaes.get_warm_start_mgd``'s gamma)."""


def _enough_sources(trials: list[Any]) -> list[Any]:
    """The source trials, repeated until CMA-ES's warm start keeps at least one of them.

    ``get_warm_start_mgd`` estimates its distribution from the best ``floor(n * 0.1)`` source
    trials and asserts that this is at least one, so fewer than 10 two-stage policies (a task with
    few feasible width pairs) crashed inside the ``cmaes`` package. Repeating them keeps the same
    best trial(s): the warm start is then centred on the best two-stage policy, with the
    package's prior covariance.
    """
    if not trials:
        return trials
    copies = -(-int(1 / WARM_START_GAMMA) // len(trials))  # ceil(10 / n)
    return list(trials) * max(copies, 1)


def _ask_and_tell(study: Any, search: Search, base: Any, names: list[str], seed: int) -> None:
    """One trial: the sampler's (or an enqueued) parameters, played as an episode."""
    trial = study.ask()
    params = {name: trial.suggest_float(name, -1.0, 1.0) for name in names}
    study.tell(trial, _episode(search, base, params, seed))


OPTUNA_AGENTS: dict[str, tuple[str, bool]] = {
    "tpe": ("tpe", False),
    "tpe-warm": ("tpe", True),
    "cmaes": ("cmaes", False),
    "cmaes-warm": ("cmaes", True),
}
"""Agent names and their (sampler, warm start)."""
