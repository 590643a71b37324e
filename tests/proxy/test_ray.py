"""Scale-out on Ray: the actor pool, the Ray-backed VecEnv, fault tolerance, a fake cluster.

One local Ray for the session (2 logical CPUs, 2 logical GPUs, loopback only, no dashboard, no
usage stats; docs/SCALE.md), shut down by the fixture. Skipped when the ``ray`` extra is missing.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from jpq_agents.batch import play_many
from jpq_agents.search import LOG_NAME, RunSettings, Search
from jpq_env import LocalEvaluator, Policy, load_task

ROOT = Path(__file__).resolve().parents[1]
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


@pytest.fixture(scope="session")
def ray_module():
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed: pip install 'jpq-env[ray]' to run the Ray tests"
    )
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    yield ray
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def local_ray(ray_module):
    """The session's local Ray (started again if a test replaced it by a cluster)."""
    if not ray_module.is_initialized():
        ray_module.init(
            address="local",  # a new instance, never another process's local Ray
            num_cpus=2,
            num_gpus=2,
            include_dashboard=False,
            object_store_memory=100 * 1024**2,
        )
    return ray_module


def random_episodes(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    """Native action sequences of ``n`` random episodes of the default environment."""
    env = gym.make("jpq_env/JPQWeights-v0").unwrapped
    env.action_space.seed(seed)
    return [[env.action_space.sample() for _ in range(2 * env.num_layers)] for _ in range(n)]


def policies_of(episodes: list[list[np.ndarray]]) -> list[Policy]:
    env = gym.make("jpq_env/JPQWeights-v0").unwrapped
    out = []
    for actions in episodes:
        env.reset()
        for action in actions:
            env.step(action)
        out.append(env.last_policy)
    return out


@pytest.fixture(scope="module")
def local_evaluator() -> LocalEvaluator:
    return LocalEvaluator(load_task("digits"))


def test_default_path_never_imports_ray():
    # Every agent module and the CLI imported, one episode of the default environment played.
    code = (
        "import sys, gymnasium as gym, jpq_env\n"
        "import jpq_agents.cli, jpq_agents.run, jpq_agents.batch, jpq_agents.sb3, "
        "jpq_agents.baselines\n"
        "env = gym.make('jpq_env/JPQWeights-v0')\n"
        "env.reset(seed=0)\n"
        "done = False\n"
        "while not done:\n"
        "    done = env.step(env.action_space.sample())[2]\n"
        "loaded = [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


@pytest.mark.slow
def test_pool_equals_in_process_evaluator_with_one_gpu_per_actor(local_ray, local_evaluator):
    from jpq_env.proxy.ray import RayEvaluator

    policies = policies_of(random_episodes(6, seed=1))
    expected = [local_evaluator.accuracy(p) for p in policies]
    with RayEvaluator("digits", workers=2, num_gpus=1) as pool:
        assert pool.accuracy_many(policies) == expected
        assert pool.accuracy(policies[3]) == expected[3]
        assert pool.fp32_accuracy == local_evaluator.fp32_accuracy
        assert pool.test_accuracy(policies[0]) == local_evaluator.test_accuracy(policies[0])
        where = pool.describe()
    # Logical GPUs: Ray gives each actor its own device id; no CUDA here, so the proxy runs on CPU.
    assert sorted(w["cuda_visible_devices"] for w in where) == ["0", "1"]
    assert [w["device"] for w in where] == ["cpu", "cpu"]
    assert len({w["pid"] for w in where}) == 2


@pytest.mark.slow
def test_killed_actor_is_restarted_and_the_search_counts_exactly(
    local_ray, local_evaluator, tmp_path
):
    from jpq_env.proxy.ray import RayEvaluator

    episodes = random_episodes(5, seed=2)
    expected = [local_evaluator.accuracy(p) for p in policies_of(episodes)]
    # Each evaluation takes at least 1.5 s, so 0.5 s after the batch starts actor 0 is mid-way.
    with RayEvaluator("digits", workers=2, pad_seconds=1.5) as pool:
        before = pool.describe()[0]["pid"]
        env = gym.make("jpq_env/JPQWeights-v0", evaluator=pool).unwrapped
        search = Search(tmp_path, RunSettings("random", 4, 0, {}), env)
        killer = threading.Timer(0.5, local_ray.kill, (pool.actors[0],), {"no_restart": False})
        killer.start()
        try:
            infos = play_many(search, episodes)  # 5 episodes offered, the budget is 4
        finally:
            killer.join()
        after = pool.describe()[0]["pid"]
    assert after != before  # actor 0 died and Ray restarted it
    assert [i["accuracy"] for i in infos] == expected[:4]  # its evaluation was run again
    assert search.count == 4 and search.done
    log = [json.loads(line) for line in (tmp_path / LOG_NAME).read_text().splitlines()]
    assert [r["episode"] for r in log] == [0, 1, 2, 3]
    assert [r["accuracy"] for r in log] == expected[:4]


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
def test_pool_spans_the_nodes_of_an_emulated_cluster(ray_module, local_evaluator):
    from ray.cluster_utils import Cluster

    from jpq_env.proxy.ray import RayEvaluator

    ray_module.shutdown()  # the session's local Ray; the next test starts it again
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1)
        ray_module.init(address=cluster.address)
        cluster.wait_for_nodes()
        policies = policies_of(random_episodes(4, seed=4))
        with RayEvaluator("digits", workers=2, num_gpus=0) as pool:
            results = pool.accuracy_many(policies)
            nodes = {w["node_id"] for w in pool.describe()}
        assert len(nodes) == 2  # one CPU per node: one actor on each
        assert results == [local_evaluator.accuracy(p) for p in policies]
    finally:
        ray_module.shutdown()
        cluster.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize(("agent", "episodes"), [("random", 6), ("two-level", 50)])
def test_cli_search_on_ray_gives_the_in_process_records(local_ray, tmp_path, agent, episodes):
    from jpq_agents.cli import main

    # two-level on v0: 50 evaluations are its warm start, a full batch of 8 sampled episodes
    # (the controllers' draws and an update), then refinement rounds.
    args = ["search", "--agent", agent, "--episodes", str(episodes), "--quiet", "--seed", "5"]
    args += ["--env", "jpq_env/JPQWeights-v0"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--workers", "2"]) == 0
    assert read_log(tmp_path / "ray") == read_log(tmp_path / "local")
    summaries = [
        json.loads((tmp_path / name / "summary.json").read_text()) for name in ("local", "ray")
    ]
    for summary in summaries:  # the wall-clock fields differ; everything else must not
        for key in ("seconds", "seconds_per_evaluation", "date"):
            summary.pop(key)
    assert summaries[0] == summaries[1]  # test accuracies computed on an actor included
    assert local_ray.is_initialized()  # the session's Ray was used, not stopped


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / LOG_NAME).read_text().splitlines()]


@pytest.mark.slow
def test_ddpg_on_ray_actor_envs_explores_per_env_and_counts_exactly(local_ray, tmp_path):
    from jpq_agents.run import run_search

    # No warm-up: the actor acts from the first step, the two envs see the same observations,
    # so only their exploration noise can tell their episodes apart.
    summary = run_search("ddpg", tmp_path, 4, seed=6, progress=False, workers=2, warmup_episodes=0)
    log = read_log(tmp_path)
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
    assert [(r["accuracy"], r["policy"]) for r in read_log(tmp_path)] == expected


@pytest.mark.slow
def test_maskable_ppo_on_ray_actor_envs_gets_the_local_masks(local_ray, local_evaluator, tmp_path):
    from sb3_contrib.common.maskable.utils import get_action_masks

    from jpq_agents.ray_vec_env import RayVecEnv
    from jpq_agents.run import run_search
    from jpq_env.envs.wrappers import MultiDiscreteView

    env_id = "jpq_env/JPQWeightsActs-v0"
    summary = run_search("maskable-ppo", tmp_path / "run", 4, 8, env_id, progress=False, workers=2)
    log = read_log(tmp_path / "run")
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
    assert search.count == 2 and [r["episode"] for r in read_log(tmp_path)] == [0, 1]


def ray_pid(actor) -> int:
    """The process id of a ``RayVecEnv`` actor (waits while Ray restarts it)."""
    from jpq_agents.ray_vec_env import _when_back

    return int(_when_back(actor.describe)["pid"])


def test_no_cluster_at_the_address_is_a_message_naming_jpqs_own_flags(ray_module, monkeypatch):
    from jpq_env.proxy import ray as distributed

    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify ...")

    monkeypatch.setattr(distributed.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.ray, "init", no_cluster)
    with pytest.raises(ConnectionError) as info:
        distributed.connect("auto")
    message = str(info.value)
    assert message.startswith("could not connect to a Ray cluster at 'auto': Could not find any")
    assert "`ray start --head` and pass --ray auto" in message and "--ray HOST:PORT" in message
    assert isinstance(info.value.__cause__, ConnectionError)  # Ray's error kept as the cause
    with pytest.raises(ConnectionError, match=r"could not start a local Ray: .*`ray stop`"):
        distributed.connect(None)  # --workers alone: no advice to leave out --ray
