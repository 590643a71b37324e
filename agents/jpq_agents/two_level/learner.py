"""How the two-level controller learns: PPO on whole episodes, plus self-imitation.

- **Returns**: an episode's reward arrives at its end; every step of the episode gets it
  (discount 1, as AMC and HAQ do), normalised by the mean and deviation of every return seen so
  far (real and imagined), so one learning rate serves reward designs of any scale. The critic,
  reading the observation, is the baseline of both levels.
- **PPO's clipped objective** on batches of whole episodes, several passes per batch. The layer
  decision's log-probability is the sparsity's plus, where the environment decides it, the
  activation width's; the channel decision's sums the groups' (padding slots masked out).
- **Self-imitation** (Oh et al., 2018): the best episodes so far stay in a small elite buffer,
  and each update also pulls the policy towards their decisions where they beat the critic's
  estimate. With a budget of a few hundred evaluations this is what lets a lucky good episode
  count, and what makes the warm start's policies the point the controllers start from.
- **Guards**: an update stops before a step that would make the weights non-finite (a sparsity
  at a Beta boundary can give an infinite gradient).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .config import TwoLevelConfig
from .controller import TwoLevelController
from .episodes import Episode

__all__ = ["Learner"]

_Batch = dict[str, torch.Tensor]


class Learner:
    """Updates the controllers from batches of episodes and keeps the elite buffer.

    Args:
        net: The controllers it trains.
        config: Learning rate, PPO's and self-imitation's settings, elite size.
        scalar: Reports a learner quantity by name (``Search.scalar``: TensorBoard).
    """

    def __init__(
        self,
        net: TwoLevelController,
        config: TwoLevelConfig,
        scalar: Callable[[str, float], None],
    ) -> None:
        self.net = net
        self.config = config
        self.scalar = scalar
        self.opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        self.returns: list[float] = []  # every return seen (the normalisation's statistics)
        self.elite: list[Episode] = []  # the best real episodes, best first

    def remember(self, ep: Episode) -> None:
        """Count a real episode's return and keep it if it is among the elite."""
        self.returns.append(ep.reward)
        self.elite = sorted([*self.elite, ep], key=lambda e: -e.reward)[: self.config.elite]

    def tensors(self, episodes: list[Episode]) -> _Batch:
        """The episodes' steps as tensors, with each step's normalised return."""
        steps = [len(e.layer_obs) for e in episodes]
        ret = np.repeat(self._normalise(np.array([e.reward for e in episodes])), steps)
        return {
            "lobs": torch.as_tensor(np.stack([o for e in episodes for o in e.layer_obs])),
            "u": torch.as_tensor(
                np.array([u for e in episodes for u in e.layer_u], dtype=np.float32)
            ),
            "cobs": torch.as_tensor(np.stack([o for e in episodes for o in e.chan_obs])),
            "groups": torch.as_tensor(np.stack([g for e in episodes for g in e.chan_groups])),
            "mask": torch.as_tensor(np.stack([m for e in episodes for m in e.chan_mask])),
            "levels": torch.as_tensor(np.stack([lv for e in episodes for lv in e.chan_levels])),
            "act": torch.as_tensor(np.array([a for e in episodes for a in e.layer_act])),
            "act_mask": torch.as_tensor(
                np.array([m for e in episodes for m in e.layer_act_mask], dtype=np.float32)
            ),
            "ret": torch.as_tensor(ret.astype(np.float32)),
        }

    def log_probs(self, t: _Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities of the layer and channel decisions, and the mean entropy."""
        layer = self.net.sparsity(t["lobs"])
        chan = self.net.widths(t["cobs"], t["groups"])
        mask = t["mask"].float()
        # A sparsity sampled at exactly 0 or 1 (float32 underflow at extreme concentrations) has
        # log-probability -inf; clamped to the nearest interior floats it stays finite.
        lp_layer = layer.log_prob(t["u"].clamp(1e-30, 1.0 - 2**-24))
        lp_chan = (chan.log_prob(t["levels"]) * mask).sum(-1)
        entropy = layer.entropy().mean() + ((chan.entropy() * mask).sum(-1)).mean()
        if self.net.act is not None:  # the activation width is part of the layer decision
            act = self.net.activations(t["lobs"])
            lp_layer = lp_layer + act.log_prob(t["act"]) * t["act_mask"]
            entropy = entropy + (act.entropy() * t["act_mask"]).mean()
        return lp_layer, lp_chan, entropy

    def update(self, batch: list[Episode]) -> None:
        """One PPO update on ``batch`` (``epochs`` passes), with self-imitation of the elite."""
        t = self.tensors(batch)
        old, adv = self._baseline(t)
        elite = self.tensors(self.elite) if self.elite else None
        for _ in range(self.config.epochs):
            loss, entropy = self._loss(t, old, adv, elite)
            if not self._step(loss):
                break
        # The learner's state for TensorBoard (jpq search writes it beside the episodes).
        self.scalar("two_level/loss", float(loss.detach()))
        self.scalar("two_level/entropy", float(entropy.detach()))
        self.scalar("two_level/return_mean", float(np.mean([e.reward for e in batch])))
        if self.elite:
            self.scalar("two_level/elite_best_return", self.elite[0].reward)

    def _normalise(self, rewards: np.ndarray) -> np.ndarray:
        mean = float(np.mean(self.returns))
        std = float(np.std(self.returns)) + 1e-8
        return (rewards - mean) / std

    def _baseline(
        self, t: _Batch
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The batch's log-probabilities before the update, and the advantages of both levels."""
        with torch.no_grad():
            old_layer, old_chan, _ = self.log_probs(t)
            adv_l = t["ret"] - self.net.value(t["lobs"])
            adv_c = t["ret"] - self.net.value(t["cobs"])
            adv = torch.cat([adv_l, adv_c])
            adv_l = (adv_l - adv.mean()) / (adv.std() + 1e-8)
            adv_c = (adv_c - adv.mean()) / (adv.std() + 1e-8)
        return (old_layer, old_chan), (adv_l, adv_c)

    def _loss(
        self,
        t: _Batch,
        old: tuple[torch.Tensor, torch.Tensor],
        adv: tuple[torch.Tensor, torch.Tensor],
        elite: _Batch | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """PPO's clipped loss of both levels, the critic's and self-imitation's; the entropy."""
        cfg = self.config
        lp_layer, lp_chan, entropy = self.log_probs(t)
        loss = -entropy * cfg.entropy
        for lp, old_lp, a in ((lp_layer, old[0], adv[0]), (lp_chan, old[1], adv[1])):
            ratio = torch.exp(lp - old_lp)
            loss = loss - torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
        values = torch.cat([self.net.value(t["lobs"]), self.net.value(t["cobs"])])
        loss = loss + cfg.value * (values - torch.cat([t["ret"], t["ret"]])).pow(2).mean()
        if elite is not None:
            loss = loss + cfg.imitation * self._imitation(elite)
        return loss, entropy

    def _imitation(self, elite: _Batch) -> torch.Tensor:
        """Self-imitation: towards the elite's decisions where they beat the critic."""
        e_layer, e_chan, _ = self.log_probs(elite)
        gap_l = (elite["ret"] - self.net.value(elite["lobs"])).clamp(min=0)
        gap_c = (elite["ret"] - self.net.value(elite["cobs"])).clamp(min=0)
        sil = -(e_layer * gap_l.detach()).mean() - (e_chan * gap_c.detach()).mean()
        return sil + 0.5 * self.config.value * (gap_l.pow(2).mean() + gap_c.pow(2).mean())

    def _step(self, loss: torch.Tensor) -> bool:
        """One optimiser step on ``loss``; False, and no step, if loss or gradient is not finite."""
        if not torch.isfinite(loss):  # never a step that would turn the weights into NaN
            return False
        self.opt.zero_grad()
        loss.backward()
        norm = nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        if not torch.isfinite(norm):  # a non-finite gradient (Beta's at a boundary): skip
            self.opt.zero_grad()
            return False
        self.opt.step()
        return True
