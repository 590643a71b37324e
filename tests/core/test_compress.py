"""The compressed view (``jpq_env.core.compress``): policies applied and restored bitwise, pruning
equal to physical removal, quantized weights, activation ranges.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jpq_env.core.compress import CompressedModel, calibrate_ranges
from jpq_env.core.graph import GraphError, LayerGraph
from jpq_env.core.policy import LayerPolicy, Policy, PolicyError
from tests.nets import PlainNet, ResidualNet, SeparableNet, randomize_bn


def _setup(model: nn.Module, shape=(2, 3, 8, 8), seed=0):
    torch.manual_seed(seed)
    model = randomize_bn(model, seed)
    x = torch.randn(*shape)
    graph = LayerGraph.from_module(model, x[:1])
    return model, graph, x


def _policy(graph: LayerGraph, bits, act=None) -> Policy:
    act = act or [32] * len(graph)
    return Policy(
        tuple(
            LayerPolicy(x.name, np.asarray(b), a)
            for x, b, a in zip(graph.layers, bits, act, strict=True)
        ),
        graph.fingerprint,
    )


def _random_policy(graph: LayerGraph, rng: np.random.Generator) -> Policy:
    bits = []
    for x in graph.layers:
        b = rng.choice([0, 1, 2, 3, 4, 6, 8, 32], size=x.out_channels)
        if x.index in graph.output_layers:
            b[b == 0] = 8
        bits.append(b)
    return _policy(graph, bits, list(rng.choice([2, 4, 8, 32], size=len(graph))))


def test_thousand_random_policies_leave_the_model_bitwise_unchanged():
    model, graph, x = _setup(ResidualNet())
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        reference = model(x)
    ranges = calibrate_ranges(model, graph, [x])
    cm = CompressedModel(model, graph, act_ranges=ranges)
    rng = np.random.default_rng(0)
    for _ in range(1000):
        cm.apply(_random_policy(graph, rng))
        with torch.no_grad():
            cm.module(x)
    for k, v in model.state_dict().items():
        assert torch.equal(v, original[k]), k
    cm.restore()
    for k, v in cm.module.state_dict().items():  # the working copy itself comes back bitwise
        assert torch.equal(v, original[k]), k
    with torch.no_grad():
        assert torch.equal(cm.module(x), reference)
        assert torch.equal(model(x), reference)


def test_all_32_bits_reproduce_fp32_logits():
    for net in (PlainNet(), ResidualNet(), SeparableNet()):
        model, graph, x = _setup(net)
        cm = CompressedModel(model, graph, act_ranges=calibrate_ranges(model, graph, [x]))
        cm.apply(_random_policy(graph, np.random.default_rng(1)))
        cm.apply(Policy.uniform(graph, 32, 32))
        with torch.no_grad():
            assert torch.equal(cm.module(x), model(x))


def _physically_pruned_plain_net(model: PlainNet, keep1, keep2, keep3) -> nn.Module:
    """PlainNet with channels removed by slicing tensors: written independently of the code."""

    def bn(src: nn.BatchNorm2d, keep) -> nn.BatchNorm2d:
        out = nn.BatchNorm2d(len(keep)).eval()
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out, name).data.copy_(getattr(src, name).data[keep])
        return out

    feats = np.concatenate([np.arange(c * 16, c * 16 + 16) for c in keep2])

    class Pruned(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1 = model.conv1.weight.data[keep1]
            self.bn1 = bn(model.bn1, keep1)
            self.w2 = model.conv2.weight.data[keep2][:, keep1]
            self.b2 = model.conv2.bias.data[keep2]
            self.bn2 = bn(model.bn2, keep2)
            self.w3 = model.fc1.weight.data[keep3][:, feats]
            self.b3 = model.fc1.bias.data[keep3]
            self.w4 = model.fc2.weight.data[:, keep3]
            self.b4 = model.fc2.bias.data

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.bn1(F.conv2d(x, self.w1, padding=1)))
            x = F.max_pool2d(F.relu(self.bn2(F.conv2d(x, self.w2, self.b2, padding=1))), 2)
            x = F.relu(F.linear(torch.flatten(x, 1), self.w3, self.b3))
            return F.linear(x, self.w4, self.b4)

    return Pruned().eval()


def test_zero_bits_equal_physical_removal():
    model, graph, x = _setup(PlainNet(), shape=(16, 3, 8, 8))
    cm = CompressedModel(model, graph)
    rng = np.random.default_rng(3)
    for _ in range(5):
        keep = [
            np.sort(rng.choice(n, size=k, replace=False)) for n, k in ((8, 5), (12, 7), (16, 9))
        ]
        bits = [np.zeros(8, int), np.zeros(12, int), np.zeros(16, int), np.full(5, 32)]
        for b, k in zip(bits, keep, strict=False):
            b[k] = 32
        cm.apply(_policy(graph, bits))
        physical = _physically_pruned_plain_net(model, *keep)
        with torch.no_grad():
            torch.testing.assert_close(cm.module(x), physical(x), rtol=1e-5, atol=1e-5)


def test_pruned_channels_are_zero_downstream_in_a_residual_net():
    model, graph, x = _setup(ResidualNet())
    cm = CompressedModel(model, graph)
    bits = [np.full(n.out_channels, 32) for n in graph.layers]
    bits[0][[1, 2]] = 0
    bits[2][[2, 6]] = 0
    cm.apply(_policy(graph, bits))
    seen = {}
    cm.module.bn0.register_forward_hook(lambda m, i, o: seen.setdefault("bn0", o))
    cm.module.bnb.register_forward_hook(lambda m, i, o: seen.setdefault("bnb", o))
    with torch.no_grad():
        cm.module(x)
    assert seen["bn0"][:, [1, 2]].abs().max() == 0 and seen["bn0"][:, 0].abs().max() > 0
    assert seen["bnb"][:, [2, 6]].abs().max() == 0


def test_applied_weights_are_the_quantized_originals():
    model, graph, _ = _setup(PlainNet())
    cm = CompressedModel(model, graph)
    bits = [np.full(n.out_channels, 4) for n in graph.layers]
    bits[1][0] = 0
    cm.apply(_policy(graph, bits))
    w = model.conv2.weight.detach()
    q = cm.module.conv2.weight.detach()
    assert torch.equal(q[0], torch.zeros_like(q[0])) and cm.module.conv2.bias[0] == 0
    scale = w[1].abs().max() / 7
    torch.testing.assert_close(q[1], torch.clamp(torch.round(w[1] / scale), -7, 7) * scale)
    # fc1 reads conv2's dead channel 0 (features 0..15): those weights are no longer counted but
    # may stay; the channel is zero, so the output equals removing them.
    assert cm.module.bn2.weight[0] == 0 and cm.module.bn2.bias[0] == 0


def test_bad_policies_are_refused_and_change_nothing():
    model, graph, x = _setup(PlainNet())
    other = LayerGraph.from_module(ResidualNet(), torch.randn(1, 3, 8, 8))
    cm = CompressedModel(model, graph)
    cm.apply(Policy.uniform(graph, 8, 32))
    with torch.no_grad():
        before = cm.module(x)
    with pytest.raises(PolicyError, match="made for another model"):
        cm.apply(Policy.uniform(other, 8, 32))
    with pytest.raises(PolicyError, match="weight bit-width 5 is outside the allowed set"):
        cm.apply(Policy.uniform(graph, 5, 32), allowed_bits=[0, 2, 4, 8])
    bits = [np.full(n.out_channels, 8) for n in graph.layers]
    bits[3][0] = 0
    with pytest.raises(PolicyError, match="'fc2' produces the network's output"):
        cm.apply(_policy(graph, bits))
    bits[3][0] = 8
    bits[1] = bits[1][:5]
    with pytest.raises(PolicyError, match="layer 'conv2': expected 12 bit-widths, got 5"):
        cm.apply(_policy(graph, bits))
    with pytest.raises(ValueError, match="need calibrated ranges"):
        cm.apply(Policy.uniform(graph, 8, 8))
    with torch.no_grad():
        assert torch.equal(cm.module(x), before)


def test_activation_ranges_are_the_observed_input_ranges():
    model, graph, x = _setup(PlainNet(), shape=(8, 3, 8, 8))
    ranges = calibrate_ranges(model, graph, [x[:4], x[4:]])
    assert ranges[0].lo == float(x.min()) and ranges[0].hi == float(x.max())
    with torch.no_grad():
        h = F.relu(model.bn1(model.conv1(x)))
    assert ranges[1].lo == 0.0 and ranges[1].hi == pytest.approx(float(h.max()))
    clipped = calibrate_ranges(model, graph, [x], method="percentile", percentile=90.0)
    assert clipped[0].hi < ranges[0].hi and clipped[0].lo > ranges[0].lo


def test_pickled_working_copy_applies_and_restores_like_the_original():
    import pickle

    model, graph, x = _setup(ResidualNet())
    cm = CompressedModel(model, graph, act_ranges=calibrate_ranges(model, graph, [x]))
    policy = _random_policy(graph, np.random.default_rng(5))
    cm.apply(policy)
    clone = pickle.loads(pickle.dumps(cm))
    other = _random_policy(graph, np.random.default_rng(6))
    cm.apply(other)
    clone.apply(other)
    with torch.no_grad():
        assert torch.equal(cm.module(x), clone.module(x))
        clone.restore()
        assert torch.equal(clone.module(x), model(x))


def test_a_parametrized_layer_is_refused_and_compresses_once_folded():
    # A parametrization recomputes the weight on every call, so a compressed weight written into
    # it would never be used: refused with the call that folds it; folded, it compresses.
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    model[0] = nn.utils.parametrizations.weight_norm(model[0])
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(GraphError, match=r"remove_parametrizations\(model.get_submodule\('0'\)"):
        LayerGraph.from_module(model, x[:1])
    nn.utils.parametrize.remove_parametrizations(model[0], "weight")
    graph = LayerGraph.from_module(model, x[:1])
    cm = CompressedModel(model, graph)
    policy = Policy.uniform(graph, 2, 32)
    policy.layers[0].bits[1] = 0
    cm.apply(policy)
    weight = cm.module[0].weight.detach()
    assert torch.equal(weight[1], torch.zeros_like(weight[1]))  # pruned: zero
    for k in (0, 2, 3):  # 2 bits: levels -1, 0, 1 times one scale
        assert len(torch.unique(weight[k])) <= 3
    cm.restore()
    with torch.no_grad():
        assert torch.equal(cm.module(x), model(x))
