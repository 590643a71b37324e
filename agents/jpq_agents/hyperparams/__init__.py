r"""The SB3 agents' hyperparameters, in RL Zoo's format, shipped with the package.

Each ``<algo>.yml`` here is a table keyed by env id (with a ``default`` entry). RL Zoo reads a
``--conf-file`` that is neither a ``.yml`` nor a ``.py`` path as a module to import and takes its
``hyperparams`` attribute, so the modules ``jpq_agents.hyperparams.ppo`` and
``jpq_agents.hyperparams.ddpg`` make the tables usable from an installed wheel, from any folder::

    python -m rl_zoo3.train --gym-packages jpq_env --env jpq_env/JPQWeights-v0 --algo ppo \\
        --conf-file jpq_agents.hyperparams.ppo

``jpq_agents.hyperparams.ppo_mask`` holds sb3-contrib's MaskablePPO settings, which
``jpq search --agent ppo_mask`` uses; RL Zoo 2.x has no ``ppo_mask`` algorithm to train them.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from jpq_env.errors import ArgumentError

__all__ = ["ALGOS", "load"]

ALGOS = ("ddpg", "ppo", "ppo_mask")
"""The algorithms with a table here."""


def load(algo: str) -> dict[str, dict[str, Any]]:
    """The whole table of ``algo`` (RL Zoo's ``hyperparams`` dict: env id -> settings).

    Raises:
        ValueError: For an algorithm without a table.
    """
    if algo not in ALGOS:
        raise ArgumentError(f"no hyperparameters for {algo!r}: choose one of {list(ALGOS)}")
    text = resources.files(__name__).joinpath(f"{algo}.yml").read_text()
    table = yaml.safe_load(text)
    return {str(k): dict(v) for k, v in table.items()}
