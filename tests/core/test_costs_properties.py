"""Property-based tests of the cost model over random networks and random policies.

On networks drawn by ``tests.generated_nets``: a policy's BOPs and size never exceed FP32's, and
lowering any weight or activation width, or pruning one more kernel, never raises either
(monotonicity). Few examples and ``deadline=None``: a fast fuzz in CI, not an exhaustive search.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jpq_env import LayerGraph, LayerPolicy, Policy, measure
from tests.generated_nets import PROPERTY, WIDTHS, NetSpec, build, net_specs, policies


def test_generated_nets_cover_residual_and_depthwise_layers():
    spec = NetSpec(2, 4, (("conv", 4, True), ("dw", 0, False), ("res", 0, True)), 5, 3)
    model, example = build(spec)
    graph = LayerGraph.from_module(model, example)
    # conv, depthwise, two residual convs, two linear layers
    assert len(graph) == 6 and graph.layers[1].groups == 4
    assert model(example).shape == (1, 3)


@PROPERTY
@given(data=st.data(), spec=net_specs())
def test_costs_are_bounded_by_fp32_and_monotone(data: st.DataObject, spec: NetSpec):
    model, example = build(spec)
    graph = LayerGraph.from_module(model, example)
    policy = data.draw(policies(graph), label="policy")
    cost = measure(graph, policy)
    assert 0 <= cost.bops <= cost.bops_fp32 and 0 <= cost.size_bits <= cost.size_bits_fp32
    assert cost.macs <= cost.macs_fp32
    # One step lower somewhere: a kernel's width (0 = one more pruned kernel) or an input width.
    layer = data.draw(st.integers(0, len(graph) - 1), label="layer")
    lp = policy.layers[layer]
    bits, act = lp.bits.copy(), lp.act_bits
    if data.draw(st.booleans(), label="lower the activation width"):
        act = data.draw(st.sampled_from([w for w in WIDTHS[1:] if w <= act]), label="act")
    else:
        k = data.draw(st.integers(0, len(bits) - 1), label="kernel")
        floor = 1 if layer in graph.output_layers else 0
        bits[k] = data.draw(st.sampled_from([w for w in WIDTHS if floor <= w <= bits[k]]))
    lower = Policy(
        tuple(LayerPolicy(p.name, bits, act) if i == layer else p
              for i, p in enumerate(policy.layers)),
        policy.fingerprint,
    )  # fmt: skip
    after = measure(graph, lower)
    assert after.bops <= cost.bops and after.size_bits <= cost.size_bits
    assert after.macs <= cost.macs
