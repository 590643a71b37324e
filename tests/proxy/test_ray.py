"""The Ray actor pool (``jpq_env.proxy.ray``): the in-process scores, an actor killed and restarted,
a pool across the nodes of an emulated cluster, no Ray on the default path.

Uses the session's local Ray (``tests/conftest.py``); skipped when the ``ray`` extra is missing.
"""

import json
import os
import subprocess
import sys
import threading

import gymnasium as gym
import numpy as np
import pytest

from jpq_agents.batch import play_many
from jpq_agents.search import LOG_NAME, RunSettings, Search
from jpq_env import LocalEvaluator, Policy, load_task
from tests import ROOT


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
