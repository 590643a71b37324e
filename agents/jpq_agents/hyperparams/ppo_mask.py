"""RL Zoo's ``--conf-file jpq_agents.hyperparams.ppo_mask``: the table of ``ppo_mask.yml``."""

from . import load

hyperparams = load("ppo_mask")
