"""JPQWeightsActs-v0: activation widths as a layer decision."""

import numpy as np
import pytest
import torch
from torch import nn

from jpq_env.core.costs import measure
from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import LayerPolicy, Policy
from jpq_env.envs import JPQEnv
from jpq_env.envs.wrappers import MultiDiscreteView

ACTS = [2, 3, 4, 5, 6, 8]


@pytest.fixture(scope="module")
def v1() -> JPQEnv:
    return JPQEnv(act_bits=ACTS, budget_bops=1 / 128)


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


def test_layer_decision_picks_the_activation_width(v1: JPQEnv):
    assert v1.action_space.shape == (2 + 4,) and v1.decides_act
    v1.reset(seed=0)
    for level, layer in ((1, 0), (2, 1)):
        a = np.zeros(v1.action_size, dtype=np.float32)
        a[0] = -1.0  # no pruning
        a[1] = v1.encode_levels([level], len(ACTS))[0]
        info = v1.step(a)[4]
        # The first layer reads the network input, counted at 8 bits whatever is proposed.
        assert info["applied_act_bits"] == (8 if layer == 0 else ACTS[level])
        low = np.full(v1.action_size, -1.0, dtype=np.float32)  # cheapest widths: never walled
        v1.step(low)
    assert v1.decisions[1].act_bits == 4


def test_wall_and_lowering_cover_activation_bits(v1: JPQEnv):
    rich = np.ones(v1.action_size, dtype=np.float32)
    rich[0] = -1.0  # no pruning, 8-bit activations and weights: far above 1/128
    v1.reset(seed=0)
    infos = []
    done = False
    while not done:
        _, _, done, _, info = v1.step(rich)
        infos.append(info)
    lowered = [i for i in infos if i.get("applied_act_bits", 99) < i.get("proposed_act_bits", 0)]
    assert lowered and infos[-1]["budget_met"]
    lowering = JPQEnv(
        act_bits=ACTS, budget_bops=1 / 256, enforcement="lowering", evaluator=v1.evaluator
    )
    lowering.reset(seed=0)
    done = False
    while not done:
        _, _, done, _, info = lowering.step(rich)
    assert info["budget_met"] and info["bops_ratio"] <= 1 / 256
    assert min(layer["act_bits"] for layer in info["policy"]) < 8


def test_random_episodes_at_a_256th_stay_within_budget(v1: JPQEnv):
    env = JPQEnv(act_bits=ACTS, budget_bops=1 / 256, evaluator=v1.evaluator)
    env.action_space.seed(0)
    for _ in range(5):
        env.reset()
        done = False
        while not done:
            _, _, done, _, info = env.step(env.action_space.sample())
        assert info["budget_met"]


def test_multidiscrete_view_has_an_activation_dimension(v1: JPQEnv):
    view = MultiDiscreteView(v1, sparsity_levels=5)
    assert view.action_space.nvec.tolist() == [5, 6, 6, 6, 6, 6]
    view.reset(seed=0)
    masks = view.action_masks()
    assert masks[5:11].tolist() == [False] * 5 + [True]  # first layer: input width is fixed
    view.step(np.array([0, 5, 5, 5, 5, 5]))
    assert view.action_masks()[5:11].all()
    view.step(np.array([0, 2, 0, 0, 0, 0]))
    assert v1.decisions[1].act_bits <= 4
