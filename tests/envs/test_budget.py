"""Budget enforcement (``jpq_env.envs.budget``): the forward wall, backward lowering and none, on
weight and activation widths.
"""

import numpy as np
import pytest

from jpq_env.envs import JPQEnv
from jpq_env.envs.budget import wall_channels
from tests.episodes import ACTS, episode_actions, rollout


def test_wall_keeps_every_episode_within_budget_and_none_does_not():
    free = JPQEnv(enforcement="none")
    walled = JPQEnv(enforcement="wall", evaluator=free.evaluator)
    met_free, met_wall = [], []
    for seed in range(15):
        actions = episode_actions(walled, seed)
        met_wall.append(rollout(walled, actions)[-1][4]["budget_met"])
        met_free.append(rollout(free, actions)[-1][4]["budget_met"])
    assert all(met_wall) and not all(met_free)


def test_wall_changes_only_what_the_budget_requires(env: JPQEnv):
    cheap = np.full(env.action_space.shape, -1.0, dtype=np.float32)  # no pruning, 2-bit weights
    trace = rollout(env, [cheap] * (2 * env.num_layers))
    infos = [s[4] for s in trace[1:]]
    assert all(i.get("proposed_sparsity") == i.get("applied_sparsity") for i in infos)
    assert all(i.get("proposed_mean_bits") == i.get("applied_mean_bits") for i in infos)
    rich = np.ones(env.action_space.shape, dtype=np.float32)
    rich[0] = -1.0  # no pruning, 8-bit weights: 1/16 of FP32 if nothing intervened
    infos = [s[4] for s in rollout(env, [rich] * (2 * env.num_layers))[1:]]
    assert infos[0]["applied_sparsity"] == 0.0 and infos[1]["applied_mean_bits"] == 8.0
    lowered = [
        i for i in infos if i.get("applied_mean_bits", 8.0) < i.get("proposed_mean_bits", 8.0)
    ]
    assert lowered and infos[-1]["budget_met"]
    assert infos[-1]["bops_ratio"] == pytest.approx(1 / 64, rel=0.05)  # the budget is spent


def test_backward_lowering_meets_the_budget():
    env = JPQEnv(enforcement="lowering")
    rich = np.ones(env.action_space.shape, dtype=np.float32)
    rich[0] = -1.0  # no pruning, 8-bit weights everywhere: 1/16 of FP32 before lowering
    info = rollout(env, [rich] * (2 * env.num_layers))[-1][4]
    assert info["budget_met"] and info["bops_ratio"] <= 1 / 64
    widths = [max(layer["bits"]) for layer in info["policy"]]
    assert widths[-1] <= widths[0]  # lowered from the last layer backwards


def _lowered_one_level_at_a_time(space, layer, proposed, steps, chunks=8):
    """The channel wall's rule, step by step: the least important chunk with bits left goes down."""
    kept = proposed.ranked_bits[: len(proposed.ranked_bits) - proposed.n_pruned]
    levels = np.searchsorted(space.bits, kept)
    parts = [p for p in np.array_split(np.arange(len(kept)), min(chunks, len(kept))) if p.size]
    for _ in range(steps):
        part = next((p for p in reversed(parts) if levels[p].max() > 0), None)
        if part is None:
            break
        levels[part] = np.maximum(levels[part] - 1, 0)
    bits = np.asarray(space.bits)[levels]
    return space.decision(layer, proposed.n_pruned, bits, proposed.act_bits)


def test_channel_wall_takes_the_fewest_single_level_lowerings_that_fit():
    env = JPQEnv(budget_bops=1 / 64)
    space, budget, n = env.space, env.budget, env.num_layers
    rng = np.random.default_rng(3)
    lowered = 0
    for _ in range(25):
        layer = int(rng.integers(1, n - 1))
        decisions = [None] * n
        for i in range(layer):  # earlier layers: random pruning and widths
            k = env.graph.layers[i].out_channels
            pruned = int(rng.integers(0, space.max_pruned(i) + 1))
            widths = rng.choice(space.bits, k - pruned)
            decisions[i] = space.decision(i, pruned, widths, 8)
        k = env.graph.layers[layer].out_channels
        pruned = int(rng.integers(0, space.max_pruned(layer) + 1))
        proposed = space.decision(layer, pruned, np.full(k - pruned, space.bits[-1]), 8)
        applied = wall_channels(space, budget, decisions, layer, proposed)

        def fits(d, decisions=decisions, layer=layer):
            return space.fits(budget, [*decisions[:layer], d, *decisions[layer + 1 :]])

        steps = next(
            s
            for s in range(200)
            if fits(_lowered_one_level_at_a_time(space, layer, proposed, s)) or s == 199
        )
        expected = _lowered_one_level_at_a_time(space, layer, proposed, steps)
        assert np.array_equal(applied.bits, expected.bits)
        if steps:  # the fewest: one lowering less would not fit
            lowered += 1
            assert not fits(_lowered_one_level_at_a_time(space, layer, proposed, steps - 1))
    assert lowered >= 5  # the budget did bite in several of the cases


def test_wall_and_lowering_cover_activation_bits(acts_env: JPQEnv):
    rich = np.ones(acts_env.action_size, dtype=np.float32)
    rich[0] = -1.0  # no pruning, 8-bit activations and weights: far above 1/128
    acts_env.reset(seed=0)
    infos = []
    done = False
    while not done:
        _, _, done, _, info = acts_env.step(rich)
        infos.append(info)
    lowered = [i for i in infos if i.get("applied_act_bits", 99) < i.get("proposed_act_bits", 0)]
    assert lowered and infos[-1]["budget_met"]
    lowering = JPQEnv(
        act_bits=ACTS, budget_bops=1 / 256, enforcement="lowering", evaluator=acts_env.evaluator
    )
    lowering.reset(seed=0)
    done = False
    while not done:
        _, _, done, _, info = lowering.step(rich)
    assert info["budget_met"] and info["bops_ratio"] <= 1 / 256
    assert min(layer["act_bits"] for layer in info["policy"]) < 8


def test_random_episodes_at_a_256th_stay_within_budget(acts_env: JPQEnv):
    env = JPQEnv(act_bits=ACTS, budget_bops=1 / 256, evaluator=acts_env.evaluator)
    env.action_space.seed(0)
    for _ in range(5):
        env.reset()
        done = False
        while not done:
            _, _, done, _, info = env.step(env.action_space.sample())
        assert info["budget_met"]
