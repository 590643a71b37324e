"""jpq-env: joint pruning and quantization of PyTorch networks as a reinforcement-learning problem.

The compression core (usable without any RL):

- ``LayerGraph``: compressible layers, their features and channel wiring, and the layers it does
  not compress (counted at FP32, named by an ``UncompressedLayersWarning``);
- ``measure``: MACs, BOPs and size of a policy;
- ``CompressedModel``: a policy applied to a working copy of a model, undone exactly;
- ``LocalEvaluator``: the accuracy proxy;
- ``Policy``: per-kernel bit-widths (0 = pruned) and per-layer activation bits.

Importing the package registers the Gymnasium ids (``jpq_env/JPQWeights-v0`` and presets, see
``jpq_env.envs.registration``); the environment class is ``jpq_env.envs.JPQEnv``.
"""

from jpq_env.core.compress import CompressedModel, kernel_ranking, register_importance
from jpq_env.core.costs import CostReport, measure
from jpq_env.core.graph import GraphError, LayerGraph, UncompressedLayersWarning
from jpq_env.core.policy import Conventions, LayerPolicy, Policy, PolicyError
from jpq_env.envs.registration import PRESETS, register_envs
from jpq_env.proxy.evaluator import Evaluator, LocalEvaluator
from jpq_env.tasks import Task, TaskError, load_task, make_task

__all__ = [
    "CompressedModel",
    "Conventions",
    "CostReport",
    "Evaluator",
    "GraphError",
    "LayerGraph",
    "LayerPolicy",
    "LocalEvaluator",
    "PRESETS",
    "Policy",
    "PolicyError",
    "Task",
    "TaskError",
    "UncompressedLayersWarning",
    "kernel_ranking",
    "load_task",
    "make_task",
    "measure",
    "register_importance",
]

__version__ = "0.1.0"

register_envs()
