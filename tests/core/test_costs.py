"""The cost model (``jpq_env.core.costs``): MACs, BOPs and size against hand counts and
``torch.utils.flop_counter``, conventions, and monotonicity.
"""

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from jpq_env.core.costs import measure
from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import Conventions, LayerPolicy, Policy
from tests.nets import LeNet5, ResidualNet, ResNet20, SeparableNet


def _graph(model: nn.Module, shape: tuple[int, ...]) -> LayerGraph:
    return LayerGraph.from_module(model, torch.randn(*shape))


def _policy(graph: LayerGraph, bits: list[np.ndarray], act: list[int]) -> Policy:
    layers = (LayerPolicy(x.name, b, a) for x, b, a in zip(graph.layers, bits, act, strict=True))
    return Policy(tuple(layers), graph.fingerprint)


def _flop_counter_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(*shape))
    return counter.get_total_flops() // 2  # it counts 2 FLOPs per MAC


@pytest.fixture(scope="module")
def resnet18_graph() -> LayerGraph:
    return _graph(torchvision.models.resnet18(), (1, 3, 224, 224))


def test_resnet18_oracle(resnet18_graph: LayerGraph):
    g = resnet18_graph
    fp32 = measure(g, Policy.uniform(g))
    assert fp32.macs == fp32.macs_fp32 == 1_814_073_344
    assert fp32.bops == 1_814_073_344 * 1024  # 1857.6 G
    w8a8 = measure(g, Policy.uniform(g, 8, 8))
    assert w8a8.bops == 116_100_694_016 and w8a8.bops_ratio == 1 / 16
    w4a4 = measure(g, Policy.uniform(g, 4, 4))
    assert w4a4.bops_ratio == 1 / 64
    weights = sum(
        m.weight.numel()
        for m in torchvision.models.resnet18().modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    )
    assert fp32.size_bits == weights * 32
    assert fp32.size_bytes("MiB") == pytest.approx(weights * 4 / 2**20)
    assert fp32.size_bytes("MB") == pytest.approx(weights * 4 / 1e6)


def test_resnet18_and_mobilenet_v2_macs_match_torch_flop_counter(resnet18_graph: LayerGraph):
    assert resnet18_graph.total_macs == _flop_counter_macs(
        torchvision.models.resnet18(), (1, 3, 224, 224)
    )
    for shape in ((1, 3, 224, 224), (1, 3, 32, 32)):
        mobilenet = torchvision.models.mobilenet_v2()
        assert _graph(mobilenet, shape).total_macs == _flop_counter_macs(mobilenet, shape)


def test_small_oracles():
    assert _graph(LeNet5(), (1, 1, 28, 28)).total_macs == 4_267_008
    assert _graph(ResNet20(), (1, 3, 32, 32)).total_macs == 40_551_040
    assert (
        _graph(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1)), (1, 3, 32, 32)).total_macs
        == 1_769_472
    )


def test_pruned_example_from_method():
    # 16 -> 32 channels, 3x3, 16x16 output; keep 12 of the inputs and 24 of the outputs.
    model = nn.Sequential(
        nn.Conv2d(3, 16, 1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 2, 1),
    )
    g = _graph(model, (1, 3, 16, 16))
    bits = [np.full(16, 8), np.full(32, 4), np.full(2, 8)]
    bits[0][:4] = 0
    bits[1][24:] = 0
    cost = measure(g, _policy(g, bits, [8, 8, 8]))
    assert cost.layers[1].macs == 663_552
    assert cost.layers[1].bops == 21_233_664
    assert (cost.layers[1].kept_in, cost.layers[1].kept_out) == (12, 24)
    # Its producer and consumer lose the same channels.
    assert cost.layers[0].macs == 12 * 3 * 256 and cost.layers[2].macs == 2 * 24 * 256
    assert cost.layers[1].size_bits == 24 * 12 * 9 * 4


def test_residual_block_costs_by_hand():
    g = _graph(ResidualNet(), (1, 3, 8, 8))
    bits = [np.full(x.out_channels, 6) for x in g.layers]
    bits[0][[1, 2, 5]] = 0
    bits[1][[0]] = 0
    bits[2][[2, 5, 7]] = 0
    bits[3][[3]] = 3
    act = [8, 4, 5, 6, 7]
    cost = measure(g, _policy(g, bits, act))
    hw = 64
    expected = [
        5 * 3 * 9 * hw * 6 * 8,  # stem: 5 kernels x 3 inputs
        7 * 5 * 9 * hw * 6 * 4,  # a: 7 kernels x 5 live stem channels
        5 * 7 * 9 * hw * 6 * 5,  # b: 5 kernels x 7 live a channels
        (5 * 6 + 1 * 3)
        * 6
        * 1
        * hw
        * 6,  # head: inputs = union(stem, b) = 6 live; one kernel at 3 bits
        4 * 6 * 6 * 7,  # fc: 4 kernels x 6 live inputs
    ]
    assert [c.bops for c in cost.layers] == expected
    assert cost.bops == sum(expected)
    assert cost.layers[3].kept_in == 6


def test_depthwise_separable_costs_by_hand():
    g = _graph(SeparableNet(), (1, 3, 8, 8))
    bits = [np.full(x.out_channels, 4) for x in g.layers]
    bits[0][[0, 3]] = 0  # conv drops 2 -> dw loses the same 2
    bits[1][[5]] = 0  # dw drops one more of its own
    bits[2][[0, 1, 2, 3, 4, 6]] = (
        0  # pw keeps 6 of 12: group 0 of `grouped` keeps 1 input, group 1 keeps 5
    )
    cost = measure(g, _policy(g, bits, [8] * 5))
    macs = [c.macs for c in cost.layers]
    assert macs[0] == 6 * 3 * 9 * 64
    assert macs[1] == 5 * 1 * 9 * 16
    assert macs[2] == 6 * 5 * 16
    assert macs[3] == 3 * 1 * 9 * 16 + 3 * 5 * 9 * 16
    assert macs[4] == 3 * 6
    assert cost.layers[1].kept_out == 5


def test_conventions_pin_input_bits_and_first_last_layers():
    g = _graph(ResidualNet(), (1, 3, 8, 8))
    policy = Policy.uniform(g, 2, 3, Conventions(input_bits=8, first_last_bits=8))
    assert [lp.act_bits for lp in policy.layers] == [8, 3, 3, 3, 3]
    assert [int(lp.bits[0]) for lp in policy.layers] == [8, 2, 2, 2, 8]
    free = Policy.uniform(g, 2, 3, Conventions(input_bits=None))
    assert [lp.act_bits for lp in free.layers] == [3] * 5
    assert measure(g, policy).bops > measure(g, free).bops


@st.composite
def _policy_and_lowered(
    draw: st.DrawFn,
) -> tuple[list[np.ndarray], list[np.ndarray], list[int], list[int]]:
    sizes = [8, 8, 8, 6, 4]
    choices = [0, 1, 2, 3, 4, 6, 8, 32]
    bits = [
        np.array(draw(st.lists(st.sampled_from(choices), min_size=n, max_size=n))) for n in sizes
    ]
    bits[-1][bits[-1] == 0] = 2  # the output layer cannot be pruned
    lowered = [
        np.array([draw(st.sampled_from([c for c in choices if c <= b])) for b in layer])
        for layer in bits
    ]
    lowered[-1][lowered[-1] == 0] = 1
    act = [draw(st.sampled_from([2, 4, 8, 32])) for _ in sizes]
    act_low = [draw(st.sampled_from([a for a in (2, 4, 8, 32) if a <= b])) for b in act]
    return bits, lowered, act, act_low


_RESIDUAL = _graph(ResidualNet(), (1, 3, 8, 8))


@settings(max_examples=150, deadline=None)
@given(_policy_and_lowered())
def test_fewer_bits_or_more_pruning_never_raise_costs(case):
    bits, lowered, act, act_low = case
    g = _RESIDUAL
    high = measure(g, _policy(g, bits, act))
    low = measure(g, _policy(g, lowered, act_low))
    assert low.bops <= high.bops and low.size_bits <= high.size_bits and low.macs <= high.macs
    assert high.bops <= high.bops_fp32 and high.size_bits <= high.size_bits_fp32


def test_mixed_activation_bits_by_hand():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    )  # fmt: skip
    g = LayerGraph.from_module(net, torch.randn(1, 3, 4, 4))
    bits = [np.full(8, 4), np.full(4, 6), np.full(5, 2)]
    bits[0][:2] = 0  # conv 2 loses 2 of its 8 inputs
    acts = [8, 3, 5]
    layers = tuple(LayerPolicy(x.name, b, a) for x, b, a in zip(g.layers, bits, acts, strict=True))
    cost = measure(g, Policy(layers, g.fingerprint))
    # conv1: 6 kernels x 3 inputs x 9 x 16 positions x W4 x A8
    # conv2: 4 kernels x 6 live inputs x 1 x 16 positions x W6 x A3
    # fc: 5 outputs x 64 inputs x W2 x A5
    assert [c.bops for c in cost.layers] == [
        6 * 3 * 9 * 16 * 4 * 8,
        4 * 6 * 16 * 6 * 3,
        5 * 64 * 2 * 5,
    ]


def test_widths_of_the_wrong_length_are_refused_by_layer():
    from jpq_env.core.costs import layer_counts

    graph = _graph(LeNet5(), (1, 1, 28, 28))
    bits = [np.full(x.out_channels, 8) for x in graph.layers]
    acts = [8] * len(graph.layers)
    counts = layer_counts(graph, bits, acts)
    assert counts.size_bits.sum() == sum(x.weight_params for x in graph.layers) * 8
    # One kernel moved from layer 1 to layer 0: the total matches, the layers do not.
    moved = [np.full(len(bits[0]) + 1, 8), np.full(len(bits[1]) - 1, 8), *bits[2:]]
    with pytest.raises(ValueError, match="kernels per layer"):
        layer_counts(graph, moved, acts)
    fresh = _graph(LeNet5(), (1, 1, 28, 28))  # nothing cached: the masks are checked first
    with pytest.raises(ValueError, match="keep masks have"):
        layer_counts(fresh, moved, acts)
    assert np.array_equal(layer_counts(fresh, bits, acts).bops, counts.bops)
