"""RL Zoo's ``--conf-file jpq_agents.hyperparams.ppo``: the table of ``ppo.yml``."""

from . import load

hyperparams = load("ppo")
