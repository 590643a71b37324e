"""SB3 agents on Ray actor environments (``jpq_agents.ray_vec_env``): exact counts and resumes,
per-environment exploration, the local action masks, and actors killed mid-episode or mid-reset.

Uses the session's local Ray (``tests/conftest.py``); skipped when the ``ray`` extra is missing.
"""

import json
import time

import gymnasium as gym
import numpy as np
import pytest

from jpq_agents.search import LOG_NAME, RunSettings, Search
from jpq_env import LocalEvaluator, Policy, load_task
from tests.episodes import log_records


@pytest.fixture(scope="module")
def local_evaluator() -> LocalEvaluator:
    return LocalEvaluator(load_task("digits"))


@pytest.mark.slow
def test_ppo_on_ray_actor_envs_counts_and_resumes_exactly(local_ray, local_evaluator, tmp_path):
    from jpq_agents.run import run_search

    run = tmp_path / "run"
    first = run_search("ppo", run, 4, seed=3, progress=False, workers=2)
    assert first["evaluations"] == 4
    resumed = run_search("ppo", run, 6, seed=3, progress=False, workers=2, resume=True)
    assert resumed["evaluations"] == 6
    log = [json.loads(line) for line in (run / LOG_NAME).read_text().splitlines()]
    assert [r["episode"] for r in log] == list(range(6))
    for record in log:  # each accuracy is the in-process proxy's for the logged policy
        policy = Policy.from_json(
            {
                "schema": 1,
                "fingerprint": local_evaluator.graph.fingerprint,
                "layers": record["policy"],
            }
        )
        assert record["accuracy"] == local_evaluator.accuracy(policy)
    # Two sub-environments explore differently (their episodes are not copies of each other).
    assert log[0]["policy"] != log[1]["policy"]


@pytest.mark.slow
def test_ddpg_on_ray_actor_envs_explores_per_env_and_counts_exactly(local_ray, tmp_path):
    from jpq_agents.run import run_search

    # No warm-up: the actor acts from the first step, the two envs see the same observations,
    # so only their exploration noise can tell their episodes apart.
    summary = run_search("ddpg", tmp_path, 4, seed=6, progress=False, workers=2, warmup_episodes=0)
    log = log_records(tmp_path)
    assert summary["evaluations"] == 4 and [r["episode"] for r in log] == list(range(4))
    assert log[0]["policy"] != log[1]["policy"] and log[2]["policy"] != log[3]["policy"]


@pytest.mark.slow
def test_vec_env_plays_a_killed_actors_episode_again(local_ray, tmp_path):
    from jpq_agents.ray_vec_env import RayVecEnv
    from jpq_env.envs.wrappers import FlatBoxView

    env = gym.make("jpq_env/JPQWeights-v0").unwrapped
    search = Search(tmp_path, RunSettings("ppo", 2, 0, {"id": "jpq_env/JPQWeights-v0"}), env)
    layers, size = env.num_layers, env.action_space.shape[0]
    actions = np.random.default_rng(7).uniform(-1, 1, (layers, 2, size)).astype(np.float32)
    venv = RayVecEnv(search, "jpq_env.envs.wrappers:FlatBoxView", 2)
    try:
        venv.reset()
        for t in range(layers):
            if t == layers // 2:  # mid-episode: actor 0's environment dies with its process
                local_ray.kill(venv.actors[0], no_restart=False)
            _, _, dones, _ = venv.step(actions[t])
        assert dones.all()
    finally:
        venv.close()
    expected = []
    for i in range(2):  # the same episodes in this process
        view = FlatBoxView(gym.make("jpq_env/JPQWeights-v0").unwrapped)
        view.reset()
        for t in range(layers):
            info = view.step(actions[t, i])[4]
        expected.append((info["accuracy"], info["policy"]))
    assert search.count == 2
    assert [(r["accuracy"], r["policy"]) for r in log_records(tmp_path)] == expected


@pytest.mark.slow
def test_maskable_ppo_on_ray_actor_envs_gets_the_local_masks(local_ray, local_evaluator, tmp_path):
    from sb3_contrib.common.maskable.utils import get_action_masks

    from jpq_agents.ray_vec_env import RayVecEnv
    from jpq_agents.run import run_search
    from jpq_env.envs.wrappers import MultiDiscreteView

    env_id = "jpq_env/JPQWeightsActs-v0"
    summary = run_search("maskable-ppo", tmp_path / "run", 4, 8, env_id, progress=False, workers=2)
    log = log_records(tmp_path / "run")
    assert summary["evaluations"] == 4 and [r["episode"] for r in log] == list(range(4))
    fingerprint = local_evaluator.graph.fingerprint
    for record in log:  # each accuracy is the in-process proxy's for the logged policy
        data = {"schema": 1, "fingerprint": fingerprint, "layers": record["policy"]}
        assert record["accuracy"] == local_evaluator.accuracy(Policy.from_json(data))
    # The masks MaskablePPO reads through the VecEnv are the ones a local view computes.
    env = gym.make(env_id).unwrapped
    search = Search(tmp_path / "masks", RunSettings("maskable-ppo", 2, 0, {"id": env_id}), env)
    venv = RayVecEnv(search, "jpq_env.envs.wrappers:MultiDiscreteView", 2)
    local = MultiDiscreteView(gym.make(env_id).unwrapped)
    try:
        venv.reset()
        local.reset()
        for _ in range(local.unwrapped.num_layers):
            masks = get_action_masks(venv)
            expected = local.action_masks()
            assert masks.shape == (2, expected.size) and (masks == expected).all()
            # The last valid choice of every dimension (most pruning, widest bits).
            action, start = [], 0
            for n in local.action_space.nvec:
                action.append(int(np.flatnonzero(expected[start : start + n])[-1]))
                start += n
            local.step(np.array(action))
            venv.step(np.array([action, action]))
    finally:
        venv.close()
    assert search.count == 2


@pytest.mark.slow
def test_vec_env_reset_waits_for_a_killed_actor(local_ray, tmp_path, monkeypatch):
    from jpq_agents import ray_vec_env
    from jpq_agents.ray_vec_env import RayVecEnv

    env = gym.make("jpq_env/JPQWeights-v0").unwrapped
    search = Search(tmp_path, RunSettings("ppo", 2, 0, {"id": "jpq_env/JPQWeights-v0"}), env)
    layers, size = env.num_layers, env.action_space.shape[0]
    actions = np.random.default_rng(9).uniform(-1, 1, (layers, 2, size)).astype(np.float32)
    venv = RayVecEnv(search, "jpq_env.envs.wrappers:FlatBoxView", 2)
    pid = ray_pid(venv.actors[1])
    # Actor 1 dies while the driver waits for its reset: Ray reports it dead (ray.kill alone is
    # asynchronous, the reset could still land on the old actor); the driver must wait for the
    # restarted actor and reset that one.
    real_get, died, calls = ray_vec_env.ray.get, [], {"n": 0}

    def flaky_get(ref, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 and not died:  # the second result the reset waits for: actor 1's
            died.append(ref)
            local_ray.kill(venv.actors[1], no_restart=False)
            # ray.kill is asynchronous: wait until the actor really was replaced, as it is when
            # a real death makes ray.get raise (else the reset may still reach the old one)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if ray_pid(venv.actors[1]) != pid:
                        break
                except local_ray.exceptions.RayActorError:
                    pass
                time.sleep(0.1)
            raise local_ray.exceptions.RayActorError()
        return real_get(ref, *args, **kwargs)

    try:
        monkeypatch.setattr(ray_vec_env.ray, "get", flaky_get)
        obs = venv.reset()
        monkeypatch.setattr(ray_vec_env.ray, "get", real_get)
        assert died  # the recovery ran
        assert obs.shape == (2, *venv.observation_space.shape)
        assert ray_pid(venv.actors[1]) != pid  # restarted, then reset
        for t in range(layers):
            _, _, dones, _ = venv.step(actions[t])
        assert dones.all()
    finally:
        venv.close()
    assert search.count == 2 and [r["episode"] for r in log_records(tmp_path)] == [0, 1]


def ray_pid(actor) -> int:
    """The process id of a ``RayVecEnv`` actor (waits while Ray restarts it)."""
    from jpq_agents.ray_vec_env import _when_back

    return int(_when_back(actor.describe)["pid"])
