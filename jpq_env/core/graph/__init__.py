"""The layer graph: compressible layers, their features and channel wiring, and model checks.

``LayerGraph.from_module(model, example_input)`` traces a model (``layer_graph``) after the
checks that refuse models it cannot compress correctly (``checks``).
"""

from jpq_env.core.graph.checks import check_model, check_written_modules
from jpq_env.core.graph.layer_graph import (
    ChannelSources,
    LayerGraph,
    LayerInfo,
    Liveness,
    UncompressedLayer,
)
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
