"""Playing one episode of the two-level controller, and the transitions it keeps.

An episode alternates the environment's two steps per layer: the layer decision (sparsity, and
the activation width when the environment decides it), then the channel decision (one weight
width per importance group of the kept kernels). Each is either sampled from the controllers or
taken from fixed choices (the warm start's policies, refinement's neighbours).

What is stored is what the environment *applied*, read back from it after each step, not what
was proposed: the budget wall may prune more or lower widths, and learning from the proposal
would credit the controllers with decisions that never ran. The applied decisions are also
turned back into ``LayerChoice`` values, so an episode can be replayed or mutated exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from jpq_env import Policy
from jpq_env.core.quant import FULL_PRECISION
from jpq_env.envs import JPQEnv

from ..play import LayerChoice, channel_action, layer_action, play
from .controller import GROUP_FEATURES, TwoLevelController

__all__ = ["Episode", "EpisodePlayer"]

_EPS = 1e-4  # the stored sparsity stays this far inside (0, 1), where the Beta is finite


_GROUPS_KEPT = 4096  # (layer, kept kernels) pairs whose group features a player keeps


@dataclass
class Episode:
    """One episode: per layer, the observations and the applied decisions, and its outcome."""

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


class EpisodePlayer:
    """Plays episodes with the controllers, or fixed choices, and reads back what was applied.

    Args:
        base: The JPQ environment (unwrapped): its layers, decision space and applied decisions.
        net: The controllers to sample from.
        acts: The activation widths the environment decides among, in bits (empty: none).
        seed: Seed of every episode's reset.
    """

    def __init__(
        self, base: JPQEnv, net: TwoLevelController, acts: tuple[int, ...], seed: int
    ) -> None:
        self.base = base
        self.net = net
        self.acts = acts
        self.seed = seed
        self.slots = base.channel_slots
        self._groups: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, list[np.ndarray]]] = {}
        # A width's level; 0 for 0 bits and for widths outside the choices (a pinned layer's).
        level_of = np.zeros(max(*base.bits, FULL_PRECISION) + 1, dtype=np.int64)
        level_of[list(base.bits)] = np.arange(len(base.bits))
        self._level_of = level_of

    def groups(self, layer: int, kept: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Features ``(slots, F)``, a validity mask and the kernel indices of each group.

        The same for every episode (the ranking is fixed): computed once per layer and kept
        kernels, and shared by every episode (not to be modified).
        """
        key = (layer, kept)
        if key not in self._groups:
            if len(self._groups) >= _GROUPS_KEPT:  # per-kernel slots on a wide network: bounded
                self._groups.clear()
            feats, mask, parts = self._group_features(layer, kept)
            mask.flags.writeable = False  # (feats stays writable: torch.as_tensor warns otherwise)
            self._groups[key] = (feats, mask, parts)
        return self._groups[key]

    def _group_features(
        self, layer: int, kept: int
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        importance = self.base.kernel_importance(layer)[:kept]
        parts = self.base.space.groups(kept)
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

    def episode(
        self, env: gym.Env[np.ndarray, np.ndarray], fixed: list[LayerChoice] | None = None
    ) -> Episode:
        """Play one episode on ``env``, sampled from the controllers unless ``fixed`` is given.

        Its reward and policy are filled in when the episode is evaluated to the end; on a
        capturing tape (``jpq_agents.batch``) it ends unevaluated and the caller fills them in.
        """
        ep = Episode()
        obs, _ = env.reset(seed=self.seed)
        info: dict[str, Any] = {}
        for layer in range(self.base.num_layers):
            choice = None if fixed is None else fixed[layer]
            obs, n_pruned = self._layer_step(env, ep, layer, obs, choice)
            obs, info = self._channel_step(env, ep, layer, obs, n_pruned, choice)
        if "reward_total" in info:  # played to the end (not on a capturing tape)
            ep.reward = float(info["reward_total"])
            ep.policy = self.base.last_policy
        return ep

    def _layer_step(
        self,
        env: gym.Env[np.ndarray, np.ndarray],
        ep: Episode,
        layer: int,
        obs: np.ndarray,
        fixed: LayerChoice | None,
    ) -> tuple[np.ndarray, int]:
        """Play the layer decision; record it as applied; the next observation and kernels cut."""
        k = self.base.graph.layers[layer].out_channels
        if fixed is None:
            with torch.no_grad():
                o = torch.as_tensor(obs)[None]
                u = float(self.net.sparsity(o).sample()[0])
                act = int(self.net.activations(o).sample()[0]) if self.acts else None
            action = layer_action(self.base, layer, 0, act)
            action[0] = np.float32(2 * u - 1)
        else:
            action = layer_action(self.base, layer, fixed.n_pruned, fixed.act_level)
        next_obs, _, _, _, info = env.step(action)
        n_pruned = int(info["applied_pruned"])
        top = max(self.base.space.max_sparsity * k, 1e-9)
        ep.layer_obs.append(obs)
        ep.layer_u.append(float(np.clip(n_pruned / top, _EPS, 1 - _EPS)))
        return next_obs, n_pruned

    def _channel_step(
        self,
        env: gym.Env[np.ndarray, np.ndarray],
        ep: Episode,
        layer: int,
        obs: np.ndarray,
        n_pruned: int,
        fixed: LayerChoice | None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Play the channel decision; record it and the layer's choice as applied."""
        k = self.base.graph.layers[layer].out_channels
        feats, mask, parts = self.groups(layer, k - n_pruned)
        if fixed is None:
            with torch.no_grad():
                dist = self.net.widths(torch.as_tensor(obs)[None], torch.as_tensor(feats)[None])
                levels = dist.sample()[0].numpy()
        else:
            levels = np.zeros(self.slots, dtype=np.int64)
            levels[: len(fixed.levels)] = fixed.levels
        next_obs, _, _, _, info = env.step(channel_action(self.base, levels))
        applied = self.applied_levels(layer, parts, levels)
        ep.chan_obs.append(obs)
        ep.chan_groups.append(feats)
        ep.chan_mask.append(mask)
        ep.chan_levels.append(applied)
        act_level = self.applied_act(layer)
        ep.layer_act.append(0 if act_level is None else act_level)
        ep.layer_act_mask.append(act_level is not None and layer not in self.base.space.fixed_act)
        levels_applied = tuple(int(x) for x in applied[: len(parts)])
        ep.choices.append(LayerChoice(n_pruned, levels_applied, act_level))
        return next_obs, info

    def applied_act(self, layer: int) -> int | None:
        """Activation level the layer actually got (None when activations are not decided)."""
        decision = self.base.decisions[layer]
        if not self.acts or decision is None:
            return None
        # The fixed network-input width may lie outside the choices: take the nearest below.
        below = [i for i, a in enumerate(self.acts) if a <= decision.act_bits]
        return below[-1] if below else 0

    def applied_levels(
        self, layer: int, parts: list[np.ndarray], proposed: np.ndarray
    ) -> np.ndarray:
        """Width level each group actually got (the budget wall may have lowered some)."""
        decision = self.base.decisions[layer]
        applied = proposed.copy()
        if decision is None:
            return applied
        levels = self._level_of[decision.ranked_bits]
        for g, part in enumerate(parts[: self.slots]):
            if part.size:  # the group's mean level, rounded half to even
                applied[g] = round(int(levels[part].sum()) / part.size)
        return applied

    def replayed_choices(self, proposed: list[LayerChoice]) -> list[LayerChoice]:
        """The choices as applied (the wall may have changed what was proposed)."""
        out = []
        for layer, choice in enumerate(proposed):
            decision = self.base.decisions[layer]
            n_pruned = decision.n_pruned if decision else choice.n_pruned
            act = self.applied_act(layer) if decision else choice.act_level
            out.append(LayerChoice(n_pruned, choice.levels, act))
        return out

    def candidate(
        self, choices: list[LayerChoice]
    ) -> Callable[[gym.Env[np.ndarray, np.ndarray]], list[LayerChoice]]:
        """An episode playing ``choices``; it returns the choices as applied."""

        def play_candidate(env: gym.Env[np.ndarray, np.ndarray]) -> list[LayerChoice]:
            play(env, choices, seed=self.seed)
            return self.replayed_choices(choices)

        return play_candidate
