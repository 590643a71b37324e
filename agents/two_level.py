"""The two-level controller: a layer controller and a channel controller trained jointly.

The method's own agent (AJPQ's hierarchy, AutoQ's two levels). It uses only the environment's
public hierarchical interface: the observation, ``kernel_importance(layer)``, the applied
decisions (``decisions`` and the step ``info``), and native actions.

Design, and why:

- **Layer controller**: an MLP from the observation to a Beta distribution over the layer's
  sparsity as a fraction of ``max_sparsity``. A Beta lives on [0, 1] like the decision itself, so
  nothing is clipped and exploration shrinks smoothly as it sharpens.
- **Activation head** (v1, when the environment decides activation widths): a categorical over
  the activation widths from the same layer observation, sampled with the sparsity; together they
  are the layer decision. Layers whose input width is fixed (the network input) get no term.
- **Channel controller**: one small MLP *shared by every importance group* (or every kernel, with
  ``channel_groups=0``) that reads the observation (which carries the chosen sparsity) plus the
  group's own features (position in the importance order, mean importance, share of the kept
  kernels) and outputs logits over the widths. A shared head handles any number of kernels and
  learns "important kernels deserve more bits" once for all layers; plain DDPG struggles at
  kernel level (AutoQ), which is why the low level gets a small, well-shaped space.
- **Training**: actor-critic with PPO's clipped objective on batches of whole episodes. The
  episode's terminal reward is given to every step (discount 1, as AMC and HAQ do), normalised by
  a running mean and deviation; a critic of the observation is the baseline. The transitions
  stored are the *applied* decisions (after the environment's budget wall), not the proposed ones.
- **Self-imitation**: the best episodes so far stay in a small elite buffer, and each update also
  pulls the policy towards their decisions where they beat the critic's estimate (Oh et al.,
  2018). With a few hundred evaluations this is what makes a lucky good policy count.
- **Warm start and refinement**: the first episodes play the prune-then-quantize policies (each
  width, on v1 each pair of weight and activation widths, with the least uniform pruning that
  fits: the two-stage baseline, cheap to find with the cost model), which the elite buffer then
  imitates, so the search starts where prune-then-quantize ends; the last
  ``refine_fraction`` of the evaluations (70% by default) is a local search around the best
  decisions found (one layer's sparsity, activation width or one group's width changed at a time,
  then, if the cost model puts the neighbour over budget, steps towards fewer bits in other
  layers until it fits, so that the forward wall does not cut the last layers instead; ties
  accepted to cross the proxy's plateaus). On JPQWeightsActs-v0 at 1/256 of FP32 BOPs (seeds 0 and
  1), the full two-stage warm start and the repaired moves raised the best held-out accuracy from
  81.3% and 73.3% to 84.7% and 82.3%. Measured on the digits task at
  1/64 of FP32 BOPs over 3 seeds (mean best held-out accuracy at 300 evaluations): refining the
  last 10% gave 96.8%, 50% gave 97.7%, 70% gave 98.4%, 90% gave 97.8%. With a few hundred
  evaluations the controllers' main job is to find good regions; the literature's finding that
  local search beats plain RL at this budget (NAS-Bench-101 at 150 evaluations: local search,
  then regularized evolution, then random, then REINFORCE) held here too.

- **Refinement in rounds**: each round tries ``refine_batch`` neighbours of the best (4 by
  default) and keeps the round's best. Measured against one neighbour at a time (JPQWeightsActs-v0
  at 1/64, 1/128 and 1/256 and JPQWeights-v0 at 1/64, seeds 0-2, best held-out accuracy after 300
  evaluations): equal in 9 of 12 runs; rounds were ahead in two (87.2% against 82.3% at 1/256 with
  seed 2, 98.96% against 98.26% on v0 with seed 2) and behind in one (98.96% against 99.31% on v0
  with seed 0). Rounds cost nothing measurable, and they let a pool evaluate the refinement in
  parallel.
- **On an evaluator pool** (``jpq search --ray/--workers``, ``jpq_agents.batch``): the warm-start
  policies, each update's batch of sampled episodes and each refinement round are played first
  on a capturing tape (the controllers read every step's observation, so the driver plays the
  episodes; only their evaluations are spread over the pool), then evaluated in one batch and
  recorded in order. Nothing the agent draws depends on the accuracies within a batch, so the
  records are the same as in one process, whatever the number of workers (tested). Up to
  ``batch_episodes`` (8) workers are kept busy while it learns and ``refine_batch`` (4) while it
  refines; the driver plays each episode twice (to capture it, then to record it), which bounds
  the speed-up when evaluations are short.

Deterministic: with the same seed the same episodes are played (the search's resume relies on it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Beta, Categorical

from jpq_env.envs import JPQEnv

from .batch import capturing, parallelism, play_many
from .play import (
    LayerChoice,
    channel_action,
    choices_fit,
    jpq,
    layer_action,
    least_uniform_pruning,
    level_pairs,
    play,
    uniform_choices,
)
from .search import Search

__all__ = ["TwoLevelConfig", "TwoLevelController", "run_two_level"]

_EPS = 1e-4
_T = TypeVar("_T")


@dataclass
class TwoLevelConfig:
    """Hyperparameters of the two-level controller (defaults tuned on the digits task).

    Attributes:
        hidden: Width of the hidden layers.
        lr: Adam learning rate.
        batch_episodes: Episodes per update.
        epochs: Passes over a batch per update.
        clip: PPO clipping range.
        entropy: Entropy bonus.
        value: Weight of the critic's loss.
        elite: Episodes kept for self-imitation.
        imitation: Weight of the self-imitation loss.
        refine_fraction: Share of the evaluations spent refining the best decisions at the end.
        warm_start: Play the prune-then-quantize warm-start episodes first.
        accept_ties: During refinement, move to a neighbour that scores as well as the best (the
            proxy is coarse: 288 held-out samples move in steps of 0.35%, so plateaus are wide).
        refine_batch: Neighbours of the best tried per refinement round (the round's best is
            kept), evaluated in parallel on an evaluator pool. The rounds do not depend on the
            evaluator, so in-process and pooled searches give the same records; a pool with
            more workers than this leaves the extra ones idle during refinement.
    """

    hidden: int = 64
    lr: float = 3e-3
    batch_episodes: int = 8
    epochs: int = 8
    clip: float = 0.2
    entropy: float = 0.01
    value: float = 0.5
    elite: int = 16
    imitation: float = 0.5
    refine_fraction: float = 0.7
    warm_start: bool = True
    accept_ties: bool = True
    refine_batch: int = 4


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, outputs),
    )


GROUP_FEATURES = 3


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


@dataclass
class _Episode:
    layer_obs: list[np.ndarray] = field(default_factory=list)
    layer_u: list[float] = field(default_factory=list)
    layer_act: list[int] = field(default_factory=list)
    layer_act_mask: list[bool] = field(default_factory=list)
    chan_obs: list[np.ndarray] = field(default_factory=list)
    chan_groups: list[np.ndarray] = field(default_factory=list)
    chan_mask: list[np.ndarray] = field(default_factory=list)
    chan_levels: list[np.ndarray] = field(default_factory=list)
    choices: list[LayerChoice] = field(default_factory=list)
    reward: float = 0.0


class _Agent:
    def __init__(self, search: Search, seed: int, config: TwoLevelConfig) -> None:
        self.search = search
        self.env = search.env
        self.base: JPQEnv = jpq(self.env)
        self.config = config
        self.seed = seed
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        obs_dim = self.base.observation_size
        self.acts = self.base.space.act_bits if self.base.decides_act else ()
        self.net = TwoLevelController(obs_dim, len(self.base.bits), config.hidden, len(self.acts))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.slots = self.base.channel_slots
        self.returns: list[float] = []
        self.elite: list[_Episode] = []
        self.best: _Episode | None = None
        self.parallel = parallelism(search)

    # ---- features ---------------------------------------------------------------------------

    def _groups(self, layer: int, kept: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Features ``(slots, F)``, a validity mask and the kernel indices of each group."""
        importance = self.base.kernel_importance(layer)[:kept]
        if self.base.per_kernel:
            parts = [np.array([i]) for i in range(kept)]
        else:
            parts = np.array_split(np.arange(kept), self.slots)
        feats = np.zeros((self.slots, GROUP_FEATURES), dtype=np.float32)
        mask = np.zeros(self.slots, dtype=bool)
        for g, part in enumerate(parts[: self.slots]):
            if part.size == 0:
                continue
            mask[g] = True
            feats[g] = (
                g / max(len(parts) - 1, 1),
                importance[part].mean(),
                part.size / max(kept, 1),
            )
        return feats, mask, parts

    # ---- playing ----------------------------------------------------------------------------

    def _episode(
        self, env: gym.Env[np.ndarray, np.ndarray], fixed: list[LayerChoice] | None = None
    ) -> _Episode:
        """Play one episode on ``env``, sampled from the controllers unless ``fixed`` is given.

        Its reward is filled in by ``_evaluate`` (on a capturing tape the episode ends
        unevaluated).
        """
        ep = _Episode()
        obs, _ = env.reset(seed=self.seed)
        for layer in range(self.base.num_layers):
            k = self.base.graph.layers[layer].out_channels
            if fixed is None:
                with torch.no_grad():
                    o = torch.as_tensor(obs)[None]
                    u = float(self.net.sparsity(o).sample()[0])
                    act = int(self.net.activations(o).sample()[0]) if self.acts else None
                action = layer_action(self.base, layer, 0, act)
                action[0] = np.float32(2 * u - 1)
            else:
                act = fixed[layer].act_level
                action = layer_action(self.base, layer, fixed[layer].n_pruned, act)
            layer_obs = obs
            obs, _, _, _, info = env.step(action)
            n_pruned = round(info["applied_sparsity"] * k)
            top = max(self.base.space.max_sparsity * k, 1e-9)
            ep.layer_obs.append(layer_obs)
            ep.layer_u.append(float(np.clip(n_pruned / top, _EPS, 1 - _EPS)))
            feats, mask, parts = self._groups(layer, k - n_pruned)
            if fixed is None:
                with torch.no_grad():
                    dist = self.net.widths(torch.as_tensor(obs)[None], torch.as_tensor(feats)[None])
                    levels = dist.sample()[0].numpy()
            else:
                levels = np.zeros(self.slots, dtype=np.int64)
                levels[: len(fixed[layer].levels)] = fixed[layer].levels
            chan_obs = obs
            obs, _, _, _, _ = env.step(channel_action(self.base, levels))
            applied = self._applied_levels(layer, parts, levels)
            ep.chan_obs.append(chan_obs)
            ep.chan_groups.append(feats)
            ep.chan_mask.append(mask)
            ep.chan_levels.append(applied)
            act_level = self._applied_act(layer)
            ep.layer_act.append(0 if act_level is None else act_level)
            ep.layer_act_mask.append(
                act_level is not None and layer not in self.base.space.fixed_act
            )
            levels_applied = tuple(int(x) for x in applied[: len(parts)])
            ep.choices.append(LayerChoice(n_pruned, levels_applied, act_level))
        return ep

    def _evaluate(
        self, plays: list[Callable[[gym.Env[np.ndarray, np.ndarray]], _T]]
    ) -> list[tuple[_T, float]]:
        """Play each episode (``play(env)`` plays one on ``env``); what it returned, its reward.

        With an evaluator pool the episodes are played on a capturing tape first and then
        evaluated in one batch (``jpq_agents.batch``); otherwise one after another through the
        search. The same episodes, records and rewards either way (the environment is
        deterministic and the agent's random draws happen in the same order).
        """
        if len(plays) > self.search.settings.episodes - self.search.count:
            raise RuntimeError("more episodes than the search's remaining evaluations")
        before = self.search.count
        if self.parallel > 1 and len(plays) > 1:
            with capturing(self.search) as tape:
                outs = [play_episode(tape) for play_episode in plays]
            play_many(self.search, tape.episodes, seed=self.seed, policies=tape.policies)
        else:
            outs = [play_episode(self.env) for play_episode in plays]
        if self.search.count != before + len(plays):
            raise RuntimeError(f"{len(plays)} episodes recorded {self.search.count - before}")
        recorded = self.search.records[before:]
        return [(out, float(r["reward"])) for out, r in zip(outs, recorded, strict=True)]

    def _applied_act(self, layer: int) -> int | None:
        """Activation level the layer actually got (None when activations are not decided)."""
        decision = self.base.decisions[layer]
        if not self.acts or decision is None:
            return None
        # The fixed network-input width may lie outside the choices: take the nearest below.
        below = [i for i, a in enumerate(self.acts) if a <= decision.act_bits]
        return below[-1] if below else 0

    def _applied_levels(
        self, layer: int, parts: list[np.ndarray], proposed: np.ndarray
    ) -> np.ndarray:
        """Width level each group actually got (the budget wall may have lowered some)."""
        decision = self.base.decisions[layer]
        applied = proposed.copy()
        if decision is None:
            return applied
        index = {b: i for i, b in enumerate(self.base.bits)}
        for g, part in enumerate(parts[: self.slots]):
            if part.size:
                widths = decision.ranked_bits[part]
                applied[g] = round(float(np.mean([index.get(int(w), 0) for w in widths])))
        return applied

    # ---- learning ---------------------------------------------------------------------------

    def _normalise(self, rewards: np.ndarray) -> np.ndarray:
        mean = float(np.mean(self.returns))
        std = float(np.std(self.returns)) + 1e-8
        return (rewards - mean) / std

    def _tensors(self, episodes: list[_Episode]) -> dict[str, torch.Tensor]:
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

    def _log_probs(
        self, t: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        layer = self.net.sparsity(t["lobs"])
        chan = self.net.widths(t["cobs"], t["groups"])
        mask = t["mask"].float()
        lp_layer = layer.log_prob(t["u"])
        lp_chan = (chan.log_prob(t["levels"]) * mask).sum(-1)
        entropy = layer.entropy().mean() + ((chan.entropy() * mask).sum(-1)).mean()
        if self.acts:  # the activation width is part of the layer decision
            act = self.net.activations(t["lobs"])
            lp_layer = lp_layer + act.log_prob(t["act"]) * t["act_mask"]
            entropy = entropy + (act.entropy() * t["act_mask"]).mean()
        return lp_layer, lp_chan, entropy

    def _update(self, batch: list[_Episode]) -> None:
        cfg = self.config
        t = self._tensors(batch)
        with torch.no_grad():
            old_layer, old_chan, _ = self._log_probs(t)
            adv_l = t["ret"] - self.net.value(t["lobs"])
            adv_c = t["ret"] - self.net.value(t["cobs"])
            adv = torch.cat([adv_l, adv_c])
            adv_l = (adv_l - adv.mean()) / (adv.std() + 1e-8)
            adv_c = (adv_c - adv.mean()) / (adv.std() + 1e-8)
        elite = self._tensors(self.elite) if self.elite else None
        for _ in range(cfg.epochs):
            lp_layer, lp_chan, entropy = self._log_probs(t)
            loss = -entropy * cfg.entropy
            for lp, old, a in ((lp_layer, old_layer, adv_l), (lp_chan, old_chan, adv_c)):
                ratio = torch.exp(lp - old)
                loss = (
                    loss - torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
                )
            values = torch.cat([self.net.value(t["lobs"]), self.net.value(t["cobs"])])
            loss = loss + cfg.value * (values - torch.cat([t["ret"], t["ret"]])).pow(2).mean()
            if elite is not None:
                e_layer, e_chan, _ = self._log_probs(elite)
                gap_l = (elite["ret"] - self.net.value(elite["lobs"])).clamp(min=0)
                gap_c = (elite["ret"] - self.net.value(elite["cobs"])).clamp(min=0)
                sil = -(e_layer * gap_l.detach()).mean() - (e_chan * gap_c.detach()).mean()
                sil = sil + 0.5 * cfg.value * (gap_l.pow(2).mean() + gap_c.pow(2).mean())
                loss = loss + cfg.imitation * sil
            self.opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            self.opt.step()

    def _remember(self, ep: _Episode) -> None:
        self.returns.append(ep.reward)
        if self.best is None or ep.reward > self.best.reward:
            self.best = ep
        self.elite = sorted([*self.elite, ep], key=lambda e: -e.reward)[: self.config.elite]

    # ---- the search -------------------------------------------------------------------------

    def _move(self, choices: list[LayerChoice], direction: int = 0, avoid: int = -1) -> int:
        """Change one decision of a random layer in place; return the layer.

        The change is one step of its sparsity (5% of its kernels), its activation level or one
        group's width level; ``direction`` +1 for more bits, -1 for fewer, 0 either way.
        """
        layer = int(self.rng.integers(self.base.num_layers))
        if layer == avoid:
            layer = (layer + 1) % self.base.num_layers
        c = choices[layer]
        up = direction if direction else int(self.rng.choice([-1, 1]))
        top = self.base.space.max_pruned(layer)
        free_act = c.act_level is not None and layer not in self.base.space.fixed_act
        if free_act and self.rng.random() < 1 / 3:
            assert c.act_level is not None
            act = int(np.clip(c.act_level + up, 0, len(self.acts) - 1))
            choices[layer] = LayerChoice(c.n_pruned, c.levels, act)
        elif top > 0 and self.rng.random() < 0.5:
            k = self.base.graph.layers[layer].out_channels
            n = int(np.clip(c.n_pruned - up * max(1, round(0.05 * k)), 0, top))
            choices[layer] = LayerChoice(n, c.levels, c.act_level)
        elif c.levels:
            levels = list(c.levels)
            g = int(self.rng.integers(len(levels)))
            levels[g] = int(np.clip(levels[g] + up, 0, len(self.base.bits) - 1))
            choices[layer] = LayerChoice(c.n_pruned, tuple(levels), c.act_level)
        return layer

    def _mutate(self, choices: list[LayerChoice]) -> list[LayerChoice]:
        """A neighbour of ``choices`` within budget.

        One random change, then, if the cost model says it no longer fits, changes towards fewer
        bits in other layers until it does (else the forward wall would cut the last layers).
        """
        out = list(choices)
        changed = self._move(out)
        for _ in range(4 * self.base.num_layers):
            if choices_fit(self.base, out):
                break
            self._move(out, direction=-1, avoid=changed)
        return out

    def _learned(self, plans: list[list[LayerChoice] | None]) -> list[_Episode]:
        """Play and evaluate episodes (None: sampled from the controllers) and remember them."""
        played = self._evaluate([functools.partial(self._episode, fixed=plan) for plan in plans])
        for ep, reward in played:
            ep.reward = reward
            self._remember(ep)
        return [ep for ep, _ in played]

    def _candidate(
        self, choices: list[LayerChoice]
    ) -> Callable[[gym.Env[np.ndarray, np.ndarray]], list[LayerChoice]]:
        """An episode playing ``choices``; it returns the choices as applied."""

        def play_candidate(env: gym.Env[np.ndarray, np.ndarray]) -> list[LayerChoice]:
            play(env, choices, seed=self.seed)
            return self._replayed_choices(choices)

        return play_candidate

    def run(self) -> None:
        cfg = self.config
        total = self.search.settings.episodes
        refine_from = total - int(cfg.refine_fraction * total) if total >= 20 else total
        if cfg.warm_start:
            n = self.base.num_layers
            plans: list[list[LayerChoice] | None] = []
            for w, act in level_pairs(self.base):  # the two-stage baseline's policies
                pruned = least_uniform_pruning(self.base, [w] * n, [act] * n)
                if pruned is not None:
                    plans.append(uniform_choices(self.base, pruned, [w] * n, [act] * n))
            self._learned(plans[: max(refine_from - self.search.count, 0)])
        batch: list[_Episode] = []
        while self.search.count < refine_from:
            wanted = min(cfg.batch_episodes - len(batch), refine_from - self.search.count)
            batch += self._learned([None] * wanted)
            if len(batch) == cfg.batch_episodes:
                self._update(batch)
                batch = []
        width = max(cfg.refine_batch, 1)
        while not self.search.done and self.best is not None:
            best = self.best
            wanted = min(width, total - self.search.count)
            candidates = [self._candidate(self._mutate(best.choices)) for _ in range(wanted)]
            tried = self._evaluate(candidates)
            choices, reward = max(tried, key=lambda cr: cr[1])  # the first of equals
            if reward > best.reward or (cfg.accept_ties and reward == best.reward):
                self.best = _Episode(choices=choices, reward=reward)

    def _replayed_choices(self, proposed: list[LayerChoice]) -> list[LayerChoice]:
        """The choices as applied (the wall may have changed what was proposed)."""
        out = []
        for layer, choice in enumerate(proposed):
            decision = self.base.decisions[layer]
            n_pruned = decision.n_pruned if decision else choice.n_pruned
            act = self._applied_act(layer) if decision else choice.act_level
            out.append(LayerChoice(n_pruned, choice.levels, act))
        return out


def run_two_level(search: Search, seed: int, config: TwoLevelConfig | None = None) -> None:
    """Run the two-level controller until the search's evaluation budget is spent."""
    _Agent(search, seed, config or TwoLevelConfig()).run()
