"""Channel wiring through the graph (``jpq_env.core.graph.channels``): flatten, residual adds,
depthwise and grouped convs, concatenation, external inputs; then what it means for costs (by hand)
and for the compressed model (masking equal to physical removal).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jpq_env.core.compress import CompressedModel
from jpq_env.core.costs import measure
from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import LayerPolicy, Policy
from tests.nets import ConcatNet, PlainNet, ResidualNet, SeparableNet, randomize_bn


class DepthwiseSeparable(nn.Module):
    """conv 3->8 + BN + ReLU, depthwise 3x3 (8 groups) + BN + ReLU, pointwise 8->12 + BN + ReLU,
    global average pool, linear 12->4 (a MobileNet block)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dwbn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 12, 1, bias=False)
        self.pwbn = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu(self.dwbn(self.dw(x)))
        x = F.relu(self.pwbn(self.pw(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ProjectionResidual(nn.Module):
    """stem 3->4; a 4->6 stride 2; b 6->6; shortcut 1x1 4->6 stride 2; add; head 1x1 6->5; fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.short = nn.Conv2d(4, 6, 1, stride=2)
        self.head = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.stem(x))
        out = F.relu(self.b(F.relu(self.a(s))) + self.short(s))
        out = F.relu(self.head(out))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _policy(graph: LayerGraph, bits: list[np.ndarray], act: list[int] | None = None) -> Policy:
    act = act or [32] * len(graph)
    layers = (LayerPolicy(x.name, b, a) for x, b, a in zip(graph.layers, bits, act, strict=True))
    return Policy(tuple(layers), graph.fingerprint)


def _keep_bits(graph: LayerGraph, keep: dict[str, np.ndarray]) -> list[np.ndarray]:
    """32 bits for kept kernels, 0 for the others (layers not named keep everything)."""
    bits = []
    for x in graph.layers:
        b = np.full(x.out_channels, 32)
        if x.name in keep:
            b[:] = 0
            b[keep[x.name]] = 32
        bits.append(b)
    return bits


def test_projection_shortcut_costs_by_hand():
    g = LayerGraph.from_module(ProjectionResidual(), torch.zeros(1, 3, 8, 8))
    assert g.names == ("stem", "a", "b", "short", "head", "fc")
    bits = [np.full(x.out_channels, 4) for x in g.layers]
    bits[0][[3]] = 0  # stem: a and short lose input 3
    bits[1][[0, 5]] = 0  # a: b loses inputs 0 and 5
    bits[2][[0, 1, 4]] = 0  # b and short both drop channel 1: only it dies after the add
    bits[3][[1, 2]] = 0
    cost = measure(g, _policy(g, bits, [8] * 6))
    macs = [c.macs for c in cost.layers]
    assert macs[0] == 3 * 3 * 9 * 64  # 3 kernels x 3 inputs x 3x3 x 8x8
    assert macs[1] == 4 * 3 * 9 * 16  # 4 kernels x 3 live stem channels, 4x4 output
    assert macs[2] == 3 * 4 * 9 * 16  # 3 kernels x 4 live a channels
    assert macs[3] == 4 * 3 * 1 * 16  # 4 kernels x 3 live stem channels, 1x1
    assert cost.layers[4].kept_in == 5  # union: channel 1 is the only one dead in both
    assert macs[4] == 5 * 5 * 16
    assert macs[5] == 3 * 5
    assert cost.bops == sum(m * 4 * 8 for m in macs)


def test_depthwise_separable_costs_by_hand():
    g = LayerGraph.from_module(DepthwiseSeparable(), torch.zeros(1, 3, 6, 6))
    bits = [np.full(x.out_channels, 32) for x in g.layers]
    bits[0][[0, 2, 7]] = 0  # conv: the depthwise kernels 0, 2, 7 lose their only input
    bits[1][[4]] = 0  # and depthwise kernel 4 is pruned itself: 4 of 8 survive
    bits[1][[5]] = 3
    bits[2][[1, 11]] = 0
    cost = measure(g, _policy(g, bits, [8] * 4))
    assert [c.kept_out for c in cost.layers] == [5, 4, 10, 4]
    assert [c.macs for c in cost.layers] == [5 * 3 * 9 * 36, 4 * 1 * 9 * 36, 10 * 4 * 36, 4 * 10]
    assert cost.layers[1].bops == (3 * 32 + 1 * 3) * 9 * 36 * 8
    assert cost.layers[1].size_bits == (3 * 32 + 3) * 9


def _bn(src: nn.BatchNorm2d, keep: np.ndarray) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(len(keep)).eval()
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(out, name).data.copy_(getattr(src, name).data[keep])
    return out


def _slim_separable(m: DepthwiseSeparable, k_dw: np.ndarray, k_pw: np.ndarray) -> nn.Module:
    """Only channels alive through conv *and* depthwise survive: slice all tensors to them."""
    slim = DepthwiseSeparable()
    n, p = len(k_dw), len(k_pw)
    slim.conv = nn.Conv2d(3, n, 3, padding=1, bias=False)
    slim.conv.weight.data = m.conv.weight.data[k_dw].clone()
    slim.bn = _bn(m.bn, k_dw)
    slim.dw = nn.Conv2d(n, n, 3, padding=1, groups=n, bias=False)
    slim.dw.weight.data = m.dw.weight.data[k_dw].clone()
    slim.dwbn = _bn(m.dwbn, k_dw)
    slim.pw = nn.Conv2d(n, p, 1, bias=False)
    slim.pw.weight.data = m.pw.weight.data[k_pw][:, k_dw].clone()
    slim.pwbn = _bn(m.pwbn, k_pw)
    slim.fc = nn.Linear(p, 4)
    slim.fc.weight.data = m.fc.weight.data[:, k_pw].clone()
    slim.fc.bias.data = m.fc.bias.data.clone()
    return slim.eval()


def test_depthwise_separable_masking_equals_physical_removal():
    torch.manual_seed(0)
    model = randomize_bn(DepthwiseSeparable())
    x = torch.randn(4, 3, 6, 6)
    g = LayerGraph.from_module(model, x[:1])
    cm = CompressedModel(model, g)
    rng = np.random.default_rng(1)
    for _ in range(5):
        k_conv = np.sort(rng.choice(8, size=6, replace=False))
        k_dw_own = np.sort(rng.choice(8, size=6, replace=False))
        k_pw = np.sort(rng.choice(12, size=7, replace=False))
        cm.apply(_policy(g, _keep_bits(g, {"conv": k_conv, "dw": k_dw_own, "pw": k_pw})))
        alive = np.intersect1d(k_conv, k_dw_own)  # a depthwise channel needs its input and itself
        slim = _slim_separable(model, alive, k_pw)
        with torch.no_grad():
            torch.testing.assert_close(cm.module(x), slim(x), rtol=1e-5, atol=1e-5)
        assert measure(g, _policy(g, _keep_bits(g, {"dw": k_dw_own}))).layers[1].kept_out == 6


class _SlimResidual(nn.Module):
    def __init__(self, m: ResidualNet, k_main: np.ndarray, k_a: np.ndarray, k_head: np.ndarray):
        super().__init__()
        self.ws, self.bs = m.stem.weight.data[k_main], m.stem.bias.data[k_main]
        self.bn0 = _bn(m.bn0, k_main)
        self.wa, self.ba = m.a.weight.data[k_a][:, k_main], m.a.bias.data[k_a]
        self.bna = _bn(m.bna, k_a)
        self.wb, self.bb = m.b.weight.data[k_main][:, k_a], m.b.bias.data[k_main]
        self.bnb = _bn(m.bnb, k_main)
        self.wh, self.bh = m.head.weight.data[k_head][:, k_main], m.head.bias.data[k_head]
        self.wf, self.bf = m.fc.weight.data[:, k_head], m.fc.bias.data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.bn0(F.conv2d(x, self.ws, self.bs, padding=1)))
        a = F.relu(self.bna(F.conv2d(s, self.wa, self.ba, padding=1)))
        out = F.relu(self.bnb(F.conv2d(a, self.wb, self.bb, padding=1)) + s)
        out = F.adaptive_avg_pool2d(F.relu(F.conv2d(out, self.wh, self.bh)), 1)
        return F.linear(torch.flatten(out, 1), self.wf, self.bf)


def test_residual_masking_equals_physical_removal_when_both_operands_drop_a_channel():
    # A channel of the residual stream can only be removed physically when the stem and the
    # block's last conv both drop it (the union rule): prune the same channels in both.
    torch.manual_seed(2)
    model = randomize_bn(ResidualNet(), seed=2)
    x = torch.randn(4, 3, 8, 8)
    g = LayerGraph.from_module(model, x[:1])
    cm = CompressedModel(model, g)
    rng = np.random.default_rng(3)
    for _ in range(5):
        k_main = np.sort(rng.choice(8, size=5, replace=False))
        k_a = np.sort(rng.choice(8, size=6, replace=False))
        k_head = np.sort(rng.choice(6, size=4, replace=False))
        keep = {"stem": k_main, "a": k_a, "b": k_main, "head": k_head}
        policy = _policy(g, _keep_bits(g, keep))
        cm.apply(policy)
        with torch.no_grad():
            torch.testing.assert_close(
                cm.module(x), _SlimResidual(model, k_main, k_a, k_head)(x), rtol=1e-5, atol=1e-5
            )
        assert measure(g, policy).layers[3].kept_in == 5


class GroupedChain(nn.Module):
    """conv1 3->4; conv2 4->6 in 2 groups (kernels 0-2 read inputs 0-1, kernels 3-5 inputs 2-3);
    global average pool; linear 6->3. Biases everywhere: a kernel that sees no live input still
    outputs a constant, ReLU(bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_a_kernel_whose_live_inputs_are_all_pruned_is_removed_and_its_constant_dropped():
    # Pruning conv1's kernels 0 and 1 leaves conv2's first group (kernels 0-2) without a live
    # input: those kernels are removed too (not only depthwise ones), and fc loses their features.
    torch.manual_seed(0)
    model = GroupedChain().eval()
    with torch.no_grad():
        model.conv2.bias.copy_(torch.linspace(0.5, 1.0, 6))  # ReLU(bias) > 0: a real constant
    x = torch.randn(2, 3, 5, 5)
    g = LayerGraph.from_module(model, x[:1])
    bits = _keep_bits(g, {"conv1": np.array([2, 3])})
    cost = measure(g, _policy(g, bits, [8] * 3))
    assert [c.kept_out for c in cost.layers] == [2, 3, 3]
    assert [c.kept_in for c in cost.layers] == [3, 2, 3]
    # By hand: conv1 2 kernels x 3 inputs x 3x3 x 5x5; conv2 3 kernels (group 1) x 2 inputs
    # x 3x3 x 5x5; fc 3 outputs x 3 live features. Weights at 32 bits, inputs at 8.
    macs = [2 * 3 * 9 * 25, 3 * 2 * 9 * 25, 3 * 3]
    assert [c.macs for c in cost.layers] == macs
    assert cost.bops == sum(m * 32 * 8 for m in macs)
    assert cost.size_bits == (2 * 3 * 9 + 3 * 2 * 9 + 3 * 3) * 32
    # The compressed view drops the removed kernels' constant output (it is not folded into fc's
    # bias): it computes exactly the physically smaller network below.
    cm = CompressedModel(model, g)
    cm.apply(_policy(g, bits))
    w1, b1 = model.conv1.weight.data[2:], model.conv1.bias.data[2:]
    w2, b2 = model.conv2.weight.data[3:], model.conv2.bias.data[3:]
    wf, bf = model.fc.weight.data[:, 3:], model.fc.bias.data

    def slim(inp: torch.Tensor, fold: bool = False) -> torch.Tensor:
        h = F.relu(F.conv2d(F.relu(F.conv2d(inp, w1, b1, padding=1)), w2, b2, padding=1))
        const = model.fc.weight.data[:, :3] @ F.relu(model.conv2.bias.data[:3])
        return F.linear(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1), wf, bf + fold * const)

    with torch.no_grad():
        torch.testing.assert_close(cm.module(x), slim(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(cm.module(x), slim(x, fold=True), atol=1e-3)


def _graph(model: nn.Module, shape: tuple[int, ...]) -> LayerGraph:
    return LayerGraph.from_module(model, torch.randn(*shape))


def _producers(graph: LayerGraph, index: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {layer: (pos, ch) for layer, pos, ch in graph.sources[index].producers}


def test_flatten_maps_each_channel_to_its_spatial_block():
    g = _graph(PlainNet(), (1, 3, 8, 8))
    ((pos, ch),) = _producers(g, 2).values()
    # conv2's channel c becomes features c*16 .. c*16+15 after 2x2 pooling of an 8x8 map.
    expected = np.repeat(np.arange(12), 16)
    order = np.argsort(pos)
    assert np.array_equal(pos[order], np.arange(192))
    assert np.array_equal(ch[order], expected)
    assert not g.sources[2].external.any()


def test_residual_add_is_the_union_of_both_producers():
    g = _graph(ResidualNet(), (1, 3, 8, 8))
    assert g.names == ("stem", "a", "b", "head", "fc")
    assert set(_producers(g, 3)) == {0, 2}  # head reads stem (shortcut) + b
    kept = [np.ones(x.out_channels, bool) for x in g.layers]
    kept[0][[1, 2, 5]] = False  # stem drops 1, 2, 5
    kept[2][[2, 5, 7]] = False  # b drops 2, 5, 7
    live = g.liveness(kept)
    # head's input channel survives if stem or b keeps it: only 2 and 5 die.
    assert np.flatnonzero(~live.alive_in[3]).tolist() == [2, 5]
    assert np.flatnonzero(~live.alive_in[1]).tolist() == [1, 2, 5]  # a reads stem only
    assert np.flatnonzero(~live.bn_alive["bn0"]).tolist() == [1, 2, 5]
    assert np.flatnonzero(~live.bn_alive["bnb"]).tolist() == [2, 5, 7]


def test_depthwise_channels_follow_their_input_and_groups_die_together():
    g = _graph(SeparableNet(), (1, 3, 8, 8))
    _, dw, _, grouped, _ = g.layers
    assert dw.depthwise and dw.groups == 8 and dw.out_hw == (4, 4)
    assert dw.macs == 8 * 1 * 9 * 16
    assert grouped.groups == 2 and grouped.macs == 6 * 6 * 9 * 16 and not grouped.depthwise
    kept = [np.ones(x.out_channels, bool) for x in g.layers]
    kept[0][[0, 3]] = False
    kept[2][:6] = False  # every input of the grouped conv's first group
    live = g.liveness(kept)
    assert np.flatnonzero(~live.alive_out[1]).tolist() == [0, 3]  # dw follows conv
    assert np.flatnonzero(~live.bn_alive["dwbn"]).tolist() == [0, 3]
    assert np.flatnonzero(~live.alive_out[3]).tolist() == [0, 1, 2]  # group 0 has no input
    assert np.flatnonzero(~live.alive_in[4]).tolist() == [0, 1, 2]  # x.mean((2, 3)) keeps channels


def test_concat_offsets_the_second_operand():
    g = _graph(ConcatNet(), (1, 3, 4, 4))
    prods = _producers(g, 2)
    assert prods[0][0].tolist() == [0, 1, 2, 3] and prods[1][0].tolist() == [4, 5, 6, 7, 8, 9]
    assert prods[1][1].tolist() == list(range(6))
    # x.view(N, -1) after pooling to 2x2 is a flatten: fc reads 4 features per mix channel.
    ((pos, ch),) = _producers(g, 3).values()
    assert sorted(zip(pos.tolist(), ch.tolist(), strict=True)) == [(p, p // 4) for p in range(20)]


def test_network_input_and_unknown_ops_are_external():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(1, 4, 1)
            self.c2 = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c2(torch.sigmoid(self.c1(x)))  # sigmoid(0) != 0: cannot see through

    g = _graph(Scaled(), (1, 1, 2, 2))
    assert g.sources[0].external.all() and g.sources[1].external.all()
    assert not g.sources[1].producers
