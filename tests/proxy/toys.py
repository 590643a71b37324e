"""Toy tasks and random policies for the proxy's tests (small networks of ``tests.nets``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import Policy
from jpq_env.tasks import Task
from tests.nets import PlainNet, randomize_bn


def labelled_task(n=64, labels=None, test=None, seed=0) -> Task:
    """PlainNet on random 3x8x8 inputs, labelled by itself with a quarter wrong (FP32: 75%)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = randomize_bn(PlainNet(), seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1) if labels is None else labels
    y = y.clone()
    y[: n // 4] = (y[: n // 4] + 1) % 5  # a quarter wrong: FP32 accuracy 75%
    data = TensorDataset(x, y)
    return Task(
        "toy",
        model,
        x[:1],
        data,
        data,
        TensorDataset(x[:32], y[:32]),
        data if test is None else test,
        5,
    )


def toy_task(net: nn.Module, n: int = 96, side: int = 8, classes: int | None = None) -> Task:
    """``net`` on random inputs, labelled by itself with a fifth wrong; every split the same."""
    g = torch.Generator().manual_seed(1)
    model = randomize_bn(net, 0).eval()
    x = torch.randn(n, 3, side, side, generator=g)
    with torch.no_grad():
        out = model(x)
    y = out.argmax(1)
    y[: n // 5] = (y[: n // 5] + 1) % out.shape[1]
    data = TensorDataset(x, y)
    calib = TensorDataset(x[:40], y[:40])
    return Task("toy", model, x[:1], data, data, calib, data, out.shape[1])


def mixed_policy(graph: LayerGraph, seed: int, acts: tuple[int, ...] = (4, 8)) -> Policy:
    """A random policy: random widths and pruning per kernel, random activation widths."""
    rng = np.random.default_rng(seed)
    policy = Policy.uniform(graph)
    layers = []
    for info, lp in zip(graph.layers, policy.layers, strict=True):
        bits = rng.choice([0, 2, 3, 4, 8], size=info.out_channels, p=[0.2, 0.2, 0.2, 0.2, 0.2])
        if info.index in graph.output_layers:
            bits[bits == 0] = 4
        layers.append(type(lp)(lp.name, bits, int(rng.choice(acts))))
    return Policy(tuple(layers), policy.fingerprint)
