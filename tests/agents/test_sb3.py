"""The stable-baselines3 agents (``jpq_agents.sb3``): exact budgets, the DDPG noise, the
hyperparameters, what a run saves (model, learner scalars, log records), and activation decisions.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from jpq_agents.run import run_search
from jpq_agents.sb3 import TruncatedNormalDecayNoise, hyperparameters
from jpq_agents.search import LOG_NAME
from tests.episodes import log_records, tensorboard_scalars, widths

CHEAP = {"val_images": 16}  # a low-fidelity proxy: each evaluation is cheap


@pytest.mark.parametrize("agent", ["ddpg", "ppo", "maskable-ppo"])
def test_sb3_agents_spend_exactly_the_budget(tmp_path, agent):
    summary = run_search(agent, tmp_path / agent, 14, seed=0, progress=False, warmup_episodes=3)
    assert summary["evaluations"] == 14 == len(log_records(tmp_path / agent))
    assert (tmp_path / agent / "pareto.png").stat().st_size > 10_000
    assert list((tmp_path / agent / "tensorboard").iterdir())


def test_truncated_normal_noise_decays_per_episode():
    noise = TruncatedNormalDecayNoise(5, sigma=0.4, decay=0.5, seed=0)
    draws = np.stack([noise() for _ in range(2000)])
    assert np.abs(draws).max() <= 0.8 and draws.std() == pytest.approx(0.4 * 0.88, rel=0.1)
    noise.reset()
    noise.reset()
    assert noise.sigma == pytest.approx(0.1)
    assert np.abs(np.stack([noise() for _ in range(500)])).max() <= 0.2


def test_hyperparameters_come_from_zoo_yaml():
    ppo = hyperparameters("ppo", "jpq_env/JPQWeights-v0")
    assert ppo["gamma"] == 1.0 and ppo["n_steps"] == 48
    assert hyperparameters("ppo", "jpq_env/JPQWeightsDeep-v0")["n_steps"] == 88
    assert hyperparameters("ddpg", "someone/Else-v0")["gamma"] == 1.0  # the default entry


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ppo") / "run"
    run_search(
        "ppo",
        out,
        16,
        seed=0,
        env_kwargs=CHEAP,
        progress=False,
        agent_options={"n_steps": 24, "batch_size": 12, "learning_rate": 0.001},
    )
    return out


@pytest.mark.slow
def test_an_sb3_run_saves_its_model_and_its_learners_scalars(ppo_run):
    from stable_baselines3 import PPO

    model = PPO.load(ppo_run / "model.zip", device="cpu")
    assert model.n_steps == 24 and model.batch_size == 12  # the options reached the learner
    assert model.learning_rate == 0.001
    tags = _scalars(ppo_run / "tensorboard")
    assert {"train/loss", "train/entropy_loss", "train/learning_rate"} <= set(tags), sorted(tags)
    assert tags["train/learning_rate"][0] == pytest.approx(0.001)
    assert len(tags["episode/accuracy"]) == 16
    steps = _steps(ppo_run / "tensorboard")  # SB3's scalars on the episode axis, like the rest
    assert max(steps["train/loss"]) <= 16 and max(steps["episode/accuracy"]) == 15
    run = json.loads((ppo_run / "run.json").read_text())
    assert run["agent_options"] == {"n_steps": 24, "batch_size": 12, "learning_rate": 0.001}


@pytest.mark.slow
def test_log_records_name_their_split_phase_and_reward_terms(ppo_run):
    records = [json.loads(line) for line in (ppo_run / LOG_NAME).read_text().splitlines()]
    assert len(records) == 16
    for r in records:
        assert r["split"] == "val" and r["phase"] == "learning"
        terms = r["reward_terms"]
        assert "total" in terms and all(np.isfinite(list(terms.values())))
    tags = _scalars(ppo_run / "tensorboard")
    assert tags["reward/total"] == pytest.approx([r["reward_terms"]["total"] for r in records])


@pytest.mark.parametrize("agent", ["ddpg", "maskable-ppo"])
def test_sb3_agents_run_on_activation_decisions(tmp_path, agent):
    summary = run_search(
        agent, tmp_path, 10, env_id="jpq_env/JPQWeightsActs-v0", progress=False, warmup_episodes=3
    )
    records = log_records(tmp_path)
    assert summary["evaluations"] == 10 == len(records)
    assert summary["env"]["id"] == "jpq_env/JPQWeightsActs-v0"
    assert len({w[1] for r in records for w in widths(r)}) >= 2  # activation widths vary


@pytest.mark.slow
def test_a_saved_model_acts_again_on_the_env_its_run_rebuilds(ppo_run):
    from stable_baselines3 import PPO

    from jpq_agents.run import make_run_env

    env = make_run_env(ppo_run, device="cpu")
    model = PPO.load(ppo_run / "model.zip", env=env, device="cpu")  # SB3 checks the spaces
    assert env.observation_space == model.observation_space
    assert env.action_space == model.action_space
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    env.step(action)
    raw = make_run_env(ppo_run, view=False)
    assert raw.unwrapped.sensitivity is not None  # the learning signals the search turned on


@pytest.mark.slow
def test_resuming_a_finished_run_shows_its_summary_without_running_the_agent(ppo_run, monkeypatch):
    from jpq_agents import run as run_module

    def refuse(*args, **kwargs):
        raise AssertionError("the agent ran again")

    monkeypatch.setitem(run_module.AGENTS, "ppo", refuse)
    options = {"n_steps": 24, "batch_size": 12, "learning_rate": 0.001}
    summary = run_search(
        "ppo", ppo_run, 16, env_kwargs=CHEAP, resume=True, progress=False, agent_options=options
    )
    assert summary.pop("already_finished") is True
    assert summary == json.loads((ppo_run / "summary.json").read_text())


def _scalars(folder: Path) -> dict[str, list[float]]:
    return {tag: [v for _, v in pairs] for tag, pairs in tensorboard_scalars(folder).items()}


def _steps(folder: Path) -> dict[str, list[int]]:
    return {tag: [step for step, _ in pairs] for tag, pairs in tensorboard_scalars(folder).items()}
