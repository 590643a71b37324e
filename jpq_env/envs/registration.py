"""Registration of the environment ids with Gymnasium (idempotent).

Every preset is a dict of JSON-able keyword arguments, so specs serialise and RL Zoo's
``--env-kwargs`` work. Ids name the problem (``JPQWeights``: weights only; ``JPQWeightsActs``:
weights and activations); their ``-vN`` is kept for revisions of the same problem. Besides the
namespaced ids, the two main ones are registered bare so that ``gym.make("jpq_env:JPQWeights-v0")``
(import the module, then look the id up) works from a fresh process. The ids used before the
problems were named (``JPQ-v0``, ``JPQ-v1``, ...) still make the same environments, with a
``FutureWarning`` naming the new id; no listing shows them, and they go away in the next minor
release.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import torch

__all__ = ["BENCHES", "PRESETS", "RENAMED", "make_renamed", "register_envs"]

_ENTRY = "jpq_env.envs.jpq:JPQEnv"
_BENCH_ENTRY = "jpq_env.envs.bench:JPQBenchEnv"

_ACTS = [2, 3, 4, 5, 6, 8]

PRESETS: dict[str, dict[str, Any]] = {
    # The weights-only problem (AJPQ's): digits CNN, activations at 8 bits, BOPs budget 1/64.
    "jpq_env/JPQWeights-v0": {},
    "JPQWeights-v0": {},
    # The deeper task (11 layers with residual adds and a depthwise-separable pair).
    "jpq_env/JPQWeightsDeep-v0": {"task": "digits-deep"},
    # Size-constrained search: weights at most 1/10 of their FP32 bits, no BOPs target.
    "jpq_env/JPQWeightsSize-v0": {"budget_bops": None, "budget_size": 0.1},
    # One weight width per kernel instead of per importance group (the hardest action space).
    "jpq_env/JPQWeightsPerKernel-v0": {"channel_groups": 0},
    # Weights and activations: each layer decision also picks the layer's input activation
    # width, which opens budgets down to 1/256 of FP32 (the command line's default problem).
    "jpq_env/JPQWeightsActs-v0": {"act_bits": _ACTS, "budget_bops": 1 / 128},
    "JPQWeightsActs-v0": {"act_bits": _ACTS, "budget_bops": 1 / 128},
    "jpq_env/JPQWeightsActsDeep-v0": {
        "task": "digits-deep",
        "act_bits": _ACTS,
        "budget_bops": 1 / 128,
    },
}

BENCHES: dict[str, dict[str, Any]] = {
    # JPQ-Bench (jpq_env.envs.bench): JPQWeightsActs-v0's problem scored by a surrogate fitted on
    # real evaluations. The generic id takes any bench (a shipped name or a bench file); the
    # named ones are registered when their bench file ships with the package.
    "jpq_env/JPQBench-v0": {"bench": "resnet20-cifar", "budget_bops": 1 / 128},
    "jpq_env/JPQBench-ResNet20-v0": {"bench": "resnet20-cifar", "budget_bops": 1 / 128},
    "jpq_env/JPQBench-Digits-v0": {"bench": "digits", "budget_bops": 1 / 128},
}

RENAMED: dict[str, str] = {
    "jpq_env/JPQ-v0": "jpq_env/JPQWeights-v0",
    "JPQ-v0": "JPQWeights-v0",
    "jpq_env/JPQDeep-v0": "jpq_env/JPQWeightsDeep-v0",
    "jpq_env/JPQSize-v0": "jpq_env/JPQWeightsSize-v0",
    "jpq_env/JPQPerKernel-v0": "jpq_env/JPQWeightsPerKernel-v0",
    "jpq_env/JPQ-v1": "jpq_env/JPQWeightsActs-v0",
    "JPQ-v1": "JPQWeightsActs-v0",
    "jpq_env/JPQDeep-v1": "jpq_env/JPQWeightsActsDeep-v0",
}
"""Ids used before the problems were named, and their names. The old ids named two different
problems as two versions of one (gymnasium then reported ``JPQ-v0`` as out of date); they still
make the same environment, with a ``FutureWarning``, until the next minor release."""


def make_renamed(old_id: str, new_id: str, **kwargs: Any) -> gym.Env[Any, Any]:
    """Entry point of a renamed id: warn once per call, then build the environment of ``new_id``."""
    import warnings

    from jpq_env.envs.jpq import JPQEnv

    warnings.warn(
        f"'{old_id}' is renamed '{new_id}' (same environment; the old id goes away in the next "
        "minor release): use the new id",
        FutureWarning,
        stacklevel=3,
    )
    return JPQEnv(**kwargs)


make_renamed.metadata = {"render_modes": ["ansi", "human", "rgb_array"], "render_fps": 4}  # type: ignore[attr-defined]


_FORK_HOOK = False


def _one_thread_in_forked_child() -> None:
    # A child forked after torch ran on an OpenMP thread pool deadlocks on its first parallel op
    # (observed here with gymnasium's AsyncVectorEnv, whose default start method is fork). Worker
    # processes get their parallelism from being several, so one thread each, as PyTorch's own
    # DataLoader workers do.
    torch.set_num_threads(1)


def register_envs() -> None:
    """Register every preset id that is not registered yet (and make forked workers safe)."""
    global _FORK_HOOK
    for env_id, kwargs in PRESETS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=_ENTRY, kwargs=dict(kwargs))
    shipped = None
    for env_id, kwargs in BENCHES.items():
        if env_id not in gym.registry:
            if shipped is None:
                from jpq_env.proxy.bench import bench_names

                shipped = set(bench_names())
            if env_id == "jpq_env/JPQBench-v0" or kwargs["bench"] in shipped:
                gym.register(id=env_id, entry_point=_BENCH_ENTRY, kwargs=dict(kwargs))
    for old, new in RENAMED.items():
        if old not in gym.registry:
            preset = {"old_id": old, "new_id": new, **PRESETS[new]}
            gym.register(
                id=old, entry_point="jpq_env.envs.registration:make_renamed", kwargs=preset
            )
    if not _FORK_HOOK:
        os.register_at_fork(after_in_child=_one_thread_in_forked_child)
        _FORK_HOOK = True
