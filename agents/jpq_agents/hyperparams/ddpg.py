"""RL Zoo's ``--conf-file jpq_agents.hyperparams.ddpg``: the table of ``ddpg.yml``."""

from . import load

hyperparams = load("ddpg")
