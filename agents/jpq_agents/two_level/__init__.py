"""The two-level controller: a layer controller and a channel controller trained jointly.

The method's own agent (AJPQ's hierarchy, AutoQ's two levels), ``jpq search --agent two-level``.
It follows the environment's two steps per layer: the **layer controller** decides how many of
the layer's kernels to prune (and, where the environment decides them, the width of its input
activations); the **channel controller** then gives each importance group of the kept kernels a
weight width. A search has only a few hundred evaluations, so the design spends them carefully:

- ``controller``: the networks. A Beta over the sparsity, so the decision lives on [0, 1] without
  clipping; one channel head shared by every group, which handles any number of kernels and
  learns "important kernels deserve more bits" once for all layers, because plain DDPG struggles
  at kernel level (AutoQ).
- ``episodes``: playing an episode and keeping the decisions the environment *applied* (after its
  budget wall), not the proposed ones, so learning credits what was actually scored.
- ``learner``: PPO's clipped objective on whole episodes (the terminal reward on every step,
  discount 1, normalised), with self-imitation of the best episodes so far.
- ``agent``: the phases. A warm start on the prune-then-quantize policies (the two-stage
  baseline, found with the cost model), so the search starts where that baseline ends; learning;
  then refinement for the last ``refine_fraction`` of the evaluations.
- ``imagined``: model-based learning, on episodes scored by a surrogate of the proxy fitted to
  the real evaluations; real evaluations go to the imagined episodes with the best upper bound.
- ``refine``: local search around the best decisions, in rounds of neighbours repaired to fit the
  budget, screened by the surrogate and raced against the incumbent.
- ``evaluations``: spending evaluations in process or on an evaluator pool with the same records.
- ``config``: ``TwoLevelConfig``, every hyperparameter above.

Deterministic: with the same seed the same episodes are played (the search's resume relies on
it), whatever the number of evaluator workers. Measurements of the phases' worth are in
``benchmarks/results/two_level_ablation.md`` (``python -m benchmarks.two_level_ablation``), and the
measurements behind its defaults in ``benchmarks/results/two_level_design_notes.md``.

What the agent reads from the environment
-----------------------------------------

It plays the search's environment through Gymnasium's ``reset(seed=...)`` and ``step(action)``
with native actions, and reads two ``info`` keys: ``applied_pruned`` (after a layer step) and
``reward_total`` (at the end of an episode). Beyond that it uses these attributes of the
unwrapped ``JPQEnv`` (``env.unwrapped``):

- ``observation_size``, ``num_layers``, ``bits``, ``channel_slots``, ``per_kernel``,
  ``decides_act``: the shapes of the observation and of the decisions;
- ``kernel_importance(layer)``: the group features;
- ``graph``: ``graph.layers[i].out_channels``, ``graph.fingerprint`` (to rebuild policies from
  records), and the graph itself for sensitivity measurement;
- ``space``: ``act_bits``, ``max_sparsity``, ``fixed_act``, ``max_pruned(layer)``;
- ``decisions``: the applied decision of each layer (``n_pruned``, ``ranked_bits``,
  ``act_bits``), read after each step;
- ``last_policy``: the applied policy of an episode played to the end outside the search;
- ``task`` (``num_classes``, and the task itself for sensitivity measurement) and
  ``sensitivity``: the surrogate's prior;
- ``evaluator`` and ``reward_design``: *replaced* while imagined episodes are played (by the
  surrogate's evaluator, and a copy of the design) and restored afterwards;
- ``race(reward)``: racing during refinement.

The helpers of ``jpq_agents.play`` it calls (native actions, the two-stage baseline, the budget
check of a neighbour) also read ``action_size``, ``layer_slots``, ``encode_levels()``,
``budget.met()`` and ``space.act_for()``, ``space.decision()``, ``space.policy()`` and
``space.n_pruned()``. From the search it reads ``Search.evaluator`` (``fp32_accuracy``, and
``set_incumbent``/``device`` where present).
"""

from __future__ import annotations

from .agent import _Agent as _Agent
from .agent import run_two_level
from .config import TwoLevelConfig
from .controller import TwoLevelController

__all__ = ["TwoLevelConfig", "TwoLevelController", "run_two_level"]
