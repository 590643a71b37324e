"""Algorithm views of the JPQ environment.

The environment itself is the **native hierarchical interface**: two steps per layer (the layer
decision, then the channel decision conditioned on it), actions in a normalised ``Box(-1, 1)``,
and public helpers (``kernel_importance``, ``encode_levels``, ``current_layer``, ``phase``) for
agents that act per kernel, such as the two-level controller.

Flat algorithms learn more easily with one step per layer, so the views here fold both decisions
of a layer into one action:

- ``FlatBoxView``: ``Box(-1, 1, (1 + G,))``, for DDPG, TD3, SAC and PPO;
- ``MultiDiscreteView``: ``MultiDiscrete([sparsity levels, G x widths])`` with an
  ``action_masks()`` method, for PPO and sb3-contrib's MaskablePPO.

Both keep the native observation (taken at each layer decision), the final ``info`` and the
reward (the sum of the two native steps' rewards). Both record their constructor arguments
(``gymnasium.utils.RecordConstructorArgs``), so ``env.spec.make()`` re-creates a view, and
wrappers between a view and the environment count one step per layer, as the agent does.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

from jpq_env import validation as check
from jpq_env.envs.budget import wall_layer
from jpq_env.envs.jpq import LAYER, JPQEnv
from jpq_env.errors import ArgumentError

__all__ = ["FlatBoxView", "MultiDiscreteView"]


def _jpq(env: gym.Env[Any, Any]) -> JPQEnv:
    base = env.unwrapped
    if not isinstance(base, JPQEnv):
        raise TypeError(f"this view wraps a JPQEnv, got {type(base).__name__}")
    return base


class _LayerStep(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """One step per layer on the native environment: its layer step, then its channel step.

    The views put it directly above the ``JPQEnv``, so that every wrapper between a view and the
    environment (SB3's ``Monitor``, gymnasium's ``TimeLimit`` and episode statistics) counts the
    agent's steps, one per layer, and sees both native rewards summed into one.
    """

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray]) -> None:
        super().__init__(env)
        self.jpq = _jpq(env)

    @property
    def spec(self) -> EnvSpec | None:  # type: ignore[override]
        """The environment's spec: this fold is part of the view, not a wrapper of its own."""
        return self.env.spec

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Take the layer decision and the channel decision of one layer."""
        if self.jpq.phase != LAYER:
            raise RuntimeError("the wrapped environment is not at a layer decision")
        _, r1, terminated, truncated, info1 = self.env.step(action)
        if terminated or truncated:
            raise RuntimeError("the episode ended on a layer decision")
        obs, r2, terminated, truncated, info = self.env.step(action)
        info = {**{f"layer_{k}": v for k, v in info1.items() if k.startswith("applied_")}, **info}
        return obs, float(r1) + float(r2), terminated, truncated, info


def _fold_layer_steps(env: gym.Env[np.ndarray, np.ndarray]) -> gym.Env[np.ndarray, np.ndarray]:
    """``env`` with a ``_LayerStep`` inserted once, as low as allowed.

    The fold goes directly above the ``JPQEnv``, or directly above the topmost wrapper that sets
    ``native_steps = True`` (one that must see the native steps, such as a recorder of the
    native reward).
    """
    base = _jpq(env)
    chain: list[Any] = []
    node: Any = env
    while node is not base:
        if isinstance(node, _LayerStep):
            return env  # folded already
        chain.append(node)
        node = node.env
    below = next((i for i, w in enumerate(chain) if getattr(w, "native_steps", False)), len(chain))
    if below == 0:
        return _LayerStep(env)
    chain[below - 1].env = _LayerStep(chain[below - 1].env)
    return env


class _PerLayerView(gym.Wrapper[np.ndarray, Any, np.ndarray, np.ndarray]):
    """Shared machinery: one step of the view is the layer step then the channel step.

    Wrappers between the view and the environment (SB3's ``Monitor`` that ``make_vec_env`` puts
    below ``wrapper_class``) see those two native steps as one: the view inserts its fold
    (``_LayerStep``) directly above the ``JPQEnv``.
    """

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray]) -> None:
        super().__init__(_fold_layer_steps(env))
        self.jpq = _jpq(env)

    def _native(self, action: Any) -> np.ndarray:
        raise NotImplementedError

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Take the layer decision and the channel decision of one layer."""
        return self.env.step(self._native(action))


class FlatBoxView(_PerLayerView, gym.utils.RecordConstructorArgs):
    """One step per layer with a flat ``Box(-1, 1)`` action: the layer's decisions, then the widths.

    The layout follows the environment (``JPQEnv.action_size`` entries, the native layout):

    - ``JPQWeights-v0`` (weights only): ``Box(1 + G)``: entry 0 the sparsity, entries 1..G the
      weight width of each importance group (G = ``channel_groups``);
    - ``JPQWeightsActs-v0`` (the default id; activation widths decided too): ``Box(2 + G)``:
      entry 0 the sparsity, entry 1 the layer's input activation width, entries 2..G+1 the
      weight widths.

    Each entry in [-1, 1] is decoded as the native environment decodes it (``JPQEnv``:
    ``encode_levels`` gives the action for chosen levels): the sparsity linearly in
    ``[0, max_sparsity]``, a width as the level ``min(floor((a + 1) / 2 * n), n - 1)`` of its
    list of ``n`` (equal bins).
    The view plays the layer decision and the channel decision of one layer in one step (the
    layer entries at the first native step, the widths at the second), so an episode has one
    step per layer.
    """

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray]) -> None:
        """Wrap ``env`` (a JPQ environment, or a wrapper of one); the action space is its own."""
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        self.action_space = env.action_space

    def _native(self, action: Any) -> np.ndarray:
        return check.array(action).astype(np.float32)


class MultiDiscreteView(_PerLayerView, gym.utils.RecordConstructorArgs):
    """One step per layer with a ``MultiDiscrete`` action and action masks.

    Action ``[s, w_1, ..., w_G]`` on ``JPQWeights-v0``, ``[s, a, w_1, ..., w_G]`` on
    ``JPQWeightsActs-v0`` (the default id: 2 + G entries): ``s`` picks a sparsity among
    ``sparsity_levels`` evenly spaced values from 0 to ``max_sparsity``; ``a`` (when activation
    widths are decided) the layer's input width from the environment's ``act_bits``; ``w_g`` the
    weight width of importance group ``g`` from its ``bits``. ``action_masks()`` (the method
    MaskablePPO calls) rules out sparsity levels the forward wall would overrule anyway (too
    little pruning to stay within budget; any pruning of an output or pinned layer) and, for
    pinned layers, every width but the first.

    Args:
        env: A JPQ environment (or a wrapper of one) with importance groups (``channel_groups >
            0``).
        sparsity_levels: Number of sparsity choices (default 9: 0, 0.1, ..., 0.8 by default).
    """

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray], sparsity_levels: int = 9) -> None:
        """Wrap ``env``; ``sparsity_levels`` sparsity choices (see the class docstring)."""
        gym.utils.RecordConstructorArgs.__init__(self, sparsity_levels=sparsity_levels)
        super().__init__(env)
        if self.jpq.per_kernel:
            raise ArgumentError("MultiDiscreteView needs importance groups: set channel_groups > 0")
        if sparsity_levels < 1:
            raise ArgumentError(f"sparsity_levels must be at least 1, got {sparsity_levels}")
        self.sparsity_levels = sparsity_levels
        n_bits = len(self.jpq.bits)
        acts = [len(self.jpq.space.act_bits)] if self.jpq.decides_act else []
        self._nvec = np.array([sparsity_levels, *acts] + [n_bits] * self.jpq.channel_slots)
        self.action_space = spaces.MultiDiscrete(self._nvec)

    def _native(self, action: Any) -> np.ndarray:
        a = check.array(action)
        if a.shape != self._nvec.shape or not np.issubdtype(a.dtype, np.integer):
            raise ArgumentError(
                f"action must be {self._nvec.size} integers, got {a.dtype} {a.shape}"
            )
        nvec = self._nvec
        if (a < 0).any() or (a >= nvec).any():
            raise ArgumentError(f"action {a.tolist()} outside {nvec.tolist()}")
        sparsity = self._sparsity_value(int(a[0]))
        if self.jpq.decides_act:
            act = self.jpq.encode_levels(a[1:2], len(self.jpq.space.act_bits))
            return np.concatenate(
                [[sparsity], act, self.jpq.encode_levels(a[2:], len(self.jpq.bits))]
            ).astype(np.float32)
        return np.concatenate(
            [[sparsity], self.jpq.encode_levels(a[1:], len(self.jpq.bits))]
        ).astype(np.float32)

    def _sparsity_value(self, level: int) -> np.float32:
        """The native action entry of sparsity level ``level``."""
        return np.float32(2.0 * level / max(self.sparsity_levels - 1, 1) - 1.0)

    def action_masks(self) -> np.ndarray:
        """Valid choices of each action dimension, concatenated (MaskablePPO's format)."""
        jpq = self.jpq
        layer = jpq.current_layer
        n_bits = len(jpq.bits)
        sparsity_mask = np.ones(self.sparsity_levels, dtype=bool)
        bits_mask = np.ones((jpq.channel_slots, n_bits), dtype=bool)
        if 0 <= layer < jpq.num_layers:
            space = jpq.space
            values = [self._sparsity_value(j) for j in range(self.sparsity_levels)]
            # decoded exactly as the environment decodes the action
            pruned = np.array([jpq.pruned_for(layer, float(v)) for v in values])
            if space.max_pruned(layer) == 0:
                sparsity_mask[1:] = False
            elif jpq.enforcement == "wall":
                act = space.act_for(layer, space.act_bits[-1])
                least, _ = wall_layer(space, jpq.budget, jpq.decisions, layer, 0, act)
                sparsity_mask = pruned >= least
                if not sparsity_mask.any():
                    sparsity_mask[-1] = True
            if layer in space.pinned_bits:
                bits_mask[:, 1:] = False
        acts: list[np.ndarray] = []
        if jpq.decides_act:
            act_mask = np.ones(len(jpq.space.act_bits), dtype=bool)
            if 0 <= layer < jpq.num_layers and layer in jpq.space.fixed_act:
                act_mask[:-1] = False  # the network input's width is fixed: one choice stands
            acts.append(act_mask)
        return np.concatenate([sparsity_mask, *acts, bits_mask.ravel()])
