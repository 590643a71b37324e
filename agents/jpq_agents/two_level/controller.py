"""The two-level controller's networks: layer controller, channel controller and critic.

- **Layer controller**: an MLP from the observation to a Beta distribution over the layer's
  sparsity as a fraction of the decision space's ``max_sparsity``. A Beta lives on [0, 1] like
  the decision itself, so nothing is clipped and exploration shrinks smoothly as it sharpens.
- **Activation head** (only when the environment decides activation widths): a categorical over
  the activation widths from the same layer observation, sampled with the sparsity; together they
  are the layer decision.
- **Channel controller**: one small MLP *shared by every importance group* (or every kernel, when
  the environment decides kernels one by one) that reads the observation (which carries the
  chosen sparsity) plus the group's own ``GROUP_FEATURES`` features and outputs logits over the
  weight widths. A shared head handles any number of kernels and learns "important kernels
  deserve more bits" once for all layers; plain DDPG struggles at kernel level (AutoQ), which is
  why the low level gets a small, well-shaped space.
- **Critic**: an MLP from the observation to the normalised return, the baseline of both levels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Beta, Categorical

__all__ = ["GROUP_FEATURES", "TwoLevelController"]

GROUP_FEATURES = 3
"""Features of one importance group: position in the importance order (0 = most important, 1 =
least), mean kernel importance, and share of the layer's kept kernels (each in [0, 1])."""


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, outputs),
    )


class TwoLevelController(nn.Module):
    """Layer controller, channel controller and critic.

    Args:
        obs_dim: Observation length.
        widths: Number of weight widths to choose from.
        hidden: Hidden layer width.
        act_widths: Number of activation widths to choose from (0: the environment does not
            decide them, no activation head).
    """

    def __init__(self, obs_dim: int, widths: int, hidden: int = 64, act_widths: int = 0) -> None:
        super().__init__()
        self.layer = _mlp(obs_dim, hidden, 2)
        self.act = _mlp(obs_dim, hidden, act_widths) if act_widths else None
        self.channel = _mlp(obs_dim + GROUP_FEATURES, hidden, widths)
        self.critic = _mlp(obs_dim, hidden, 1)

    def sparsity(self, obs: torch.Tensor) -> Beta:
        """Distribution of the sparsity (fraction of the maximum) for observations ``(N, D)``."""
        ab = nn.functional.softplus(self.layer(obs)) + 1.0
        return Beta(ab[..., 0], ab[..., 1])

    def activations(self, obs: torch.Tensor) -> Categorical:
        """Distribution of the activation width level for observations ``(N, D)``."""
        if self.act is None:
            raise RuntimeError("this controller has no activation head (act_widths=0)")
        return Categorical(logits=self.act(obs))

    def widths(self, obs: torch.Tensor, groups: torch.Tensor) -> Categorical:
        """Width distribution per group, ``obs (N, D)`` and ``groups (N, G, F)`` to ``(N, G)``."""
        tiled = obs[:, None, :].expand(-1, groups.shape[1], -1)
        return Categorical(logits=self.channel(torch.cat([tiled, groups], dim=-1)))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """Critic's estimate of the normalised return."""
        return self.critic(obs).squeeze(-1)
