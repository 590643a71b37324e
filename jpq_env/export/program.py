"""The torch program of a compressed model: the physically pruned graph on integer levels.

``export_program(evaluator, policy, path)`` writes the physically pruned model
(``jpq_env.export.pruned``) as a ``torch.export`` program whose weights are stored as their
integer levels (int8 containers up to 8 bits, int16 up to 16) and one float scale per kernel,
dequantized inside the graph (``levels * scale``, bitwise the compressed model's weights), with
the activation quantizers of the compressed model. Storing levels instead of the fake-quantized
float weights makes the program smaller than the kept kernels' float weights alone (ResNet-20,
W8A8: 0.81 MB against 1.07 MB of float weights, plus its graph); it runs with nothing but torch:
``torch.export.load(path).module()`` or ``load_pruned(path)``.
"""

from __future__ import annotations

import os

from jpq_env.core.policy import Policy
from jpq_env.export.onnx import qdq_module
from jpq_env.export.pruned import pruned_module, save_pruned
from jpq_env.proxy.evaluator import LocalEvaluator

__all__ = ["export_program"]


def export_program(evaluator: LocalEvaluator, policy: Policy, path: str | os.PathLike[str]) -> int:
    """Write the model compressed by ``policy`` as a ``torch.export`` program; return its size.

    The program computes the compressed model's logits (its weights bitwise, its activations up
    to float rounding at quantization boundaries), with pruned kernels and the input channels
    they fed removed.
    """
    module = qdq_module(
        pruned_module(evaluator, policy),
        evaluator.graph,
        policy,
        evaluator.compressed.quantizers,
    )
    return save_pruned(module, evaluator.task.example_input, path)
