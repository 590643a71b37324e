"""The decision space (``jpq_env.envs.decisions.DecisionSpace``): what each layer may take, how a
channel decision's groups cover its kernels, and what a set of decisions costs.

Every expectation is computed here independently: the layer sizes of ``tests.nets.PlainNet`` by
hand, the groups with ``numpy.array_split``, the channel order with a loop over the ranking, the
costs with ``jpq_env.core.costs.measure`` of the same policy.
"""

import numpy as np
import pytest
import torch

from jpq_env.core.costs import measure
from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import Conventions, LayerPolicy, Policy
from jpq_env.envs.budget import Budget
from jpq_env.envs.decisions import DecisionSpace
from tests.nets import PlainNet, UpsampleNet, randomize_bn

BITS = (2, 3, 4, 8)
ACT_BITS = (4, 8)
# PlainNet: conv1 8 kernels (reads the input), conv2 12, fc1 16, fc2 5 (the output).
KERNELS = [8, 12, 16, 5]


def _graph(net: torch.nn.Module = PlainNet) -> LayerGraph:  # type: ignore[assignment]
    return LayerGraph.from_module(randomize_bn(net()), torch.randn(1, 3, 8, 8))


def _orders(graph: LayerGraph, seed: int = 0) -> list[np.ndarray]:
    """Arbitrary rankings: the space must follow whatever order it is given."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(x.out_channels) for x in graph.layers]


def _space(graph: LayerGraph, **kwargs) -> DecisionSpace:
    args = {
        "bits": BITS,
        "act_bits": ACT_BITS,
        "max_sparsity": 0.8,
        "conventions": Conventions(),
        "channel_groups": 4,
    }
    return DecisionSpace(graph, _orders(graph), **(args | kwargs))


@pytest.fixture(scope="module")
def graph() -> LayerGraph:
    return _graph()


def test_the_test_net_has_the_layers_counted_here(graph: LayerGraph):
    assert [x.out_channels for x in graph.layers] == KERNELS
    assert graph.input_layers == {0} and graph.output_layers == {3}


def test_max_pruned_is_the_floor_of_the_share_and_zero_where_nothing_may_be_pruned(graph):
    space = _space(graph)
    # floor(0.8 x k): 6.4 -> 6, 9.6 -> 9, 12.8 -> 12; the output layer prunes nothing.
    assert [space.max_pruned(i) for i in range(4)] == [6, 9, 12, 0]
    exact = _space(graph, max_sparsity=0.75)  # 0.75 x 8 = 6 and 0.75 x 12 = 9 exactly
    assert [exact.max_pruned(i) for i in range(4)] == [6, 9, 12, 0]
    # 0.35 x 12 = 4.2 -> 4 and 0.5 x 16 = 8.
    assert _space(graph, max_sparsity=0.35).max_pruned(1) == 4
    assert _space(graph, max_sparsity=0.5).max_pruned(2) == 8
    almost_all = _space(graph, max_sparsity=1 - 1e-12)  # floor would be k: one kernel stays
    assert [almost_all.max_pruned(i) for i in range(3)] == [7, 11, 15]
    none = _space(graph, max_sparsity=0.0)
    assert [none.max_pruned(i) for i in range(4)] == [0, 0, 0, 0]
    pinned = _space(graph, conventions=Conventions(first_last_bits=8))
    assert [pinned.max_pruned(i) for i in range(4)] == [0, 9, 12, 0]  # first and last pinned


def test_n_pruned_rounds_the_proposed_share_within_what_the_layer_allows(graph):
    space = _space(graph)
    assert [space.n_pruned(1, s) for s in (0.0, 0.2, 0.5, 0.75, 0.99)] == [0, 2, 6, 9, 9]
    assert [space.n_pruned(0, s) for s in (0.1, 0.4, 0.8)] == [1, 3, 6]  # round(0.8 x 8) = 6
    assert space.n_pruned(3, 0.9) == 0


def test_decision_puts_the_widths_in_importance_order_and_applies_the_conventions(graph):
    space = _space(graph, conventions=Conventions(input_bits=8, first_last_bits=None))
    layer, n = 1, 4
    kept = np.array([8, 8, 4, 4, 4, 3, 3, 2])  # most important first
    d = space.decision(layer, n, kept, act=4)
    order = space.orders[layer]
    expected = np.zeros(12, dtype=np.int64)
    for rank, kernel in enumerate(order):
        expected[kernel] = kept[rank] if rank < 12 - n else 0
    assert d.bits.tolist() == expected.tolist()
    assert d.ranked_bits.tolist() == [*kept.tolist(), 0, 0, 0, 0] and d.n_pruned == n
    assert d.act_bits == 4 and d.kept_mean_bits == pytest.approx(kept.mean())
    # The network input is read at 8 bits whatever is proposed; pinned layers get one width.
    assert space.decision(0, 0, np.full(8, 2), act=4).act_bits == 8
    pinned = _space(graph, conventions=Conventions(first_last_bits=6))
    last = pinned.decision(3, 0, np.array([2, 3, 4, 8, 2]), act=4)
    assert last.bits.tolist() == [6] * 5 and last.act_bits == 4
    assert pinned.pinned_bits == {0: 6, 3: 6} and pinned.fixed_act == {0: 8}


@pytest.mark.parametrize("slots", [1, 3, 4, 7])
@pytest.mark.parametrize("kept", [0, 1, 2, 5, 9, 16])
def test_groups_are_numpy_array_split_of_the_kept_kernels(graph, slots, kept):
    space = _space(graph, channel_groups=slots)
    chunks = np.array_split(np.arange(kept), slots)
    assert space.group_sizes(kept).tolist() == [len(c) for c in chunks]
    assert [g.tolist() for g in space.groups(kept)] == [c.tolist() for c in chunks]
    levels = np.arange(slots)[::-1]  # a different level per group
    by_hand = [int(levels[g]) for g, c in enumerate(chunks) for _ in c]
    assert space.kernel_levels(levels, kept).tolist() == by_hand
    assert space.channel_slots == slots and not space.per_kernel


def test_per_kernel_channel_decisions_give_each_kernel_its_own_slot(graph):
    space = _space(graph, channel_groups=0)
    assert space.per_kernel and space.channel_slots == 16  # the widest layer's kernels
    assert [g.tolist() for g in space.groups(3)] == [[0], [1], [2]]
    levels = np.arange(16) % 4
    assert space.kernel_levels(levels, 5).tolist() == [0, 1, 2, 3, 0]


def test_most_aggressive_prunes_the_least_important_and_takes_the_lowest_widths(graph):
    space = _space(graph)
    for layer, k in enumerate(KERNELS):
        d = space.most_aggressive(layer)
        n = space.max_pruned(layer)
        least = set(space.orders[layer][k - n :].tolist())
        assert set(np.flatnonzero(d.bits == 0).tolist()) == least
        assert set(d.bits[d.bits > 0].tolist()) == {min(BITS)}
        assert d.act_bits == (8 if layer == 0 else min(ACT_BITS))  # the input's width is fixed
        assert space.most_aggressive(layer) is d  # computed once


def _random_decisions(space: DecisionSpace, rng: np.random.Generator, undecided: float = 0.3):
    out = []
    for layer, x in enumerate(space.graph.layers):
        if rng.random() < undecided:
            out.append(None)
            continue
        n = int(rng.integers(0, space.max_pruned(layer) + 1))
        kept = rng.choice(BITS, x.out_channels - n)
        out.append(space.decision(layer, n, kept, int(rng.choice(ACT_BITS))))
    return out


def _policy_by_hand(space: DecisionSpace, decisions) -> Policy:
    """The policy of ``decisions`` built here: undecided layers at their cheapest."""
    layers = []
    for layer, (x, d) in enumerate(zip(space.graph.layers, decisions, strict=True)):
        if d is None:
            n, k = space.max_pruned(layer), x.out_channels
            order = space.orders[layer]
            bits = np.full(k, min(BITS))
            bits[order[k - n :]] = 0
            act = 8 if layer in space.graph.input_layers else min(ACT_BITS)
            layers.append(LayerPolicy(x.name, bits, act))
        else:
            layers.append(LayerPolicy(x.name, d.bits, d.act_bits))
    return Policy(tuple(layers), space.graph.fingerprint)


@pytest.mark.parametrize("net", [PlainNet, UpsampleNet], ids=["plain", "with-uncompressed"])
def test_ratios_are_the_measured_costs_of_the_same_policy(net):
    graph = _graph(net)
    space = _space(graph)
    rng = np.random.default_rng(1)
    for _ in range(20):
        decisions = _random_decisions(space, rng)
        policy = _policy_by_hand(space, decisions)
        assert space.policy(decisions) == policy
        cost = measure(graph, policy)
        bops, size = space.ratios(decisions)
        assert bops == pytest.approx(cost.bops_ratio, rel=1e-12)
        assert size == pytest.approx(cost.size_ratio, rel=1e-12)
        per_layer_bops, per_layer_size = space.layer_costs(decisions)
        assert per_layer_bops.tolist() == [c.bops for c in cost.layers]
        assert per_layer_size.tolist() == [c.size_bits for c in cost.layers]
    fp32 = measure(graph, Policy.uniform(graph))
    assert (space.fp32_bops, space.fp32_size) == (fp32.bops, fp32.size_bits)
    assert (space.fixed_bops, space.fixed_size) == (
        fp32.uncompressed_bops,
        fp32.uncompressed_size_bits,
    )
    if net is UpsampleNet:
        assert space.fixed_bops > 0  # the transposed conv is in every policy's costs


def test_fits_and_feasible_compare_the_measured_ratios_with_the_budget(graph):
    space = _space(graph)
    cheapest = measure(graph, _policy_by_hand(space, [None] * 4))
    assert space.feasible(Budget(bops=cheapest.bops_ratio))
    assert not space.feasible(Budget(bops=cheapest.bops_ratio * 0.99))
    assert not space.feasible(Budget(bops=1.0, size=cheapest.size_ratio * 0.99))
    rng = np.random.default_rng(2)
    for _ in range(20):
        decisions = _random_decisions(space, rng)
        cost = measure(graph, _policy_by_hand(space, decisions))
        for target in (cost.bops_ratio * 0.999, cost.bops_ratio * 1.001):
            budget = Budget(bops=target)
            assert space.fits(budget, decisions) == (cost.bops_ratio <= target)


def test_policy_fills_undecided_layers_with_what_it_is_given(graph):
    space = _space(graph)
    full = space.decision(2, 0, np.full(16, 8), 8)

    def fill(layer: int):
        return full if layer == 2 else space.most_aggressive(layer)

    assert space.policy([None] * 4, fill=fill) == space.policy([None, None, full, None])
    policy = space.policy([None, None, full, None])
    assert policy.layers[2].bits.tolist() == [8] * 16
    assert policy.layers[1] == _policy_by_hand(space, [None] * 4).layers[1]


@pytest.mark.parametrize("net_name", ["ResidualNet", "SeparableNet", "ConcatNet", "OptionANet"])
def test_costs_reused_from_recent_checks_equal_a_fresh_count(net_name):
    """The budget checks reuse recent counts (widths of one layer changed: only it is counted
    again; kernels pruned: liveness propagated from the first changed layer): every
    answer must equal a count from scratch on a fresh graph, over a long random walk."""
    import tests.nets as nets
    from jpq_env.core.costs import layer_counts

    net = getattr(nets, net_name)
    x = torch.randn(1, 3, 4, 4) if net_name == "ConcatNet" else torch.randn(1, 3, 8, 8)
    graph = LayerGraph.from_module(randomize_bn(net()), x)
    fresh = LayerGraph.from_module(randomize_bn(net()), x)
    space = _space(graph)
    rng = np.random.default_rng(1)
    decisions: list = [None] * len(graph)
    for _ in range(300):
        layer = int(rng.integers(len(graph)))
        k = graph.layers[layer].out_channels
        old = decisions[layer]
        n = int(rng.integers(space.max_pruned(layer) + 1))
        if old is not None and rng.random() < 0.5:
            n = old.n_pruned  # widths only: the same kernels kept
        trial = list(decisions)
        trial[layer] = space.decision(layer, n, rng.choice(BITS, k - n), int(rng.choice(ACT_BITS)))
        got = space.counts(trial)
        full = [d if d is not None else space.most_aggressive(i) for i, d in enumerate(trial)]
        want = layer_counts(fresh, [d.bits for d in full], [d.act_bits for d in full])
        for field in ("macs", "bops", "size_bits"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
        for a, b in zip(got.live.alive_in, want.live.alive_in, strict=True):
            np.testing.assert_array_equal(a, b)
        if rng.random() < 0.6:
            decisions = trial  # the walk moves on (else the next trial starts from the same)
