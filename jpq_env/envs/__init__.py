"""The Gymnasium environments."""

from jpq_env.envs.jpq import CHANNEL, LAYER, JPQEnv

__all__ = ["CHANNEL", "LAYER", "JPQEnv"]
