"""Learning signals: the sensitivity table, its features and shaping, the surrogate, env racing."""

import math

import numpy as np
import pytest
import torch

from jpq_agents.surrogate import Surrogate, SurrogateEvaluator
from jpq_env import LocalEvaluator, Policy, load_task
from jpq_env.core.policy import LayerPolicy
from jpq_env.envs import JPQEnv
from jpq_env.envs.observation import FEATURES
from jpq_env.envs.rewards import Outcome
from jpq_env.proxy.sensitivity import SensitivityTable, measure_sensitivity

ACTS = [2, 3, 4, 5, 6, 8]


@pytest.fixture(scope="module")
def table_and_task():
    task = load_task("digits")
    env = JPQEnv(task=task, act_bits=ACTS, budget_bops=1 / 128, sensitivity=True, device="cpu")
    return env.sensitivity, task, env


def _single_layer(graph, layer: int, bits: np.ndarray, act: int) -> Policy:
    fp32 = Policy.uniform(graph)
    layers = list(fp32.layers)
    layers[layer] = LayerPolicy(graph.names[layer], bits, act)
    return Policy(tuple(layers), fp32.fingerprint)


def test_table_entries_are_the_kl_of_one_compressed_layer(table_and_task):
    table, task, env = table_and_task
    graph = env.graph
    # an independent evaluator on the same 256 images and 128 calibration images, no prefix reuse
    from jpq_env.proxy.sensitivity import _subset
    from jpq_env.tasks import Task

    small = Task(
        task.name,
        task.model,
        task.example_input,
        task.train,
        _subset(task.val, 256),
        _subset(task.calib, 128),
        task.test,
        task.num_classes,
    )
    ev = LocalEvaluator(small, metric="kl", device="cpu", prefix_cache_mb=0)
    k = graph.layers[2].out_channels
    score = ev.accuracy(_single_layer(graph, 2, np.full(k, 3), 32))
    assert table.weight[2, table.bits.index(3)] == pytest.approx(-math.log(score), rel=1e-9)
    assert (table.weight[:, 0] > table.weight[:, -1]).all()  # 2 bits hurt more than 8
    assert (np.diff(table.prune[:-1], axis=1) >= 0).all()  # pruning more hurts more
    assert np.isinf(table.prune[-1]).all()  # the output layer cannot be pruned
    assert (table.act[0] == 0).all()  # the network input's width is fixed


def test_contribution_interpolates_and_weights_by_kernel_share(table_and_task):
    table, _, env = table_and_task
    k = env.graph.layers[1].out_channels
    bits = np.full(k, 4)
    bits[: k // 2] = 2  # half at 2 bits, half at 4
    expected = 0.5 * table.weight[1, table.bits.index(2)] + 0.5 * table.weight[1, 2]
    expected += table.act[1, ACTS.index(6)]
    assert table.contribution(1, bits, 6) == pytest.approx(expected)
    pruned = np.full(k, 8)
    pruned[: round(0.3 * k)] = 0  # 30%: halfway between the 20% and 40% measurements
    share = round(0.3 * k) / k
    lo, hi = table.prune[1, 0], table.prune[1, 1]
    prune = lo + (share - 0.2) / 0.2 * (hi - lo)
    keep = 1 - share
    want = prune + keep * table.weight[1, -1] + keep * table.act[1, -1]
    assert table.contribution(1, pruned, 8) == pytest.approx(want)
    assert table.contribution(1, np.full(k, 32), 32) == 0.0


def test_table_round_trips_and_is_read_from_the_disk_cache(table_and_task):
    table, task, _ = table_and_task
    again = SensitivityTable.from_json(table.to_json())
    assert np.array_equal(again.prune, table.prune) and np.array_equal(again.weight, table.weight)
    import time

    from jpq_env.proxy import sensitivity

    sensitivity._MEMORY.clear()
    start = time.perf_counter()
    cached = JPQEnv(task=task, act_bits=ACTS, budget_bops=1 / 128, sensitivity=True, device="cpu")
    assert time.perf_counter() - start < 10
    assert np.array_equal(cached.sensitivity.weight, table.weight)


def test_sensitivity_features_are_appended_and_shaping_telescopes(table_and_task):
    table, task, _ = table_and_task
    env = JPQEnv(
        task=task,
        act_bits=ACTS,
        budget_bops=1 / 128,
        sensitivity=True,
        error_shaping=0.5,
        device="cpu",
    )
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(FEATURES) + table.size,) == env.observation_space.shape
    assert np.array_equal(obs[len(FEATURES) :], table.features(0))
    rng = np.random.default_rng(0)
    total, shaped, kl = 0.0, 0.0, 0.0
    for _ in range(2 * env.num_layers):
        obs, reward, terminated, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        total += reward
        shaped += info.get("reward_shaping", 0.0)
        if "layer_kl" in info:
            kl += info["layer_kl"]
            assert info["predicted_fidelity"] == pytest.approx(math.exp(-kl))
    assert terminated
    assert shaped == pytest.approx(0.0, abs=1e-12)  # potential-based: sums to zero
    assert total == pytest.approx(info["reward_total"])
    decisions = env.decisions
    want = sum(table.contribution(i, d.ranked_bits, d.act_bits) for i, d in enumerate(decisions))
    assert kl == pytest.approx(want)


def test_env_race_inverts_the_reward_design(table_and_task):
    _, task, _ = table_and_task
    env = JPQEnv(task=task, act_bits=ACTS, budget_bops=1 / 128, device="cpu")
    env.reset(seed=0)
    policy = env.space.policy([env.space.most_aggressive(i) for i in range(env.num_layers)])
    from jpq_env.core.costs import measure

    cost = measure(env.graph, policy)
    fp32 = env.evaluator.fp32_accuracy

    def reward(acc):
        outcome = Outcome(
            acc, fp32, float(cost.bops), cost.bops_ratio, cost.size_ratio, env.budget.targets
        )
        return env.reward_design.terms(outcome)["total"]

    target = 0.3 * reward(0.0) + 0.7 * reward(1.0)
    needed = env._accuracy_needed(target, cost)
    assert 0 < needed < 1 and reward(needed) == pytest.approx(target, abs=1e-9)
    assert env._accuracy_needed(reward(0.0) - 1, cost) is None  # any score reaches it
    assert env._accuracy_needed(reward(1.0) + 1, cost) > 1  # no score reaches it
    with pytest.raises(ValueError, match="race"):
        env.race(float("nan"))


def test_surrogate_fits_the_scores_it_saw_and_is_deterministic(table_and_task):
    table, _, env = table_and_task
    ev = env.evaluator
    rng = np.random.default_rng(1)
    policies, scores = [], []
    for _ in range(24):
        layers = []
        for info in env.graph.layers:
            bits = rng.choice([2, 3, 4, 8], size=info.out_channels)
            layers.append(LayerPolicy(info.name, bits, int(rng.choice([3, 4, 8]))))
        p = env.space.conventions.apply(env.graph, Policy(tuple(layers), env.graph.fingerprint))
        policies.append(p)
        scores.append(ev.accuracy(p))
    s = Surrogate(table, ev.fp32_accuracy, floor=0.1, seed=0)
    prior, spread = s.predict(policies)
    assert (spread == ev.fp32_accuracy - 0.1).all()
    s.fit(policies, scores)
    mean, std = s.predict(policies)
    prior_err = float(np.mean((prior - scores) ** 2))
    fit_err = float(np.mean((mean - scores) ** 2))
    assert fit_err < prior_err and (std >= 0).all()
    again = Surrogate(table, ev.fp32_accuracy, floor=0.1, seed=0)
    again.fit(policies, scores)
    assert np.array_equal(again.predict(policies)[0], mean)
    optimistic = SurrogateEvaluator(s, ev.fp32_accuracy, optimism=2.0).accuracy(policies[0])
    assert optimistic == pytest.approx(min(1.0, mean[0] + 2.0 * std[0]))


def test_measure_without_activation_decisions_and_bad_values(table_and_task):
    _, task, env = table_and_task
    table = measure_sensitivity(task, env.graph, (2, 4, 8), (), cache=False)
    assert table.act.shape == (len(env.graph), 0) and table.act_kl(1, 4) == 0.0
    for kwargs, text in (({"sensitivity": "yes"}, "sensitivity"), ({"error_shaping": -1}, "error")):
        with pytest.raises(ValueError, match=text):
            JPQEnv(task=task, device="cpu", **kwargs)
    torch.manual_seed(0)
