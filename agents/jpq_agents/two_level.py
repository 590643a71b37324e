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

import copy
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Beta, Categorical

from jpq_env import Policy
from jpq_env.core.policy import LayerPolicy
from jpq_env.envs import JPQEnv
from jpq_env.proxy.sensitivity import SensitivityTable, measure_sensitivity

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
from .surrogate import Surrogate, SurrogateEvaluator

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
        surrogate: Model-based learning: train the controllers on imagined episodes scored by a
            surrogate of the proxy (``jpq_agents.surrogate``) fitted to the real evaluations, and
            spend real evaluations on the imagined episodes with the best upper confidence bound;
            refinement screens its neighbours with the surrogate too. False: the controllers learn
            from real episodes alone (model-free, as in jpq-env 0.1).
        imagined: Imagined episodes per round of the model-based learning phase.
        real_per_round: Real evaluations per round (the imagined episodes with the best bound).
        optimism: Standard deviations of the surrogate added to its mean (exploration).
        screen: Refinement: neighbours scored by the surrogate per neighbour evaluated.
        race: Refinement: stop an evaluation once it cannot beat the incumbent (the proxy's
            racing, ``JPQEnv.race``), paired with the incumbent's per-image results.
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
    surrogate: bool = True
    imagined: int = 96
    real_per_round: int = 8
    optimism: float = 1.0
    screen: int = 8
    race: bool = True

    def __post_init__(self) -> None:
        """Refuse values the controller cannot run with, naming the field."""
        for name in (
            "hidden", "batch_episodes", "epochs", "refine_batch", "imagined", "real_per_round"
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(
                    f"TwoLevelConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        for name in ("elite", "screen"):
            if getattr(self, name) < 0:
                raise ValueError(f"TwoLevelConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not self.clip > 0:
            raise ValueError(f"TwoLevelConfig: lr and clip must be > 0, got {self.lr}, {self.clip}")
        if not 0.0 <= self.refine_fraction <= 1.0:
            raise ValueError(
                f"TwoLevelConfig.refine_fraction must be in [0, 1], got {self.refine_fraction}"
            )


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
    policy: Policy | None = None  # the applied policy (known once played to the end)
    mean: float = 0.0  # imagined: the surrogate's prediction and its spread
    std: float = 0.0
    origin: str = ""  # the phase that produced it (refinement: the phase its chain started in)


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
        self._evaluated: set[tuple[bytes, ...]] = set()
        if config.surrogate:
            self.surrogate = Surrogate(
                self._table(),
                float(search.evaluator.fp32_accuracy),
                floor=1.0 / max(self.base.task.num_classes, 1),
                seed=seed,
            )

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
            obs, _, _, _, info = env.step(channel_action(self.base, levels))
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
        if "reward_total" in info:  # played to the end (not on a capturing tape)
            ep.reward = float(info["reward_total"])
            ep.policy = self.base.last_policy
        return ep

    def _evaluate(
        self, plays: list[Callable[[gym.Env[np.ndarray, np.ndarray]], _T]]
    ) -> list[tuple[_T, dict[str, Any]]]:
        """Play each episode (``play(env)`` plays one on ``env``); what it returned, its record.

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
        return list(zip(outs, recorded, strict=True))

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
        # A sparsity sampled at exactly 0 or 1 (float32 underflow at extreme concentrations) has
        # log-probability -inf; clamped to the nearest interior floats it stays finite.
        lp_layer = layer.log_prob(t["u"].clamp(1e-30, 1.0 - 2**-24))
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
            if not torch.isfinite(loss):  # never a step that would turn the weights into NaN
                break
            self.opt.zero_grad()
            loss.backward()
            norm = nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            if not torch.isfinite(norm):  # a non-finite gradient (Beta's at a boundary): skip
                self.opt.zero_grad()
                break
            self.opt.step()
        # The learner's state for TensorBoard (jpq search writes it beside the episodes).
        self.search.scalar("two_level/loss", float(loss.detach()))
        self.search.scalar("two_level/entropy", float(entropy.detach()))
        self.search.scalar("two_level/return_mean", float(np.mean([e.reward for e in batch])))
        if self.elite:
            self.search.scalar("two_level/elite_best_return", self.elite[0].reward)

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

    def _learned(
        self, plans: list[list[LayerChoice] | None], origin: str = "learning"
    ) -> list[_Episode]:
        """Play and evaluate episodes (None: sampled from the controllers) and remember them."""
        played = self._evaluate([functools.partial(self._episode, fixed=plan) for plan in plans])
        for ep, record in played:
            ep.reward = float(record["reward"])
            ep.policy = self._policy_of(record)
            ep.origin = origin
            self._evaluated.add(self._key(ep.policy))
            self._remember(ep)
        return [ep for ep, _ in played]

    def _policy_of(self, record: dict[str, Any]) -> Policy:
        layers = tuple(
            LayerPolicy(p["name"], np.asarray(p["bits"]), p["act_bits"]) for p in record["policy"]
        )
        return Policy(layers, self.base.graph.fingerprint)

    @staticmethod
    def _key(policy: Policy) -> tuple[bytes, ...]:
        return tuple(
            np.int64(lp.act_bits).tobytes() + np.asarray(lp.bits).tobytes() for lp in policy.layers
        )

    def _candidate(
        self, choices: list[LayerChoice]
    ) -> Callable[[gym.Env[np.ndarray, np.ndarray]], list[LayerChoice]]:
        """An episode playing ``choices``; it returns the choices as applied."""

        def play_candidate(env: gym.Env[np.ndarray, np.ndarray]) -> list[LayerChoice]:
            play(env, choices, seed=self.seed)
            return self._replayed_choices(choices)

        return play_candidate

    # ---- model-based learning ---------------------------------------------------------------

    def _table(self) -> SensitivityTable:
        """The environment's sensitivity table (measured here if the env was built without)."""
        if self.base.sensitivity is not None:
            return self.base.sensitivity
        base = self.base
        space = base.space
        return measure_sensitivity(
            base.task,
            base.graph,
            base.bits,
            space.act_bits if base.decides_act else (),
            fixed_act=space.fixed_act,
            unprunable=[i for i in range(base.num_layers) if space.max_pruned(i) == 0],
            device=getattr(self.search.evaluator, "device", "cpu"),
        )

    def _fit(self) -> None:
        """Refit the surrogate to every complete real evaluation so far."""
        records = [r for r in self.search.records if r.get("proxy_complete", True)]
        if records:
            self.surrogate.fit(
                [self._policy_of(r) for r in records], [r["accuracy"] for r in records]
            )

    @contextmanager
    def _imagination(self) -> Iterator[SurrogateEvaluator]:
        """The environment, outside the search, scored by the surrogate (nothing is counted)."""
        base = self.base
        evaluator, design = base.evaluator, copy.deepcopy(base.reward_design)
        imagined = SurrogateEvaluator(
            self.surrogate, float(self.search.evaluator.fp32_accuracy), self.config.optimism
        )
        base.evaluator = imagined
        try:
            yield imagined
        finally:
            base.evaluator, base.reward_design = evaluator, design

    def _imagine(self, n: int) -> list[_Episode]:
        """``n`` episodes sampled from the controllers, scored by the surrogate, learned from."""
        out: list[_Episode] = []
        batch: list[_Episode] = []
        with self._imagination() as imagined:
            for _ in range(n):
                ep = self._episode(self.base)
                ep.mean, ep.std = imagined.last_mean, imagined.last_std
                out.append(ep)
                batch.append(ep)
                self.returns.append(ep.reward)
                if len(batch) == self.config.batch_episodes:
                    self._update(batch)
                    batch = []
        return out

    def _screened(self, plans: list[list[LayerChoice]], k: int) -> list[list[LayerChoice]]:
        """The ``k`` plans not evaluated yet with the best optimistic predicted reward."""
        scored = []
        with self._imagination():
            for plan in plans:
                ep = self._episode(self.base, fixed=plan)
                assert ep.policy is not None
                scored.append((ep.reward, ep.choices, self._key(ep.policy)))
        return self._top(scored, k)

    def _top(self, scored: list[tuple[float, Any, Any]], k: int) -> list[Any]:
        """The first ``k`` distinct, not yet evaluated items by score (stable among equals)."""
        seen = set(self._evaluated)
        picks = []
        for _, item, key in sorted(scored, key=lambda t: -t[0]):
            if key in seen:
                continue
            seen.add(key)
            picks.append(item)
            if len(picks) == k:
                break
        return picks

    def _model_based(self, until: int) -> None:
        """Rounds of: fit the surrogate, learn on imagined episodes, evaluate the best of them."""
        cfg = self.config
        while self.search.count < until:
            self._fit()
            imagined = self._imagine(cfg.imagined)
            wanted = min(cfg.real_per_round, until - self.search.count)
            scored = [
                (ep.reward, ep.choices, self._key(ep.policy))
                for ep in imagined
                if ep.policy is not None
            ]
            plans = self._top(scored, wanted)
            if not plans:  # every imagined episode was evaluated already: explore
                plans = [None] * wanted
            real = self._learned(plans)
            self._update(real)

    # ---- the search -------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.config
        total = self.search.settings.episodes
        refine_from = total - int(cfg.refine_fraction * total) if total >= 20 else total
        if cfg.warm_start:
            self.search.phase = "warm-start"
            n = self.base.num_layers
            plans: list[list[LayerChoice] | None] = []
            for w, act in level_pairs(self.base):  # the two-stage baseline's policies
                pruned = least_uniform_pruning(self.base, [w] * n, [act] * n)
                if pruned is not None:
                    plans.append(uniform_choices(self.base, pruned, [w] * n, [act] * n))
            # The warm start is played whole even when refinement would take every evaluation
            # (refine_fraction=1): refinement needs a policy to start from.
            refine_from = max(refine_from, min(len(plans), total))
            self._learned(plans[: max(refine_from - self.search.count, 0)], "warm-start")
        self.search.phase = "learning"
        if cfg.surrogate:
            self._model_based(refine_from)
        batch: list[_Episode] = []
        while self.search.count < refine_from:
            wanted = min(cfg.batch_episodes - len(batch), refine_from - self.search.count)
            batch += self._learned([None] * wanted)
            if len(batch) == cfg.batch_episodes:
                self._update(batch)
                batch = []
        self._refine(total)

    def _refine(self, total: int) -> None:
        """Local search around the best: rounds of neighbours, screened and raced if enabled."""
        cfg = self.config
        width = max(cfg.refine_batch, 1)
        evaluator = self.search.evaluator
        racing = cfg.race and hasattr(evaluator, "set_incumbent")
        try:
            while not self.search.done and self.best is not None:
                best = self.best
                self.search.phase = f"refinement:from-{best.origin.split(':')[-1] or 'learning'}"
                wanted = min(width, total - self.search.count)
                if cfg.surrogate and cfg.screen > 1:
                    if self.surrogate.fitted or self.search.records:
                        self._fit()
                    pool = [self._mutate(best.choices) for _ in range(wanted * cfg.screen)]
                    chosen = self._screened(pool, wanted) or pool[:wanted]
                else:
                    chosen = [self._mutate(best.choices) for _ in range(wanted)]
                if racing:
                    evaluator.set_incumbent(best.policy)
                    self.base.race(best.reward)
                try:
                    tried = self._evaluate([self._candidate(c) for c in chosen])
                finally:
                    self.base.race(None)
                for _, record in tried:
                    self._evaluated.add(self._key(self._policy_of(record)))
                complete = [(c, r) for c, r in tried if r.get("proxy_complete", True)]
                if not complete:
                    continue
                choices, record = max(complete, key=lambda cr: float(cr[1]["reward"]))
                reward = float(record["reward"])
                if reward > best.reward or (cfg.accept_ties and reward == best.reward):
                    origin = (
                        best.origin
                        if best.origin.startswith("refinement")
                        else (f"refinement:{best.origin}")
                    )
                    self.best = _Episode(
                        choices=choices,
                        reward=reward,
                        policy=self._policy_of(record),
                        origin=origin,
                    )
        finally:
            if racing:
                evaluator.set_incumbent(None)

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
