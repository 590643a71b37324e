"""The two-level controller's runs (``jpq_agents.two_level``): deterministic, exact in its budget,
warm-started from two-stage, refining without learning, reporting to TensorBoard.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from jpq_agents.baselines import BASELINES
from jpq_agents.run import run_search
from jpq_agents.search import LOG_NAME, RunSettings, Search, SearchError
from jpq_agents.two_level import TwoLevelConfig, run_two_level
from jpq_env.envs import JPQEnv
from tests.episodes import ACTS, log_records, tensorboard_scalars

CHEAP = {"val_images": 16}  # a low-fidelity proxy: each evaluation is cheap


@pytest.fixture(scope="module")
def shared() -> JPQEnv:
    return JPQEnv()


def _env(shared: JPQEnv, **kwargs) -> JPQEnv:
    return JPQEnv(evaluator=shared.evaluator, **kwargs)


def test_two_level_is_deterministic_and_exact_in_its_budget(tmp_path, shared):
    runs = []
    for name in ("a", "b"):
        search = Search(tmp_path / name, RunSettings("two-level", 30, 1), _env(shared))
        run_two_level(search, 1)
        assert search.count == 30
        runs.append(log_records(tmp_path / name))
    assert runs[0] == runs[1]
    assert all(r["budget_met"] for r in runs[0])


def test_two_level_without_learning_refines_its_warm_start(tmp_path, shared):
    # refine_fraction=1: the warm start is still played whole, then every evaluation refines.
    search = Search(tmp_path, RunSettings("two-level", 30, 0), _env(shared))
    run_two_level(search, 0, TwoLevelConfig(refine_fraction=1.0))
    phases = [r.get("phase", "") for r in search.records]
    assert search.count == 30 and phases[0] == "warm-start"
    assert "learning" not in phases and phases[-1].startswith("refinement")


@pytest.mark.slow
def test_the_two_level_controller_reports_its_learning_to_tensorboard(tmp_path):
    out = tmp_path / "run"
    options = {"warm_start": False, "refine_fraction": 0.0, "surrogate": False}
    run_search("two-level", out, 24, env_kwargs=CHEAP, progress=False, agent_options=options)
    tags = _scalars(out / "tensorboard")
    updates = len(tags["two_level/loss"])
    assert updates == 24 // 8  # one update per batch of 8 real episodes (batch_episodes)
    assert all(np.isfinite(tags["two_level/loss"])) and min(tags["two_level/entropy"]) > 0
    records = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert {r["phase"] for r in records} == {"learning"}  # no warm start, no refinement: options
    with pytest.raises(SearchError, match=r"agent option refine_fraction is 0\.0 there, 0\.5 here"):
        run_search(
            "two-level",
            out,
            24,
            env_kwargs=CHEAP,
            progress=False,
            resume=True,
            agent_options={**options, "refine_fraction": 0.5},
        )


@pytest.fixture(scope="module")
def acts_env(shared: JPQEnv) -> JPQEnv:
    """JPQWeightsActs-v0's choices: each layer decision also picks an activation width."""
    return JPQEnv(act_bits=ACTS, budget_bops=1 / 128, evaluator=shared.evaluator)


def _acts_env(acts_env: JPQEnv, **kwargs) -> JPQEnv:
    return JPQEnv(evaluator=acts_env.evaluator, act_bits=ACTS, **{"budget_bops": 1 / 128, **kwargs})


def test_two_level_is_deterministic_and_starts_from_two_stage(tmp_path, acts_env):
    runs = []
    for name in ("a", "b"):
        search = Search(tmp_path / name, RunSettings("two-level", 40, 2), _acts_env(acts_env))
        run_two_level(search, 2)
        assert search.count == 40
        runs.append(log_records(tmp_path / name))
    assert runs[0] == runs[1]
    assert all(r["budget_met"] for r in runs[0])
    # The warm start plays the two-stage baseline's first policies, in its order.
    search = Search(tmp_path / "two-stage", RunSettings("two-stage", 12, 0), _acts_env(acts_env))
    BASELINES["two-stage"](search, 0)
    assert [r["policy"] for r in runs[0][:12]] == [r["policy"] for r in log_records(search.out)]


@pytest.mark.slow
def test_learner_scalars_are_one_value_per_step_and_the_settings_are_hparams(tmp_path):
    """The model-based controller updates many times per evaluation: each tag gets the mean."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    options = {"warm_start": False, "imagined": 16, "refine_fraction": 0.0}
    run_search("two-level", out, 40, env_kwargs=CHEAP, progress=False, agent_options=options)
    steps = _steps(out / "tensorboard")
    learner = [tag for tag in steps if tag.startswith("two_level/")]
    assert learner
    for tag in learner:
        assert len(steps[tag]) == len(set(steps[tag])), tag  # no vertical bars
    found = False
    for events in (out / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        try:
            found |= bool(acc.PluginTagToContent("hparams"))
        except KeyError:  # not in this file
            continue
    assert found


def _scalars(folder: Path) -> dict[str, list[float]]:
    return {tag: [v for _, v in pairs] for tag, pairs in tensorboard_scalars(folder).items()}


def _steps(folder: Path) -> dict[str, list[int]]:
    return {tag: [step for step, _ in pairs] for tag, pairs in tensorboard_scalars(folder).items()}


def test_greedy_start_plays_greedys_rounds_then_refines_its_best(tmp_path, shared):
    # Greedy on its own: its probes, until it converges (well within 60 evaluations here).
    alone = Search(tmp_path / "greedy", RunSettings("greedy", 60, 0), _env(shared))
    reason = BASELINES["greedy"](alone, 0)
    assert reason and "converged" in reason and alone.count < 60
    greedy_records = log_records(alone.out)
    # The two-level controller started from greedy: the same probes first, in the same order,
    # then its own evaluations from greedy's best, and a best at least as good.
    search = Search(tmp_path / "two-level", RunSettings("two-level", 60, 0), _env(shared))
    run_two_level(search, 0, TwoLevelConfig(greedy_start=True))
    records = log_records(search.out)
    assert search.count == 60
    n = len(greedy_records)
    assert [r["policy"] for r in records[:n]] == [r["policy"] for r in greedy_records]
    assert {r["phase"] for r in records[:n]} == {"greedy"}
    assert all(r["phase"] != "greedy" for r in records[n:])
    assert "warm-start" not in {r["phase"] for r in records}
    best_greedy = max(r["reward"] for r in greedy_records)
    assert max(r["reward"] for r in records) >= best_greedy
