"""jpq-env: joint pruning and quantization of PyTorch networks as a reinforcement-learning problem.

The package is layered; each layer imports only the ones before it (an import-linter contract in
``make lint`` holds this):

- ``jpq_env.core``: what a policy is and what it costs, with no data and no RL (the layer graph,
  ``Policy``, the quantizers, ``measure`` for MACs, BOPs and size, kernel importance,
  ``CompressedModel``);
- ``jpq_env.tasks``: a model with its data splits (built-in tasks, ``make_task`` for yours);
- ``jpq_env.proxy``: how good a policy is (``LocalEvaluator``, prefix reuse, racing,
  sensitivity, fine-tuning, Ray);
- ``jpq_env.export``: the compressed model as a file (packed jpq file, pruned torch program,
  ONNX);
- ``jpq_env.envs``: the Gymnasium environment, its decisions, budgets, rewards and views: the
  only layer that imports gymnasium.

This module re-exports the compression core's public API. Importing it does not import
gymnasium, so the core stays usable (and cheap to import) without RL; the environment ids
(``jpq_env/JPQWeights-v0`` and presets, ``jpq_env.envs.registration``) are registered as soon as
gymnasium is imported, before or after this package, so ``import jpq_env`` then
``gym.make("jpq_env/JPQWeights-v0")`` works as with any Gymnasium plugin.
"""

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from jpq_env.errors import (
    ArgumentError,
    GraphError,
    JPQError,
    PolicyError,
    TaskError,
    UncompressedLayersWarning,
)

if TYPE_CHECKING:
    from jpq_env.core.compress import CompressedModel
    from jpq_env.core.costs import CostReport, measure
    from jpq_env.core.graph import LayerGraph
    from jpq_env.core.importance import kernel_ranking, register_importance
    from jpq_env.core.policy import Conventions, LayerPolicy, Policy
    from jpq_env.proxy.evaluator import Evaluator, LocalEvaluator
    from jpq_env.tasks import Task, load_task, make_task

# The public names and the modules that define them, imported on first use: ``import jpq_env``
# (and so ``import jpq_env.errors``, or ``jpq --help``) does not load torch.
_LAZY = {
    "CompressedModel": "jpq_env.core.compress",
    "CostReport": "jpq_env.core.costs",
    "measure": "jpq_env.core.costs",
    "LayerGraph": "jpq_env.core.graph",
    "kernel_ranking": "jpq_env.core.importance",
    "register_importance": "jpq_env.core.importance",
    "Conventions": "jpq_env.core.policy",
    "LayerPolicy": "jpq_env.core.policy",
    "Policy": "jpq_env.core.policy",
    "Evaluator": "jpq_env.proxy.evaluator",
    "LocalEvaluator": "jpq_env.proxy.evaluator",
    "Task": "jpq_env.tasks",
    "load_task": "jpq_env.tasks",
    "make_task": "jpq_env.tasks",
}

__all__ = [
    "ArgumentError",
    "CompressedModel",
    "Conventions",
    "CostReport",
    "Evaluator",
    "GraphError",
    "JPQError",
    "LayerGraph",
    "LayerPolicy",
    "LocalEvaluator",
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


def __getattr__(name: str) -> Any:
    """The public names of the core, imported when first asked for (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jpq_env' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"


class _RegisterWhenGymnasiumLoads(importlib.abc.MetaPathFinder):
    """Registers the environment ids right after gymnasium is first imported (once).

    Python has no post-import hook, so this finder answers for ``gymnasium`` alone: it removes
    itself, lets the other finders locate the real module, and wraps that loader's
    ``exec_module`` so the registration runs once gymnasium's own ``__init__`` has finished.
    """

    def find_spec(
        self, name: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "gymnasium":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader, exec_module = spec.loader, spec.loader.exec_module

        def exec_then_register(module: types.ModuleType) -> None:
            exec_module(module)
            _register()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def _register() -> None:
    from jpq_env.envs.registration import register_envs

    register_envs()


if "gymnasium" in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterWhenGymnasiumLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenGymnasiumLoads())
