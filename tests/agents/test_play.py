"""Uniform plays (``jpq_agents.play``): the (weight, activation) width grid, what fits a budget
counted by hand, the least uniform pruning.
"""

import pytest

from jpq_agents.play import fits, least_uniform_pruning, level_pairs, uniform_choices
from jpq_env.envs import JPQEnv
from tests.episodes import ACTS


@pytest.fixture(scope="module")
def acts_env() -> JPQEnv:
    return JPQEnv(act_bits=ACTS, budget_bops=1 / 128)


def test_level_pairs_are_the_grid_most_bits_first(acts_env):
    pairs = level_pairs(acts_env)
    assert sorted(p for p in pairs) == [(w, a) for w in range(6) for a in range(6)]
    products = [acts_env.bits[w] * ACTS[a] for w, a in pairs]
    assert products == sorted(products, reverse=True)
    v0 = JPQEnv(evaluator=acts_env.evaluator)
    assert level_pairs(v0) == [(w, None) for w in reversed(range(len(v0.bits)))]


@pytest.mark.parametrize(("w", "a"), [(0, 0), (2, 1), (5, 5), (1, 4)])
def test_fits_counts_activation_widths_by_hand(acts_env, w, a):
    """Uniform WxAy without pruning: BOPs = sum of MACs x w x a, the network input at 8 bits."""
    n = acts_env.num_layers
    layers = acts_env.graph.layers
    inputs = acts_env.graph.input_layers
    expected = sum(
        x.macs * acts_env.bits[w] * (8 if i in inputs else ACTS[a]) for i, x in enumerate(layers)
    ) / sum(x.macs * 32 * 32 for x in layers)
    ok, ratio = fits(acts_env, [0] * n, [w] * n, [a] * n)
    assert ratio == pytest.approx(expected, rel=1e-12)
    assert ok == (expected <= 1 / 128)


def test_least_uniform_pruning_uses_the_activation_widths(acts_env):
    n = acts_env.num_layers
    # At 8-bit activations 2-bit weights need pruning to reach 1/128; at 2-bit activations they
    # need none, and 8-bit weights with 2-bit activations need less pruning than with 8-bit ones.
    assert any(least_uniform_pruning(acts_env, [0] * n, [5] * n))
    assert least_uniform_pruning(acts_env, [0] * n, [0] * n) == [0] * n
    low = least_uniform_pruning(acts_env, [5] * n, [0] * n)
    high = least_uniform_pruning(acts_env, [5] * n, [5] * n)
    assert low is not None and (high is None or sum(low) < sum(high))


def test_uniform_choices_carry_activation_levels(acts_env):
    n = acts_env.num_layers
    choices = uniform_choices(acts_env, [0] * n, [1] * n, [3] * n)
    assert {c.act_level for c in choices} == {3}
    assert {c.act_level for c in uniform_choices(acts_env, [0] * n, [1] * n)} == {None}
