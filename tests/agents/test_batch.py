"""Batched episodes (jpq_agents.batch): same records as sequential play, exact counts, resume."""

import gymnasium as gym
import numpy as np
import pytest

from jpq_agents.batch import parallelism, play_many
from jpq_agents.search import LOG_NAME, RunSettings, Search
from jpq_env import LocalEvaluator, load_task
from jpq_env.proxy.evaluator import WrappedEvaluator
from tests.episodes import log_records


class BatchEvaluator(LocalEvaluator):
    """The in-process proxy with a batch method that records the batch sizes it was given."""

    workers = 3

    def __init__(self) -> None:
        super().__init__(load_task("digits"))
        self.batches: list[int] = []

    def accuracy_many(self, policies):
        self.batches.append(len(policies))
        return [self.accuracy(p) for p in policies]


def episodes(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    env = gym.make("jpq_env/JPQWeights-v0").unwrapped
    env.action_space.seed(seed)
    return [[env.action_space.sample() for _ in range(2 * env.num_layers)] for _ in range(n)]


def sequential_log(tmp_path, actions, budget) -> list[dict]:
    env = gym.make("jpq_env/JPQWeights-v0").unwrapped
    search = Search(tmp_path / "sequential", RunSettings("random", budget, 0, {}), env)
    for episode in actions[:budget]:
        search.env.reset(seed=0)
        for action in episode:
            search.env.step(action)
    return log_records(tmp_path / "sequential")


@pytest.fixture(scope="module")
def evaluator() -> BatchEvaluator:
    return BatchEvaluator()


def test_batch_gives_the_sequential_records_within_the_budget(tmp_path, evaluator):
    actions = episodes(6)
    env = gym.make("jpq_env/JPQWeights-v0", evaluator=evaluator).unwrapped
    search = Search(tmp_path / "batch", RunSettings("random", 4, 0, {}), env)
    evaluator.batches.clear()
    infos = play_many(search, actions, seed=0)
    assert evaluator.batches == [4]  # one batch, cut to the budget
    assert len(infos) == 4 and search.count == 4 and search.done
    assert log_records(tmp_path / "batch") == sequential_log(tmp_path, actions, 4)
    assert parallelism(search) == 3
    assert play_many(search, actions) == []  # budget spent: nothing played, nothing evaluated
    assert evaluator.batches == [4]


def test_resumed_batch_evaluates_only_what_the_log_lacks(tmp_path, evaluator):
    actions = episodes(5, seed=1)
    run = tmp_path / "run"
    env = gym.make("jpq_env/JPQWeights-v0", evaluator=evaluator).unwrapped
    play_many(Search(run, RunSettings("random", 3, 0, {}), env), actions)
    evaluator.batches.clear()
    env = gym.make("jpq_env/JPQWeights-v0", evaluator=evaluator).unwrapped
    resumed = Search(run, RunSettings("random", 5, 0, {}), env, resume=True)
    assert parallelism(resumed) == 3  # seen through the resume's replay evaluator
    play_many(resumed, actions)
    assert evaluator.batches == [2]  # episodes 0-2 came from the log
    assert resumed.count == 5
    assert log_records(run) == sequential_log(tmp_path, actions, 5)


def test_sequential_evaluator_keeps_the_sequential_path(tmp_path):
    env = gym.make("jpq_env/JPQWeights-v0").unwrapped
    search = Search(tmp_path, RunSettings("random", 2, 0, {}), env)
    assert parallelism(search) == 1
    infos = play_many(search, episodes(2, seed=2))
    assert [i["accuracy"] for i in infos] == [r["accuracy"] for r in log_records(tmp_path)]
    assert search.count == 2


@pytest.mark.parametrize("agent", ["random", "greedy"])
def test_baselines_batched_keep_their_sequential_records(tmp_path, evaluator, agent):
    from jpq_agents.baselines import BASELINES

    logs = []
    for name, ev in (("sequential", None), ("batched", evaluator)):
        env = gym.make(
            "jpq_env/JPQWeightsActs-v0", **({} if ev is None else {"evaluator": ev})
        ).unwrapped
        search = Search(tmp_path / name, RunSettings(agent, 14, 3, {}), env)
        evaluator.batches.clear()
        BASELINES[agent](search, 3)
        logs.append(log_records(tmp_path / name))
    assert logs[0] == logs[1] and len(logs[0]) == 14
    assert max(evaluator.batches) > 1  # the batched run did evaluate in batches


# The two-level controller's model-based phase with 16 imagined episodes per round instead of 96:
# what is batched (real evaluations) is the same, the imagination 6x cheaper.
TWO_LEVEL = {"imagined": 16}


def _two_level_log(path, evaluator, episodes, reward, resume=False) -> list[dict]:
    from jpq_agents.two_level import TwoLevelConfig, run_two_level

    kwargs = {"reward": reward, **({} if evaluator is None else {"evaluator": evaluator})}
    env = gym.make("jpq_env/JPQWeights-v0", **kwargs).unwrapped
    search = Search(path, RunSettings("two-level", episodes, 4, TWO_LEVEL), env, resume=resume)
    run_two_level(search, 4, TwoLevelConfig(**TWO_LEVEL))
    assert search.count == episodes
    return log_records(path)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The sequential (unbatched) log of a 50-evaluation search per reward design, made once."""
    logs: dict[str, list[dict]] = {}

    def log(reward: str) -> list[dict]:
        if reward not in logs:
            path = tmp_path_factory.mktemp(f"sequential-{reward}")
            logs[reward] = _two_level_log(path, None, 50, reward)
        return logs[reward]

    return log


@pytest.mark.parametrize("reward", ["galen", "lagrangian"])  # lagrangian: state per episode
def test_two_level_batched_keeps_its_sequential_records(tmp_path, evaluator, sequential, reward):
    # 50 evaluations on v0: the warm start, a full batch of 8 sampled episodes (one update) and
    # a partial one, then refinement rounds of 4.
    expected = sequential(reward)
    evaluator.batches.clear()
    assert _two_level_log(tmp_path / "batched", evaluator, 50, reward) == expected
    # The 6 warm-start policies (one per width on v0), 8 sampled episodes, 1 more (alone: no
    # batch), then the last 35 evaluations (70% of 50) in refinement rounds of 4, the last cut.
    assert evaluator.batches == [6, 8] + [4] * 8 + [3]


class _Crash(Exception):
    pass


class _CrashingPool(WrappedEvaluator):
    """A pool that dies (raises) once it has evaluated ``left`` policies: a killed search."""

    workers = 3

    def __init__(self, inner: BatchEvaluator, left: int) -> None:
        super().__init__(inner)
        self.left = left

    def accuracy(self, policy, *, at_least=None):
        return self.accuracy_many([policy])[0]

    def accuracy_many(self, policies):
        if len(policies) > self.left:
            raise _Crash
        self.left -= len(policies)
        return self.inner.accuracy_many(policies)


def test_two_level_batched_resumes_to_the_sequential_records(tmp_path, evaluator, sequential):
    expected = sequential("galen")
    with pytest.raises(_Crash):  # dies in the refinement, after 23 evaluations
        _two_level_log(tmp_path / "run", _CrashingPool(evaluator, 23), 50, "galen")
    logged = log_records(tmp_path / "run")
    assert 15 < len(logged) <= 23 and logged == expected[: len(logged)]
    evaluator.batches.clear()
    assert _two_level_log(tmp_path / "run", evaluator, 50, "galen", resume=True) == expected
    assert sum(evaluator.batches) == 50 - len(logged)  # the logged ones came from the log


def test_tape_ends_episodes_at_their_evaluation_unevaluated(tmp_path, evaluator):
    from jpq_agents.batch import capturing

    actions = episodes(3, seed=5)
    env = gym.make("jpq_env/JPQWeights-v0", evaluator=evaluator).unwrapped
    search = Search(tmp_path, RunSettings("random", 3, 0, {}), env)
    evaluator.batches.clear()
    with capturing(search) as tape:
        for episode in actions:
            tape.reset(seed=0)
            results = [tape.step(a) for a in episode]
            assert [r[2] for r in results] == [False] * (len(episode) - 1) + [True]
            assert results[-1][4] == {"captured": True} and results[-1][1] == 0.0
    assert search.count == 0 and not (tmp_path / LOG_NAME).exists()  # nothing recorded
    assert env.evaluator is evaluator  # restored
    assert [len(e) for e in tape.episodes] == [len(e) for e in actions]
    assert all(
        np.array_equal(a, b)
        for x, y in zip(tape.episodes, actions, strict=True)
        for a, b in zip(x, y, strict=True)
    )
    infos = play_many(search, tape.episodes, seed=0, policies=tape.policies)
    assert evaluator.batches == [3]
    assert [i["accuracy"] for i in infos] == [evaluator.accuracy(p) for p in tape.policies]
    assert log_records(tmp_path) == sequential_log(tmp_path / "seq", actions, 3)
    with pytest.raises(ValueError, match="2 policies given for 3 episodes"):
        play_many(search, tape.episodes, policies=tape.policies[:2])
