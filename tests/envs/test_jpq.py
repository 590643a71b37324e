"""The environment (``jpq_env.envs.jpq.JPQEnv``): both checkers on every registered id, the
hierarchy of an episode, decoding, determinism, pickling, vector envs, the activation decision, and
racing.
"""

import copy
import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from jpq_env import LocalEvaluator, Policy, load_task, measure
from jpq_env.envs import JPQEnv
from jpq_env.envs.registration import PRESETS
from tests.episodes import ACTS, episode_actions, rollout


@pytest.fixture(scope="module")
def env() -> JPQEnv:
    return JPQEnv(render_mode="ansi")


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("env_id", sorted(k for k in PRESETS if "/" in k))
def test_every_registered_id_passes_both_checkers(env_id: str):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped, skip_render_check=False)
        sb3_check_env(env.unwrapped)


def test_episode_is_the_hierarchy_and_reports_the_applied_policy(env: JPQEnv):
    actions = episode_actions(env, 1)
    trace = rollout(env, actions)
    steps = trace[1:]
    assert len(steps) == 2 * env.num_layers
    assert [s[2] for s in steps] == [False] * (len(steps) - 1) + [True]
    assert all(s[1] == 0.0 for s in steps[:-1])  # terminal reward only by default
    phases = [trace[0][1]["phase"]] + [s[4]["phase"] for s in steps[:-1]]
    assert phases == ["layer", "channel"] * env.num_layers
    info = steps[-1][4]
    policy = Policy.from_json(
        {"schema": 1, "fingerprint": env.graph.fingerprint, "layers": info["policy"]}
    )
    cost = measure(env.graph, policy)
    assert (info["bops"], info["size_bits"], info["bops_fp32"]) == (
        cost.bops,
        cost.size_bits,
        cost.bops_fp32,
    )
    assert info["bops_ratio"] == cost.bops_ratio and info["size_ratio"] == cost.size_ratio
    assert info["budget_met"] == (cost.bops_ratio <= 1 / 64 + 1e-9)
    # Scored by an independent evaluator on the same task: same accuracy.
    assert info["accuracy"] == LocalEvaluator(env.task).accuracy(policy)
    # FP32 on the proxy: the all-32-bit policy through the same pipeline.
    assert info["accuracy_fp32"] == LocalEvaluator(env.task).accuracy(Policy.uniform(env.graph))
    assert {"reward_accuracy", "reward_penalty", "reward_total"} <= info.keys()
    assert steps[-1][1] == info["reward_total"]


def test_decoding_of_sparsity_and_group_widths(env: JPQEnv):
    env.reset(seed=0)
    # conv1 (16 kernels): sparsity 0.5 of max 0.8 -> 0.4 -> round(6.4) = 6 pruned.
    env.step(np.array([0.0, 0, 0, 0, 0], dtype=np.float32))
    # 10 kept kernels in importance order: groups of 3, 3, 2, 2; widths from (2, 3, 4, 5, 6, 8).
    levels = [5, 3, 1, 0]
    env.step(np.concatenate([[0.0], env.encode_levels(levels, 6)]).astype(np.float32))
    d = env.decisions[0]
    assert d.n_pruned == 6
    assert d.ranked_bits.tolist() == [8, 8, 8, 5, 5, 5, 3, 3, 2, 2, 0, 0, 0, 0, 0, 0]
    w = env.task.model.conv1.weight.detach()
    l1_order = np.argsort(-w.abs().sum(dim=(1, 2, 3)).numpy(), kind="stable")
    expected = np.zeros(16, dtype=int)
    expected[l1_order] = d.ranked_bits
    assert d.bits.tolist() == expected.tolist()
    assert set(np.flatnonzero(d.bits == 0)) == set(l1_order[-6:])


def test_same_seed_same_rollout_including_info():
    a, b = JPQEnv(), JPQEnv()
    actions = episode_actions(a, 3)
    assert _same(rollout(a, actions, seed=5), rollout(b, actions, seed=5))


def test_pickle_round_trip_mid_episode(env: JPQEnv):
    actions = episode_actions(env, 4)
    env.reset(seed=0)
    for a in actions[:5]:
        env.step(a)
    clone = pickle.loads(pickle.dumps(env))
    rest_a = [env.step(a) for a in actions[5:]]
    rest_b = [clone.step(a) for a in actions[5:]]
    assert _same(rest_a, rest_b)


def test_random_agent_leaves_the_model_bitwise_unchanged(env: JPQEnv):
    before = copy.deepcopy(env.task.model.state_dict())
    rng = np.random.default_rng(0)
    for _ in range(50):  # the soak benchmark checks this over 10,000 (quick mode: 100) episodes
        env.reset()
        done = False
        while not done:
            a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            done = env.step(a)[2]
    for k, v in env.task.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    working = env.evaluator.compressed  # and the evaluator's working copy restores bitwise
    working.restore()
    for k, v in working.module.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_shaping_telescopes_to_the_same_total_for_every_episode():
    env = JPQEnv(shaping=0.5)
    totals = []
    for seed in (0, 1):
        trace = rollout(env, episode_actions(env, seed))
        shaping = [s[4]["reward_shaping"] for s in trace[1:]]
        assert any(abs(x) > 0 for x in shaping[:-1])
        totals.append(sum(shaping))
    assert totals[0] == pytest.approx(totals[1])


def test_vector_envs_with_two_workers_match_a_serial_env(env: JPQEnv):
    from gymnasium.vector import AsyncVectorEnv
    from stable_baselines3.common.vec_env import SubprocVecEnv

    actions = episode_actions(env, 7)
    serial = rollout(env, actions)[-1]
    vec = AsyncVectorEnv([lambda: gym.make("jpq_env/JPQWeights-v0")] * 2)  # forked workers
    try:
        vec.reset(seed=0)
        for a in actions:
            _, rewards, terminated, _, _ = vec.step(np.stack([a, a]))
        assert terminated.all() and rewards.tolist() == [serial[1], serial[1]]
    finally:
        vec.close()
    # SB3 starts workers with forkserver: "module:id" imports jpq_env (and registers) in each.
    sb3 = SubprocVecEnv([lambda: gym.make("jpq_env:JPQWeights-v0")] * 2)
    try:
        sb3.reset()
        for a in actions:
            _, rewards, dones, infos = sb3.step(np.stack([a, a]))
        assert dones.all() and rewards.tolist() == pytest.approx([serial[1], serial[1]])
        assert infos[0]["accuracy"] == serial[4]["accuracy"]
    finally:
        sb3.close()


def test_digits_costs_by_hand(env: JPQEnv):
    # DigitsCNN: conv 1->16, 16->32 at 8x8; 32->32, 32->64 at 4x4 (3x3 kernels); fc 256->64->10.
    macs = (
        16 * 1 * 9 * 64
        + 32 * 16 * 9 * 64
        + 32 * 32 * 9 * 16
        + 64 * 32 * 9 * 16
        + 256 * 64
        + 64 * 10
    )
    assert macs == 763_520 == env.graph.total_macs
    w4a8 = measure(env.graph, Policy.uniform(env.graph, 4, 8))
    assert w4a8.bops == macs * 4 * 8 and w4a8.bops_ratio == 1 / 32
    weights = 16 * 9 + 32 * 16 * 9 + 32 * 32 * 9 + 64 * 32 * 9 + 256 * 64 + 64 * 10
    assert w4a8.size_bits == weights * 4


def test_layer_decision_picks_the_activation_width(acts_env: JPQEnv):
    assert acts_env.action_space.shape == (2 + 4,) and acts_env.decides_act
    acts_env.reset(seed=0)
    for level, layer in ((1, 0), (2, 1)):
        a = np.zeros(acts_env.action_size, dtype=np.float32)
        a[0] = -1.0  # no pruning
        a[1] = acts_env.encode_levels([level], len(ACTS))[0]
        info = acts_env.step(a)[4]
        # The first layer reads the network input, counted at 8 bits whatever is proposed.
        assert info["applied_act_bits"] == (8 if layer == 0 else ACTS[level])
        low = np.full(acts_env.action_size, -1.0, dtype=np.float32)  # cheapest widths: never walled
        acts_env.step(low)
    assert acts_env.decisions[1].act_bits == 4


def test_race_takes_a_finite_reward_or_none(env: JPQEnv):
    # The score a race needs is the reward design's inversion, tested with the designs
    # (tests/envs/test_rewards.py::test_least_accuracy_reaching_inverts_the_design).
    with pytest.raises(ValueError, match="race"):
        env.race(float("nan"))
    env.race(None)


def test_race_accuracy_stops_an_episode_that_cannot_reach_the_score():
    task = load_task("digits")
    env = JPQEnv(task=task, evaluator=LocalEvaluator(task, device="cpu", batch_size=32))
    cheapest = [np.full(env.action_size, -1.0, dtype=np.float32)] * (2 * len(env.graph))
    env.race_accuracy(0.99)
    raced = rollout(env, cheapest)[-1][-1]
    assert raced["proxy_complete"] is False and raced["proxy_images"] < env.evaluator.val_images
    env.race_accuracy(None)
    info = rollout(env, cheapest)[-1][-1]
    assert info["proxy_complete"] is True and info["proxy_images"] == env.evaluator.val_images
    independent = LocalEvaluator(task, device="cpu", prefix_cache_mb=0)
    assert info["accuracy"] == independent.accuracy(env.last_policy) < 0.99
    for bad in (float("nan"), float("inf"), "0.5"):
        with pytest.raises(ValueError, match="race_accuracy"):
            env.race_accuracy(bad)  # type: ignore[arg-type]
