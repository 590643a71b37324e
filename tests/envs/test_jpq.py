import copy
import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from jpq_env import LocalEvaluator, Policy, measure
from jpq_env.envs import JPQEnv
from jpq_env.envs.budget import wall_channels
from jpq_env.envs.registration import PRESETS, register_envs


@pytest.fixture(scope="module")
def env() -> JPQEnv:
    return JPQEnv(render_mode="ansi")


def _rollout(env: gym.Env, actions: list[np.ndarray], seed: int | None = 0):
    obs, info = env.reset(seed=seed)
    trace = [(obs, info)]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        trace.append((obs, reward, terminated, truncated, info))
        if terminated:
            break
    return trace


def _episode_actions(env: JPQEnv, seed: int) -> list[np.ndarray]:
    env.action_space.seed(seed)
    return [env.action_space.sample() for _ in range(2 * env.num_layers)]


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
    actions = _episode_actions(env, 1)
    trace = _rollout(env, actions)
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


def test_wall_keeps_every_episode_within_budget_and_none_does_not():
    free = JPQEnv(enforcement="none")
    walled = JPQEnv(enforcement="wall", evaluator=free.evaluator)
    met_free, met_wall = [], []
    for seed in range(15):
        actions = _episode_actions(walled, seed)
        met_wall.append(_rollout(walled, actions)[-1][4]["budget_met"])
        met_free.append(_rollout(free, actions)[-1][4]["budget_met"])
    assert all(met_wall) and not all(met_free)


def test_wall_changes_only_what_the_budget_requires(env: JPQEnv):
    cheap = np.full(env.action_space.shape, -1.0, dtype=np.float32)  # no pruning, 2-bit weights
    trace = _rollout(env, [cheap] * (2 * env.num_layers))
    infos = [s[4] for s in trace[1:]]
    assert all(i.get("proposed_sparsity") == i.get("applied_sparsity") for i in infos)
    assert all(i.get("proposed_mean_bits") == i.get("applied_mean_bits") for i in infos)
    rich = np.ones(env.action_space.shape, dtype=np.float32)
    rich[0] = -1.0  # no pruning, 8-bit weights: 1/16 of FP32 if nothing intervened
    infos = [s[4] for s in _rollout(env, [rich] * (2 * env.num_layers))[1:]]
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
    info = _rollout(env, [rich] * (2 * env.num_layers))[-1][4]
    assert info["budget_met"] and info["bops_ratio"] <= 1 / 64
    widths = [max(layer["bits"]) for layer in info["policy"]]
    assert widths[-1] <= widths[0]  # lowered from the last layer backwards


def test_same_seed_same_rollout_including_info():
    a, b = JPQEnv(), JPQEnv()
    actions = _episode_actions(a, 3)
    assert _same(_rollout(a, actions, seed=5), _rollout(b, actions, seed=5))


def test_pickle_round_trip_mid_episode(env: JPQEnv):
    actions = _episode_actions(env, 4)
    env.reset(seed=0)
    for a in actions[:5]:
        env.step(a)
    clone = pickle.loads(pickle.dumps(env))
    rest_a = [env.step(a) for a in actions[5:]]
    rest_b = [clone.step(a) for a in actions[5:]]
    assert _same(rest_a, rest_b)


def test_ansi_render_lists_every_layer_with_its_costs(env: JPQEnv):
    actions = _episode_actions(env, 6)
    info = _rollout(env, actions)[-1][4]
    text = env.render()
    policy = Policy.from_json(
        {"schema": 1, "fingerprint": env.graph.fingerprint, "layers": info["policy"]}
    )
    cost = measure(env.graph, policy)
    for name, c in zip(env.graph.names, cost.layers, strict=True):
        row = next(line for line in text.splitlines() if line.startswith(name))
        assert row.rstrip().endswith(f"{c.bops:,}")
    assert JPQEnv(evaluator=env.evaluator).render() is None


def test_random_agent_leaves_the_model_bitwise_unchanged(env: JPQEnv):
    before = copy.deepcopy(env.task.model.state_dict())
    rng = np.random.default_rng(0)
    for _ in range(200):
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
        trace = _rollout(env, _episode_actions(env, seed))
        shaping = [s[4]["reward_shaping"] for s in trace[1:]]
        assert any(abs(x) > 0 for x in shaping[:-1])
        totals.append(sum(shaping))
    assert totals[0] == pytest.approx(totals[1])


def test_registration_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_envs()
        register_envs()
    assert gym.spec("jpq_env/JPQWeights-v0").entry_point == "jpq_env.envs.jpq:JPQEnv"
    assert PRESETS["jpq_env/JPQWeightsDeep-v0"] == {"task": "digits-deep"}


def test_module_colon_id_from_a_fresh_process():
    code = (
        "import gymnasium as gym, numpy as np\n"
        "env = gym.make('jpq_env:JPQWeights-v0')\n"
        "obs, _ = env.reset(seed=0)\n"
        "print(obs.shape, env.action_space.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(24,) (5,)"


def test_vector_envs_with_two_workers_match_a_serial_env(env: JPQEnv):
    from gymnasium.vector import AsyncVectorEnv
    from stable_baselines3.common.vec_env import SubprocVecEnv

    actions = _episode_actions(env, 7)
    serial = _rollout(env, actions)[-1]
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
