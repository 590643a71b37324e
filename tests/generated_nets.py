"""Random networks for the property-based tests (``tests/core/test_costs_properties.py``,
``tests/envs/test_jpq_properties.py``): a hypothesis strategy over small stacks of blocks (plain
conv, depthwise conv, residual pair with an identity add, each with or without BatchNorm), global
pooling and one or two linear layers; and one over the policies of a graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import nn

from jpq_env import LayerGraph, LayerPolicy, Policy

PROPERTY = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never flakes on a new draw
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


WIDTHS = [0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 32]


@dataclass(frozen=True)
class NetSpec:
    """A small network: input channels, blocks as (kind, out channels, batchnorm), head."""

    in_channels: int
    hw: int
    blocks: tuple[tuple[str, int, bool], ...]
    hidden: int  # 0: a single linear layer
    classes: int


class _Residual(nn.Module):
    def __init__(self, c: int, bn: bool) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn(self.b(F.relu(self.a(x)))))


class GeneratedNet(nn.Module):
    """The network a ``NetSpec`` describes."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c = spec.in_channels
        for kind, width, bn in spec.blocks:
            if kind == "res":
                blocks.append(_Residual(c, bn))
                continue
            out, groups = (c, c) if kind == "dw" else (width, 1)
            conv = nn.Conv2d(c, out, 3, padding=1, groups=groups)
            blocks.append(nn.Sequential(conv, nn.BatchNorm2d(out) if bn else nn.Identity()))
            c = out
        self.blocks = nn.ModuleList(blocks)
        head: list[nn.Module] = [nn.Linear(c, spec.hidden or spec.classes)]
        if spec.hidden:
            head += [nn.ReLU(), nn.Linear(spec.hidden, spec.classes)]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = F.relu(block(x))
        return self.head(x.mean((2, 3)))


@st.composite
def net_specs(draw: st.DrawFn) -> NetSpec:
    block = st.tuples(st.sampled_from(["conv", "dw", "res"]), st.integers(1, 6), st.booleans())
    return NetSpec(
        in_channels=draw(st.integers(1, 3)),
        hw=draw(st.sampled_from([4, 6])),
        blocks=tuple(draw(st.lists(block, min_size=1, max_size=4))),
        hidden=draw(st.sampled_from([0, 5])),
        classes=draw(st.integers(2, 4)),
    )


def build(spec: NetSpec, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = GeneratedNet(spec)
    for m in model.modules():  # non-trivial BatchNorm statistics, so recalibration changes them
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), torch.randn(1, spec.in_channels, spec.hw, spec.hw)


@st.composite
def policies(draw: st.DrawFn, graph: LayerGraph) -> Policy:
    layers = []
    for info in graph.layers:
        widths = WIDTHS[1:] if info.index in graph.output_layers else WIDTHS
        bits = draw(st.lists(st.sampled_from(widths), min_size=info.out_channels,
                             max_size=info.out_channels))  # fmt: skip
        layers.append(LayerPolicy(info.name, bits, draw(st.sampled_from(WIDTHS[1:]))))
    return Policy(tuple(layers), graph.fingerprint)
