"""A user's samples, read one by one: lists of ``(input, label)`` pairs, and what the model takes.

``make_task`` (``jpq_env.tasks.user``) takes a split as a list of samples as well as a dataset:
``pairs_dataset`` stacks it into a ``TensorDataset`` (the evaluator's fast path), checking every
sample and naming the first bad one by its index. ``run_model`` runs the model on the example
input and, when it cannot, says where that input came from (a split and a sample index), its shape
and dtype, and what the model's first layer takes.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from jpq_env.tasks.base import TaskError

__all__ = ["expected_input", "pairs_dataset", "run_model"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_AXES = {nn.Conv1d: "length", nn.Conv2d: "height, width", nn.Conv3d: "depth, height, width"}


def pairs_dataset(items: Sequence[Any], split: str) -> TensorDataset:
    """The samples of ``items``, a sequence of ``(input, label)`` pairs, as one ``TensorDataset``.

    Every input must be a tensor of the shape and dtype of the first one; every label a class
    index (a Python integer or a one-element tensor). The inputs are copied into one tensor.

    Raises:
        TaskError: Naming the split and the index of the first sample that breaks a rule.
    """
    if len(items) == 0:
        raise TaskError(f"the {split} split is empty")
    inputs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for i, item in enumerate(items):
        where = f"sample {i} of the {split} split"
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TaskError(
                f"{where} is {_kind(item)}, not an (input, label) pair: a split given as a list "
                "holds (input, label) samples; as a pair, two tensors (inputs, labels)"
            )
        x, y = item
        if not isinstance(x, torch.Tensor):
            raise TaskError(
                f"{where} has an input of type {type(x).__name__}: inputs must be tensors (add a "
                "transform such as torchvision.transforms.ToTensor)"
            )
        if inputs and (x.shape != inputs[0].shape or x.dtype != inputs[0].dtype):
            raise TaskError(
                f"{where} has an input of shape {tuple(x.shape)} and dtype {x.dtype}, but sample "
                f"0 has {tuple(inputs[0].shape)} and {inputs[0].dtype}: every sample of a split "
                "must have the same shape and dtype"
            )
        scalar = isinstance(y, (int, float, np.generic, torch.Tensor))
        label = torch.as_tensor(y) if scalar else None
        if label is None or label.numel() != 1:
            got = f"shape {tuple(label.shape)}" if label is not None else type(y).__name__
            raise TaskError(f"{where} has a label of {got}: one class index per sample")
        inputs.append(x)
        labels.append(label.reshape(()))
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in labels))
    return TensorDataset(torch.stack(inputs), torch.stack([t.to(dtype) for t in labels]))


def _kind(item: Any) -> str:
    if isinstance(item, torch.Tensor):
        return f"a tensor of shape {tuple(item.shape)}"
    if isinstance(item, (tuple, list)):
        return f"a {type(item).__name__} of {len(item)} items"
    name = type(item).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def expected_input(name: str, layer: nn.Module) -> str:
    """What ``layer`` (a model's first conv or linear layer, called ``name``) takes as input."""
    dtype = layer.weight.dtype
    for kind, axes in _AXES.items():
        if isinstance(layer, kind):
            c = layer.in_channels
            return (
                f"its first layer '{name}' ({kind.__name__}, {c} input channel"
                f"{'s' if c != 1 else ''}) takes {dtype} inputs shaped (batch, {c}, {axes}), so "
                f"each sample should be ({c}, {axes})"
            )
    assert isinstance(layer, nn.Linear)
    return (
        f"its first layer '{name}' (Linear) takes {dtype} inputs with {layer.in_features} "
        "features in their last dimension (after any flattening before it)"
    )


def run_model(model: nn.Module, x: torch.Tensor, source: str) -> Any:
    """The output of a copy of ``model`` (in eval mode, no gradients) on ``x``.

    Args:
        model: The user's model (not run itself: its mode and buffers stay as they are).
        x: The example input, one batch.
        source: Where ``x`` comes from, for the error (``"sample 0 of the val split"``).

    Raises:
        TaskError: If the model raises: naming ``source``, the input's shape and dtype, the
            model's error, and what the model's first layer takes (the first conv or linear layer
            the failed run called, else the first one the model holds).
    """
    net = copy.deepcopy(model).eval()
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, _LAYERS)]
    called: list[tuple[str, nn.Module]] = []

    def note(name: str, module: nn.Module, *_: Any) -> None:
        if not called:
            called.append((name, module))

    handles = [m.register_forward_pre_hook(functools.partial(note, n)) for n, m in layers]
    try:
        with torch.no_grad():
            return net(x)
    except Exception as exc:
        message = (
            f"the model cannot run on {source} (shape {tuple(x.shape)}, dtype {x.dtype}): "
            f"{type(exc).__name__}: {exc}"
        )
        first = called[0] if called else layers[0] if layers else None
        if first is not None:
            message += f"; {expected_input(*first)}"
            want = first[1].weight.dtype
            if x.dtype != want:
                message += (
                    f": convert the inputs to {want} (x.to({want}); images with "
                    "torchvision.transforms.ToTensor)"
                )
        raise TaskError(message) from exc
    finally:
        for handle in handles:
            handle.remove()
