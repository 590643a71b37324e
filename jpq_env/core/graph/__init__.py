"""The layer graph: compressible layers, their features and channel wiring, and model checks.

``LayerGraph.from_module(model, example_input)`` (``layer_graph``) traces a model (``trace``)
after the checks that refuse models it cannot compress correctly (``checks``). ``channels`` holds
the channel wiring and its rules, ``ops`` the one table of what each op does to channels (read by
the tracer and by the physical pruning in ``jpq_env.export.pruned``).
"""

from jpq_env.core.graph.channels import ChannelSources, Liveness
from jpq_env.core.graph.checks import check_model, check_written_modules
from jpq_env.core.graph.layer_graph import LayerGraph, LayerInfo, UncompressedLayer
from jpq_env.errors import GraphError, UncompressedLayersWarning

__all__ = [
    "ChannelSources",
    "GraphError",
    "LayerGraph",
    "LayerInfo",
    "Liveness",
    "UncompressedLayer",
    "UncompressedLayersWarning",
    "check_model",
    "check_written_modules",
]
