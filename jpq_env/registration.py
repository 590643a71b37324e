"""Registration of the environment ids with Gymnasium (idempotent).

Every preset is a dict of JSON-able keyword arguments, so specs serialise and RL Zoo's
``--env-kwargs`` work. Besides the namespaced ids, ``JPQ-v0`` is registered bare so that
``gym.make("jpq_env:JPQ-v0")`` (import the module, then look the id up) works from a fresh process.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import torch

__all__ = ["PRESETS", "register_envs"]

_ENTRY = "jpq_env.envs.jpq:JPQEnv"

PRESETS: dict[str, dict[str, Any]] = {
    # The default: digits CNN, weights-only decisions, BOPs budget 1/64 of FP32.
    "jpq_env/JPQ-v0": {},
    "JPQ-v0": {},
    # The deeper default task (11 layers with residual adds and a depthwise-separable pair).
    "jpq_env/JPQDeep-v0": {"task": "digits-deep"},
    # Size-constrained search: weights at most 1/10 of their FP32 bits, no BOPs target.
    "jpq_env/JPQSize-v0": {"budget_bops": None, "budget_size": 0.1},
    # One weight width per kernel instead of per importance group (the hardest action space).
    "jpq_env/JPQPerKernel-v0": {"channel_groups": 0},
    # v1: activation widths are a layer decision too, which opens budgets down to 1/256 of FP32.
    "jpq_env/JPQ-v1": {"act_bits": [2, 3, 4, 5, 6, 8], "budget_bops": 1 / 128},
    "JPQ-v1": {"act_bits": [2, 3, 4, 5, 6, 8], "budget_bops": 1 / 128},
    "jpq_env/JPQDeep-v1": {
        "task": "digits-deep",
        "act_bits": [2, 3, 4, 5, 6, 8],
        "budget_bops": 1 / 128,
    },
}


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
    if not _FORK_HOOK:
        os.register_at_fork(after_in_child=_one_thread_in_forked_child)
        _FORK_HOOK = True
