"""The JPQ environment: compress a network layer by layer, pruning and quantizing it jointly."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from jpq_env import validation as check
from jpq_env.core.costs import CostReport, measure, totals
from jpq_env.core.graph import LayerGraph
from jpq_env.core.importance import IMPORTANCE, ranked_importance
from jpq_env.core.policy import Conventions, Policy
from jpq_env.core.quant import SUPPORTED_BITS
from jpq_env.envs.budget import ENFORCEMENT, Budget, lower_backwards, wall_channels, wall_layer
from jpq_env.envs.decisions import DecisionSpace, LayerDecision
from jpq_env.envs.observation import FEATURES, N_STATIC, DecisionFeatures, static_features
from jpq_env.envs.render import ansi_table, bits_frame
from jpq_env.envs.rewards import Outcome, RewardDesign, least_accuracy_reaching, make_reward
from jpq_env.errors import ArgumentError
from jpq_env.proxy.evaluator import Evaluator, LocalEvaluator, as_evaluator
from jpq_env.proxy.sensitivity import SensitivityTable, measure_sensitivity
from jpq_env.tasks import Task, load_task

__all__ = ["LAYER", "CHANNEL", "JPQEnv"]

LAYER, CHANNEL = 0, 1
_ACTION_TOLERANCE = 1e-6


def _check_bits(name: str, values: Sequence[int], low: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ArgumentError(f"{name} must be a list of integer widths, got {values!r}")
    vals = list(values)
    if not vals:
        raise ArgumentError(f"{name} must not be empty")
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in vals):
        raise ArgumentError(f"{name} must be integers, got {vals}")
    if len(set(vals)) != len(vals):
        raise ArgumentError(f"{name} has duplicates: {vals}")
    bad = [v for v in vals if v < low or v not in SUPPORTED_BITS]
    if bad:
        raise ArgumentError(f"{name} {bad} outside the supported widths {low}-16 and 32")
    return tuple(sorted(int(v) for v in vals))


MAX_CHANNEL_GROUPS = 256
"""Importance groups allowed beyond the widest layer's kernels (more would only be empty)."""


class JPQEnv(gym.Env[np.ndarray, np.ndarray]):
    """Joint pruning and quantization of a PyTorch network as a sequential decision problem.

    ## Description

    An agent compresses a network one compressible layer (``nn.Conv2d`` incl. grouped and
    depthwise, ``nn.Linear``) at a time, in execution order. Each layer takes two decisions, the
    hierarchy of AJPQ: first a **layer decision**, the layer's sparsity (the share of its output
    kernels that get 0 bits, the least important ones by the importance criterion), then a
    **channel decision**, a weight bit-width for each remaining kernel (per importance group by
    default). Pruning is quantization to 0 bits, so one mixed-precision policy covers both. When
    every layer is decided, the compressed network is scored by the accuracy proxy (held-out split,
    BatchNorm re-calibrated) and its BOPs and size are counted.

    ## Action Space

    ``Box(-1, 1, (L + G,), float32)`` with ``L`` layer entries (1, or 2 when activation widths are
    decided); a step reads only the entries of its phase, each mapped from
    [-1, 1] to [0, 1] first:

    - layer phase: entry 0 is the sparsity as a fraction of ``max_sparsity``; with a set of
      ``act_bits`` (JPQWeightsActs), entry 1 picks the width of the layer's input activations
      from it;
    - channel phase: entries L..L+G-1 pick, for each importance group of the remaining kernels
      (most important first), a width from ``bits`` (ascending: [0, 1/n) -> the smallest, ...).
      ``channel_groups=0`` gives one entry per kernel of the widest layer (kernels in importance
      order; entries beyond a layer's kernels are ignored).

    Algorithm views over this interface (one step per layer, flat Box, MultiDiscrete with action
    masks) live in ``jpq_env.envs.wrappers``.

    ## Observation Space

    ``Box(0, 1, (24,), float32)``: the current layer's static features (index, linear or conv,
    depthwise, in and out channels, kernel size, stride, feature-map size, parameters, MACs,
    output layer, pinned layer; counts on a log scale normalised over the network), then the phase
    (0 layer, 1 channel), the chosen sparsity and activation width during the channel phase,
    progress through the layers, the previous layer's sparsity and mean weight width, the mean
    sparsity and mean weight width of all decided layers, and for
    BOPs and size the budget used by decided layers (and by the layers jpq-env does not compress,
    a fixed cost) and the budget left after the cheapest possible rest, each squashed as
    ``x / (1 + x)`` (0.5 means exactly the budget).
    ``jpq_env.envs.observation.FEATURES`` names the entries. With ``sensitivity=True`` the
    current layer's sensitivities follow (``SensitivityTable.features``: one entry per weight
    width, per measured sparsity and per activation width).

    ## Rewards

    By default the reward comes once, at the last step: a reward design (``reward``, see
    ``jpq_env.envs.rewards``: ``amc``, ``haq``, ``galen``, ``galen-r7``, ``mnasnet``, ``lagrangian``
    or your own) applied to the accuracy and costs. Every term is in the final ``info`` as
    ``reward_<term>``. ``shaping > 0`` adds potential-based per-step shaping with potential
    ``-shaping * (projected BOPs / budget)``; it telescopes over an episode, so it does not change
    which policies are optimal (Ng et al., 1999).

    ## Starting State

    The first layer's layer decision with nothing decided. The environment has no randomness:
    an episode is determined by its actions, and the same actions give the same numbers.

    ## Episode End

    Terminated after the channel decision of the last layer (``2 x layers`` steps). Never
    truncated. Stepping after termination or before ``reset`` raises.

    ## Info

    Every step's ``info`` holds ``layer`` (the index of the layer decided next; the number of
    layers once terminated), ``layer_name`` and ``phase`` (``"layer"`` or ``"channel"``, the next
    decision's); ``reset`` returns the same three. Besides:

    - after a layer decision: ``kernels`` (the layer's output kernels), ``proposed_pruned`` and
      ``applied_pruned`` (kernels pruned as the action asked and after the forward wall, counts),
      ``proposed_sparsity`` and ``applied_sparsity`` (the same as fractions of ``kernels``),
      ``proposed_act_bits`` and ``applied_act_bits`` (the layer's input activation width, bits);
    - after a channel decision: ``proposed_mean_bits`` and ``applied_mean_bits`` (mean weight
      width of the kept kernels, bits), and with the sensitivity table (``sensitivity`` or
      ``error_shaping``) ``layer_kl`` (the decision's estimated KL divergence at the output, nats)
      and ``predicted_fidelity`` (``exp(-sum of the decided layers' layer_kl)``, in (0, 1]);
    - with ``shaping`` or ``error_shaping``: ``reward_shaping`` (this step's shaping reward);
    - at the last step: the proxy's ``accuracy`` and ``accuracy_fp32`` (fractions in [0, 1] on
      the held-out split), ``bops`` and ``bops_fp32`` (bit operations per sample), ``bops_ratio``
      and ``size_ratio`` (fractions of FP32), ``size_bits`` (bits of the kept weights),
      ``budget_met`` (bool), ``proxy_images`` and ``proxy_complete`` (images scored, and False
      when racing stopped the evaluation early), ``policy`` (per layer ``name``, ``sparsity``,
      ``act_bits`` and ``bits``, a width per kernel in channel order, 0 = pruned: the applied
      policy, ``Policy.from_layers`` reads it) and every term of the reward as ``reward_<term>``
      (``reward_total`` is the reward).

    ## What agents may read: the decision space and the episode

    ``space`` (``jpq_env.envs.decisions.DecisionSpace``) is the problem as agents program
    against it: what a layer may take (``bits``, ``act_bits``, ``max_sparsity``,
    ``max_pruned(layer)``, ``n_pruned(layer, sparsity)``, ``pinned_bits``, ``fixed_act``), how a
    channel decision's importance groups cover a layer's kernels (``channel_slots``,
    ``per_kernel``, ``group_sizes(kept)``, ``groups(kept)``, ``kernel_levels(levels, kept)``), the
    decision and policy a choice makes (``decision``, ``policy``) and what decisions cost
    (``ratios``, ``layer_costs``, ``counts``, ``fits(budget, decisions)``). The environment
    also exposes ``graph`` (the layer graph), ``task``, ``budget``, ``bits``, ``decides_act``,
    ``layer_slots``, ``action_size``, ``observation_size``, ``num_layers``, ``current_layer``,
    ``phase``, ``decisions`` (the applied decisions so far), ``last_policy`` and ``last_cost``
    (the finished episode's), ``kernel_importance(layer)`` (importance in ranked order, in
    [0, 1]), ``encode_levels`` and ``pruned_for`` (actions for given choices), ``sensitivity``
    (the table, when measured), ``race(reward)`` and ``race_accuracy(score)`` (below), and
    ``evaluator`` and
    ``reward_design``, which an agent may replace (and restore) to score imagined episodes. These
    are the environment's public interface, kept stable like its spaces; anything else
    (underscored names) is internal.

    ## Arguments

    ```python
    import gymnasium as gym
    import jpq_env

    env = gym.make("jpq_env/JPQWeights-v0", budget_bops=1 / 64, reward="galen", enforcement="wall")
    obs, info = env.reset(seed=0)
    ```

    - ``task``: built-in name (``"digits"``, ``"digits-deep"``, ``"resnet18-cifar"`` ... see
      ``jpq_env.tasks.BUILTIN_TASKS``) or ``"package.module:factory"``
      (or a ``Task`` object from Python, e.g. from ``jpq_env.make_task``).
    - ``task_options``: keyword arguments of the task factory, e.g. ``{"data": "~/cifar",
      "weights": "resnet18.pt"}`` for the vision tasks (``jpq_env.tasks.vision``).
    - ``reward``: reward design name or ``RewardDesign`` instance (default ``"galen"``: accuracy
      minus ``5 * |cost / target - 1|``, so a policy well *under* the budget is penalised too;
      ``"galen-r7"`` penalises only overruns; see ``jpq_env.envs.rewards``).
    - ``budget_bops``, ``budget_size``: targets as fractions of FP32 in (0, 1] (None: no target;
      default BOPs 1/64, size none). A budget that even the cheapest decisions exceed is refused.
    - ``bits``: weight widths of kept kernels (default 2, 3, 4, 5, 6, 8).
    - ``act_bits``: activation width of every layer input (default 8), or a set of widths to make
      it a layer decision (entry 1 of the action, JPQWeightsActs-v0); the network input is counted
      at ``input_bits`` either way.
    - ``max_sparsity``: largest share of a layer's kernels that may be pruned (default 0.8).
    - ``channel_groups``: importance groups per channel decision (default 4; 0 = per kernel).
    - ``importance``: kernel ranking criterion, ``"l1"`` or ``"l2"`` or a registered one.
    - ``enforcement``: ``"wall"`` (default; AMC), ``"lowering"`` (HAQ) or ``"none"``.
    - ``bn_recalibration``: re-estimate BatchNorm statistics in the proxy (default True).
    - ``input_bits``, ``first_last_bits``: counting conventions (``jpq_env.Conventions``).
    - ``shaping``: per-step potential-based shaping coefficient on the projected BOPs (default 0:
      terminal only).
    - ``sensitivity``: append the current layer's sensitivities (``jpq_env.proxy.sensitivity``: what
      each width, sparsity and activation width of this layer alone costs at the output,
      measured once per task and cached) to the observation, and report each channel step's
      ``layer_kl`` and the episode's ``predicted_fidelity`` in ``info`` (default False).
    - ``error_shaping``: coefficient of a potential-based shaping term on that prediction:
      potential ``error_shaping * (exp(-sum of the decided layers' KL) - 1)``, so each decision
      is told at once what it is estimated to cost; it telescopes to zero over an episode, so the
      optimal policies stay the same (implies the measurement, not the observation features).
    - ``evaluator``: an object with ``fp32_accuracy`` and ``accuracy(policy)``; default a
      ``LocalEvaluator`` on the task.
    - ``device``: where the default evaluator runs the proxy: ``"auto"`` (CUDA when available,
      else CPU), ``"cpu"`` or ``"cuda"``.
    - ``render_mode``: ``"ansi"`` for a per-layer table of decisions and costs, ``"human"`` to
      print that table to the terminal (no window, no pygame), ``"rgb_array"`` for a small image
      of them (one bar per layer, see ``jpq_env.envs.render``; what SB3's ``make_vec_env`` and
      video recorders ask for). Any other mode is refused with this list.
    - ``metric``: what the default evaluator scores: ``"top1"`` (default), ``"agreement"`` with
      the FP32 model's predictions, or ``"kl"`` (``exp(-KL)`` to the FP32 model's outputs); see
      ``jpq_env.proxy.evaluator``.
    - ``val_images``: score only this many held-out images (a lower fidelity; default all).

    ## Racing

    An agent that only needs to know whether an episode beats a reward it already has (a local
    search around its incumbent) calls ``race(reward)`` before playing it: the evaluation then stops
    as soon as the proxy is confident that the episode's reward stays below ``reward`` (see
    ``jpq_env.proxy.racing``), and the final ``info`` says so (``proxy_complete`` False,
    ``proxy_images`` the images scored). ``race(None)`` goes back to complete evaluations.
    ``race_accuracy(score)`` races against a score instead (a search races every evaluation
    against its best policy's, ``jpq_agents.search.RunSettings.fidelity``); a reward target set
    with ``race`` takes precedence while it is set. Evaluators without racing (a Ray pool)
    always evaluate completely.

    Every argument is checked before any work (``jpq_env.validation``): a ``ValueError`` names
    the argument, the value and what is allowed (``bool`` is not an integer, a flag is only
    ``True`` or ``False``, NaN and inf are not numbers). Layers of the model that jpq-env does not
    compress are counted at FP32 in every cost and in the FP32 reference (``graph.uncompressed``);
    a budget they alone exceed is refused as infeasible.

    ## Version History

    Ids name the problem; ``-vN`` counts revisions of the same problem.

    - ``JPQWeights-v0`` (formerly ``JPQ-v0``): weights-only decisions (AJPQ): sparsity
      then per-group weight widths, activations fixed.
    - ``JPQWeightsActs-v0`` (formerly ``JPQ-v1``): the layer decision also picks the
      layer's input activation width (``act_bits`` a set).
    """

    metadata = {"render_modes": ["ansi", "human", "rgb_array"], "render_fps": 4}  # noqa: RUF012 - Gymnasium's convention

    def __init__(
        self,
        task: str | Task = "digits",
        reward: str | RewardDesign = "galen",
        budget_bops: float | None = 1 / 64,
        budget_size: float | None = None,
        bits: Sequence[int] = (2, 3, 4, 5, 6, 8),
        act_bits: int | Sequence[int] = 8,
        max_sparsity: float = 0.8,
        channel_groups: int = 4,
        importance: str = "l1",
        enforcement: str = "wall",
        bn_recalibration: bool = True,
        input_bits: int | None = 8,
        first_last_bits: int | None = None,
        shaping: float = 0.0,
        evaluator: Evaluator | None = None,
        task_options: dict[str, Any] | None = None,
        device: str = "auto",
        render_mode: str | None = None,
        metric: str = "top1",
        val_images: int | None = None,
        sensitivity: bool = False,
        error_shaping: float = 0.0,
    ) -> None:
        super().__init__()
        self.render_mode = check.choice(
            "render_mode", render_mode, [*self.metadata["render_modes"], None]
        )
        self.enforcement = check.choice("enforcement", enforcement, ENFORCEMENT)
        importance = check.choice("importance criterion", importance, list(IMPORTANCE))
        max_sparsity = check.number("max_sparsity", max_sparsity, low=0.0, high=1.0, high_open=True)
        channel_groups = check.integer("channel_groups", channel_groups, low=0)
        self.shaping = check.number("shaping", shaping, low=0.0)
        bn_recalibration = check.flag("bn_recalibration", bn_recalibration)
        task_options = check.mapping("task_options", task_options)
        custom = None if evaluator is None else as_evaluator(evaluator)
        sensitivity = check.flag("sensitivity", sensitivity)
        self.error_shaping = check.number("error_shaping", error_shaping, low=0.0)
        metric = check.choice("metric", metric, ["top1", "agreement", "kl"])
        self.bits = _check_bits("bits", bits, 1)
        act_choices = _check_bits(
            "act_bits", [act_bits] if isinstance(act_bits, (int, np.integer)) else act_bits, 1
        )
        self.budget = Budget(budget_bops, budget_size)
        self.reward_design = make_reward(reward)
        self.reward_design.reset()
        self.conventions = Conventions(input_bits=input_bits, first_last_bits=first_last_bits)
        self.importance = importance  # the criterion the kernels are ranked by
        self.bn_recalibration = bn_recalibration

        self.task = load_task(task, **task_options)
        self.graph = LayerGraph.from_module(self.task.model, self.task.example_input)
        self.evaluator = custom or LocalEvaluator(
            self.task,
            self.graph,
            bn_recalibration=bn_recalibration,
            device=device,
            metric=metric,
            val_images=val_images,
        )
        self.space = self._decision_space(importance, act_choices, max_sparsity, channel_groups)
        self._check_budget(max_sparsity, act_choices)
        self.sensitivity: SensitivityTable | None = None
        if sensitivity or self.error_shaping:
            self.sensitivity = self._measure_sensitivity(importance, bn_recalibration)
        self._sens_features = sensitivity
        self._check_groups(channel_groups)
        # A set of activation widths makes them a layer decision (entry 1 of the action).
        self.decides_act = len(act_choices) > 1
        self.layer_slots = 2 if self.decides_act else 1
        self.action_space = spaces.Box(
            -1.0, 1.0, (self.layer_slots + self.channel_slots,), np.float32
        )
        extra = self.sensitivity.size if self._sens_features and self.sensitivity else 0
        self.observation_space = spaces.Box(0.0, 1.0, (len(FEATURES) + extra,), np.float32)
        self._static = static_features(self.graph, set(self.space.pinned_bits))
        self._race_target: float | None = None
        self._race_accuracy: float | None = None
        self._layer = -1  # -1: not reset; len(graph): terminated
        self._phase = LAYER
        self._decisions: list[LayerDecision | None] = []
        self._pending: tuple[int, int] | None = None  # (n_pruned, act_bits) of the layer phase
        self._features = DecisionFeatures(self.space, self.budget)
        self._potential = 0.0
        self._decided_kl = 0.0  # sum of the sensitivity contributions of the decided layers
        self.last_policy: Policy | None = None
        self.last_cost: CostReport | None = None

    def _decision_space(
        self,
        importance: str,
        act_choices: tuple[int, ...],
        max_sparsity: float,
        channel_groups: int,
    ) -> DecisionSpace:
        """The decision space over the kernels ranked by ``importance`` (computed once)."""
        ranked = self._ranking(importance)
        # Importance of each layer's kernels in ranked order, scaled to [0, 1] (for agents).
        self.ranked_importance = [scaled for _, scaled in ranked]
        return DecisionSpace(
            self.graph,
            [order for order, _ in ranked],
            self.bits,
            act_choices,
            max_sparsity,
            self.conventions,
            channel_groups,
        )

    def _ranking(self, importance: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per layer, its kernels most important first and their scaled scores (from weights)."""
        weights = [self.task.model.get_submodule(name).weight for name in self.graph.names]
        return [ranked_importance(w, importance) for w in weights]  # type: ignore[arg-type]

    def _check_budget(self, max_sparsity: float, act_choices: tuple[int, ...]) -> None:
        """Refuse a missing budget, or one that even the cheapest decisions exceed."""
        if not self.budget.targets:
            raise ArgumentError("give at least one budget: budget_bops and/or budget_size")
        if self.space.feasible(self.budget):
            return
        bops, size = self.space.ratios([None] * len(self.graph))
        fixed = ""
        if self.graph.uncompressed:
            fixed = (
                f"; the layers jpq-env does not compress ({len(self.graph.uncompressed)}, see "
                "graph.uncompressed) alone cost BOPs "
                f"{self.space.fixed_bops / self.space.fp32_bops:.5f} and size "
                f"{self.space.fixed_size / self.space.fp32_size:.5f} of FP32"
            )
        raise ArgumentError(
            f"infeasible budget {self.budget.targets}: even the cheapest decisions (sparsity "
            f"{max_sparsity}, {self.bits[0]}-bit weights, {act_choices[0]}-bit activations) "
            f"reach BOPs {bops:.5f} and size {size:.5f} of FP32{fixed}"
        )

    def _measure_sensitivity(self, importance: str, bn_recalibration: bool) -> SensitivityTable:
        """The task's per-layer sensitivity table (measured once per task, then cached)."""
        acts = self.space.act_bits
        return measure_sensitivity(
            self.task,
            self.graph,
            self.bits,
            acts if len(acts) > 1 else (),
            importance=importance,
            fixed_act=self.space.fixed_act,
            unprunable=[i for i in range(len(self.graph)) if self.space.max_pruned(i) == 0],
            bn_recalibration=bn_recalibration,
            device=self.evaluator.device,
        )

    def _check_groups(self, channel_groups: int) -> None:
        widest = max(x.out_channels for x in self.graph.layers)
        if channel_groups > max(widest, MAX_CHANNEL_GROUPS):  # more groups than kernels: empty
            raise ArgumentError(
                f"channel_groups={channel_groups} is more than the {widest} kernels of the widest "
                f"layer and than {MAX_CHANNEL_GROUPS}: use at most that, or 0 for one entry per "
                "kernel"
            )

    # ---- public helpers for agents ------------------------------------------------------------

    @property
    def evaluator(self) -> Evaluator:
        """The accuracy proxy (``jpq_env.proxy.evaluator.Evaluator``) episodes are scored by.

        Assigning another one (an agent that scores imagined episodes with a surrogate, say)
        takes any ``Evaluator``, or an object with ``fp32_accuracy`` and ``accuracy(policy)``.
        """
        return self._evaluator

    @evaluator.setter
    def evaluator(self, value: Evaluator) -> None:
        self._evaluator = as_evaluator(value)

    @property
    def per_kernel(self) -> bool:
        """True if a channel decision gives each kernel its own width (``channel_groups=0``)."""
        return self.space.per_kernel

    @property
    def channel_slots(self) -> int:
        """Entries of a channel decision (importance groups, or the widest layer's kernels)."""
        return self.space.channel_slots

    @property
    def num_layers(self) -> int:
        """Compressible layers (an episode has twice as many steps)."""
        return len(self.graph)

    @property
    def action_size(self) -> int:
        """Length of the native action: layer entries (1, or 2 deciding activations) + slots."""
        return self.layer_slots + self.channel_slots

    @property
    def observation_size(self) -> int:
        """Length of the observation vector."""
        return int(self.observation_space.shape[0])  # type: ignore[index]

    @property
    def current_layer(self) -> int:
        """Index of the layer being decided (``num_layers`` once terminated, -1 before reset)."""
        return self._layer

    @property
    def decisions(self) -> list[LayerDecision | None]:
        """Applied decisions so far, per layer (None: not decided yet)."""
        return list(self._decisions)

    @property
    def phase(self) -> int:
        """``LAYER`` (0) or ``CHANNEL`` (1)."""
        return self._phase

    def kernel_importance(self, layer: int) -> np.ndarray:
        """Importance of a layer's kernels in ranked order (most important first), in [0, 1]."""
        return self.ranked_importance[layer]

    def encode_levels(self, levels: Sequence[int] | np.ndarray, choices: int) -> np.ndarray:
        """Action values in [-1, 1] that decode to the given choice indices (middle of each bin)."""
        u = (np.asarray(levels, dtype=np.float64) + 0.5) / choices
        return (2.0 * u - 1.0).astype(np.float32)

    # ---- Gymnasium API ------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode at the first layer's layer decision."""
        super().reset(seed=seed)
        self._layer, self._phase = 0, LAYER
        self._decisions = [None] * len(self.graph)
        self._pending = None
        self._decided_kl = 0.0
        self._potential = self._potential_now()
        return self._obs(), self._info()

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Apply one decision (see the class docstring for how actions are read)."""
        if self._layer < 0:
            raise RuntimeError("call reset() before step()")
        if self._layer >= len(self.graph):
            raise RuntimeError("the episode has terminated: call reset() to start a new one")
        u = self._unit_action(action)
        layer = self._layer
        if self._phase == LAYER:
            info = self._layer_step(layer, u[: self.layer_slots])
        else:
            info = self._channel_step(layer, u[self.layer_slots :])
        terminated = self._layer >= len(self.graph)
        reward = 0.0
        if terminated:
            info.update(self._finish())
            reward = info["reward_total"]
            new_potential = 0.0
        else:
            new_potential = self._potential_now()
        if self.shaping or self.error_shaping:
            info["reward_shaping"] = new_potential - self._potential
            reward += info["reward_shaping"]
        self._potential = new_potential
        info.update(self._info())
        return self._obs(), float(reward), terminated, False, info

    def render(self) -> str | np.ndarray | None:
        """The decisions so far, as the render mode asks.

        ``"ansi"``: a per-layer table of them and their costs; ``"human"``: that table printed to
        standard output (returns ``None``); ``"rgb_array"``: an RGB ``uint8`` image with one bar
        per layer (``jpq_env.envs.render``); no mode: ``None``.
        """
        if self.render_mode is None:
            return None
        decided = self._decisions or [None] * len(self.graph)
        policy = self.space.policy(decided)
        cost = measure(self.graph, policy)
        if self.render_mode == "rgb_array":
            bars = [
                None if d is None else (c.mean_w_bits, d.act_bits, d.n_pruned / info.out_channels)
                for info, d, c in zip(self.graph.layers, decided, cost.layers, strict=True)
            ]
            return bits_frame(bars, max(max(self.bits), max(self.space.act_bits)))
        last = self.last_cost if all(d is not None for d in decided) else None
        table = ansi_table(self.graph, decided, cost, last)
        if self.render_mode == "human":
            print(table, flush=True)
            return None
        return table

    # ---- internals ----------------------------------------------------------------------------

    def _unit_action(self, action: Any) -> np.ndarray:
        try:
            raw = check.array(action)
            # Complex or boolean actions would be cast silently (imaginary part dropped): refuse.
            if raw.dtype.kind not in "iuf":
                raise TypeError(f"dtype {raw.dtype}")
            a = raw.astype(np.float32).astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ArgumentError(
                f"action must be a numeric array of shape {self.action_space.shape}, got {exc}"
            ) from exc
        if a.shape != self.action_space.shape:
            raise ArgumentError(f"action has shape {a.shape}, expected {self.action_space.shape}")
        if not np.isfinite(a).all():
            raise ArgumentError(f"action contains NaN or inf: {a.tolist()}")
        if (np.abs(a) > 1.0 + _ACTION_TOLERANCE).any():
            raise ArgumentError(
                f"action values must lie in [-1, 1], got min {a.min()} max {a.max()}"
            )
        return (np.clip(a, -1.0, 1.0) + 1.0) / 2.0

    def _level(self, u: np.ndarray | float, choices: int) -> np.ndarray:
        return np.minimum((np.asarray(u) * choices).astype(np.int64), choices - 1)

    def pruned_for(self, layer: int, value: float) -> int:
        """Kernels a layer decision with action entry ``value`` (in [-1, 1]) proposes to prune."""
        u = (min(max(float(np.float32(value)), -1.0), 1.0) + 1.0) / 2.0
        return self.space.n_pruned(layer, u * self.space.max_sparsity)

    def _layer_step(self, layer: int, u: np.ndarray) -> dict[str, Any]:
        n = self.space.n_pruned(layer, float(u[0]) * self.space.max_sparsity)
        choices = self.space.act_bits
        wanted = choices[int(self._level(u[1], len(choices)))] if self.decides_act else choices[-1]
        act = self.space.act_for(layer, wanted)
        proposed = (n, act)
        if self.enforcement == "wall":
            n, act = wall_layer(self.space, self.budget, self._decisions, layer, n, act)
        self._pending = (n, act)
        self._phase = CHANNEL
        k = self.graph.layers[layer].out_channels
        return {
            "kernels": k,
            "proposed_pruned": proposed[0],
            "applied_pruned": n,
            "proposed_sparsity": proposed[0] / k,
            "applied_sparsity": n / k,
            "proposed_act_bits": proposed[1],
            "applied_act_bits": act,
        }

    def _channel_step(self, layer: int, u: np.ndarray) -> dict[str, Any]:
        assert self._pending is not None
        n, act = self._pending
        k = self.graph.layers[layer].out_channels
        kept = k - n
        per_kernel = self.space.kernel_levels(self._level(u, len(self.bits)), kept)
        proposed = self.space.decision(layer, n, np.asarray(self.bits)[per_kernel], act)
        applied = proposed
        if self.enforcement == "wall":
            applied = wall_channels(self.space, self.budget, self._decisions, layer, proposed)
        self._decisions[layer] = applied
        self._pending = None
        self._layer += 1
        self._phase = LAYER
        kept_bits = applied.ranked_bits[:kept]
        info: dict[str, Any] = {
            "proposed_mean_bits": float(proposed.ranked_bits[:kept].mean()),
            "applied_mean_bits": float(kept_bits.mean()),
        }
        if self.sensitivity is not None:
            kl = self.sensitivity.contribution(layer, applied.ranked_bits, applied.act_bits)
            self._decided_kl += kl
            info["layer_kl"] = kl  # what this decision alone costs at the output (estimated)
            info["predicted_fidelity"] = float(np.exp(-self._decided_kl))
        return info

    def _finish(self) -> dict[str, Any]:
        decisions: list[LayerDecision] = [d for d in self._decisions if d is not None]
        if self.enforcement == "lowering":
            decisions = lower_backwards(self.space, self.budget, decisions)
            self._decisions = list(decisions)
        policy, cost = self.space.cost(decisions)
        accuracy = self._score(policy, cost)
        fp32 = float(self.evaluator.fp32_accuracy)
        outcome = Outcome(
            accuracy, fp32, float(cost.bops), cost.bops_ratio, cost.size_ratio, self.budget.targets
        )
        terms = self.reward_design(outcome)
        self.last_policy, self.last_cost = policy, cost
        info: dict[str, Any] = {f"reward_{k}": float(v) for k, v in terms.items()}
        info.update(
            accuracy=accuracy,
            accuracy_fp32=fp32,
            bops=cost.bops,
            bops_fp32=cost.bops_fp32,
            bops_ratio=cost.bops_ratio,
            size_bits=cost.size_bits,
            size_ratio=cost.size_ratio,
            budget_met=self.budget.met(cost),
            **self._evaluation_info(),
            policy=[lp.to_json(sparsity=True) for lp in policy.layers],
        )
        return info

    def race(self, reward: float | None) -> None:
        """Race the next evaluations against ``reward`` (None: evaluate completely); see above."""
        if reward is not None and not (isinstance(reward, (int, float)) and np.isfinite(reward)):
            raise ArgumentError(f"race() takes a finite reward or None, got {reward!r}")
        self._race_target = None if reward is None else float(reward)

    @property
    def race_target(self) -> float | None:
        """The reward the next evaluations race against (``race``), or None."""
        return self._race_target

    def race_accuracy(self, accuracy: float | None) -> None:
        """Race the next evaluations against a score (None: no such target).

        What a search does to spend fewer images on policies that cannot beat its best: the
        evaluation stops once the proxy is confident the score stays below ``accuracy``. A reward
        target set with ``race`` takes precedence.
        """
        if accuracy is not None and not (
            isinstance(accuracy, (int, float)) and np.isfinite(accuracy)
        ):
            raise ArgumentError(f"race_accuracy() takes a finite score or None, got {accuracy!r}")
        self._race_accuracy = None if accuracy is None else float(accuracy)

    def _score(self, policy: Policy, cost: CostReport) -> float:
        """The proxy's score of ``policy``, raced against the target reward or score if set."""
        target = self._race_target
        if not self.evaluator.supports_racing:
            return float(self.evaluator.accuracy(policy))
        if target is None:
            return float(self.evaluator.accuracy(policy, at_least=self._race_accuracy))
        fp32 = float(self.evaluator.fp32_accuracy)

        def outcome(acc: float) -> Outcome:
            return Outcome(
                acc, fp32, float(cost.bops), cost.bops_ratio, cost.size_ratio, self.budget.targets
            )

        needed = least_accuracy_reaching(self.reward_design, target, outcome)
        if needed is None:
            return float(self.evaluator.accuracy(policy))
        return float(self.evaluator.accuracy(policy, at_least=needed))

    def _evaluation_info(self) -> dict[str, Any]:
        last = self.evaluator.last
        if last is None:
            return {}
        return {"proxy_images": int(last.images), "proxy_complete": bool(last.complete)}

    def _potential_now(self) -> float:
        # Predicted loss of fidelity of the decided layers: exp(-sum KL) - 1, in [-1, 0].
        error = self.error_shaping * (float(np.exp(-self._decided_kl)) - 1.0)
        return error + self._budget_potential()

    def _budget_potential(self) -> float:
        if not self.shaping or self.budget.bops is None:
            return 0.0

        def widest(i: int) -> LayerDecision:  # undecided layers at the widest choice, unpruned
            k = self.graph.layers[i].out_channels
            return self.space.decision(i, 0, np.full(k, self.bits[-1]), self.space.act_bits[-1])

        full = self.space.policy(self._decisions, widest)
        bops, _ = totals(
            self.graph, [lp.bits for lp in full.layers], [lp.act_bits for lp in full.layers]
        )
        return -self.shaping * bops / self.space.fp32_bops / self.budget.bops

    def _obs(self) -> np.ndarray:
        layer = min(max(self._layer, 0), len(self.graph) - 1)
        dyn = np.zeros(len(FEATURES) - N_STATIC)
        dyn[0] = float(self._phase)
        k = self.graph.layers[layer].out_channels
        if self._phase == CHANNEL and self._pending is not None:
            dyn[1] = self._pending[0] / k / max(self.space.max_sparsity, 1e-12)
            dyn[2] = self._pending[1] / max(self.space.act_bits[-1], 1)
        dyn[3] = max(self._layer, 0) / len(self.graph)
        dyn[4:] = self._features(self._decisions, layer)
        parts = [self._static[layer], dyn]
        if self._sens_features and self.sensitivity is not None:
            parts.append(self.sensitivity.features(layer))
        obs = np.concatenate(parts).astype(np.float32)
        return np.clip(obs, 0.0, 1.0)

    def _info(self) -> dict[str, Any]:
        layer = min(max(self._layer, 0), len(self.graph) - 1)
        info: dict[str, Any] = {
            "layer": self._layer,
            "layer_name": self.graph.layers[layer].name,
            "phase": "layer" if self._phase == LAYER else "channel",
        }
        return info
