"""A search (``jpq_agents.search``): counting, logging and keeping the best; never overwriting a
run; resuming after a crash to the uninterrupted result; the log's repair rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jpq_agents.baselines import BASELINES
from jpq_agents.sb3 import run_sb3
from jpq_agents.search import LOG_NAME, POLICY_NAME, RunSettings, Search, SearchError
from jpq_agents.two_level import run_two_level
from jpq_env import LocalEvaluator, Policy, load_task, measure
from jpq_env.envs import JPQEnv
from tests.episodes import log_records


@pytest.fixture(scope="module")
def shared() -> JPQEnv:
    return JPQEnv()


def _env(shared: JPQEnv, **kwargs) -> JPQEnv:
    return JPQEnv(evaluator=shared.evaluator, **kwargs)


def test_search_counts_logs_and_keeps_the_best(tmp_path, shared):
    search = Search(tmp_path, RunSettings("random", 15, 0), _env(shared))
    BASELINES["random"](search, 0)
    records = log_records(tmp_path)
    assert search.count == len(records) == 15
    assert [r["episode"] for r in records] == list(range(15))
    for r in records[:3]:  # every logged policy is what the cost model says it is
        policy = Policy.from_json(
            {"schema": 1, "fingerprint": shared.graph.fingerprint, "layers": r["policy"]}
        )
        assert measure(shared.graph, policy).bops_ratio == r["bops_ratio"]
    best = max((r for r in records if r["budget_met"]), key=lambda r: r["accuracy"])
    saved = json.loads((tmp_path / POLICY_NAME).read_text())
    assert saved["episode"] == best["episode"] and saved["accuracy_val"] == best["accuracy"]
    assert [layer["bits"] for layer in saved["layers"]] == [p["bits"] for p in best["policy"]]


def test_a_directory_holding_a_run_is_never_overwritten(tmp_path, shared):
    Search(tmp_path, RunSettings("random", 2, 0), _env(shared))
    (tmp_path / LOG_NAME).write_text("precious\n")
    with pytest.raises(SearchError, match="already holds a run"):
        Search(tmp_path, RunSettings("random", 2, 0), _env(shared))
    with pytest.raises(SearchError, match="other settings"):
        Search(tmp_path, RunSettings("greedy", 2, 0), _env(shared), resume=True)
    assert (tmp_path / LOG_NAME).read_text() == "precious\n"
    fresh = Search(tmp_path / "empty", RunSettings("random", 2, 0), _env(shared), resume=True)
    assert fresh.count == 0 and (tmp_path / "empty" / "run.json").exists()  # nothing to resume


class _Kill(Exception):
    pass


def _runner(agent: str):
    if agent == "two-level":
        return run_two_level
    if agent in BASELINES:
        return BASELINES[agent]
    return lambda search, seed: run_sb3(
        search, seed, agent, "jpq_env/JPQWeights-v0", warmup_episodes=2
    )


@pytest.mark.parametrize(
    ("agent", "episodes", "kill_at"), [("random", 12, 5), ("two-level", 24, 13), ("ddpg", 8, 4)]
)
def test_resume_after_a_crash_reaches_the_uninterrupted_result(
    tmp_path, shared, agent, episodes, kill_at
):
    run = _runner(agent)
    settings = RunSettings(agent, episodes, 3)
    whole = Search(tmp_path / "whole", settings, _env(shared))
    run(whole, 3)

    def kill(record, replayed):
        if record["episode"] == kill_at:
            raise _Kill

    broken = Search(tmp_path / "broken", settings, _env(shared), on_record=kill)
    with pytest.raises(_Kill):
        run(broken, 3)
    with (tmp_path / "broken" / LOG_NAME).open("a") as f:
        f.write('{"episode": 99, "trunc')  # a line cut by the crash
    calls = []
    inner = _env(shared)
    counting = inner.evaluator

    class Counting:
        fp32_accuracy = counting.fp32_accuracy

        def accuracy(self, policy):
            calls.append(1)
            return counting.accuracy(policy)

    inner.evaluator = Counting()
    resumed = Search(tmp_path / "broken", settings, inner, resume=True)
    run(resumed, 3)
    assert log_records(tmp_path / "broken") == log_records(tmp_path / "whole")
    # Logged episodes are not evaluated again; only the best one the log claims is scored once
    # more before it is written (an edited accuracy must not become the result).
    claimed = any(r["budget_met"] for r in log_records(tmp_path / "whole")[: kill_at + 1])
    assert len(calls) == episodes - (kill_at + 1) + claimed
    assert (tmp_path / "broken" / POLICY_NAME).read_text() == (
        tmp_path / "whole" / POLICY_NAME
    ).read_text()


def _run(out: Path, shared: JPQEnv, episodes: int, resume: bool = False) -> Search:
    search = Search(
        out, RunSettings("random", episodes, 0), JPQEnv(evaluator=shared.evaluator), resume=resume
    )
    search.env.action_space.seed(0)
    while not search.done:
        search.env.reset()
        done = False
        while not done:
            done = search.env.step(search.env.action_space.sample())[2]
    return search


def test_torn_or_invalid_last_line_is_dropped_with_a_warning(tmp_path, shared):
    _run(tmp_path, shared, 3)
    good = (tmp_path / LOG_NAME).read_bytes()
    for torn in (b'{"episode": 3, "acc', b'{"episode": 3, "acc\n', b"\x00\x00\x00\n"):
        (tmp_path / LOG_NAME).write_bytes(good + torn)
        with pytest.warns(UserWarning, match=rf"dropped a last line .*\({len(torn)} bytes\)"):
            search = Search(
                tmp_path,
                RunSettings("random", 3, 0),
                JPQEnv(evaluator=shared.evaluator),
                resume=True,
            )
        assert (tmp_path / LOG_NAME).read_bytes() == good  # cut back to the complete lines
        assert [r["episode"] for r in search._replay] == [0, 1, 2]


def test_a_corrupt_line_before_the_last_stops_the_resume(tmp_path, shared):
    _run(tmp_path, shared, 3)
    lines = (tmp_path / LOG_NAME).read_bytes().split(b"\n")
    for bad in (b"garbage", lines[2]):  # not JSON; a record out of order
        edited = b"\n".join([lines[0], bad, *lines[2:]])
        (tmp_path / LOG_NAME).write_bytes(edited)
        with pytest.raises(SearchError, match=r"cannot resume: .*:2 is not a valid record"):
            Search(
                tmp_path,
                RunSettings("random", 3, 0),
                JPQEnv(evaluator=shared.evaluator),
                resume=True,
            )
        assert (tmp_path / LOG_NAME).read_bytes() == edited  # left for the user to inspect


def test_racing_fidelity_scores_fewer_images_and_never_changes_a_complete_score(tmp_path):
    """The same random policies (they do not depend on scores), scored in full and raced."""
    task = load_task("digits")
    logs = {}
    for fidelity in ("full", "race"):  # batches of 32 images: a race may stop after any of them
        env = JPQEnv(task=task, evaluator=LocalEvaluator(task, device="cpu", batch_size=32))
        search = Search(tmp_path / fidelity, RunSettings("random", 40, 1, fidelity=fidelity), env)
        BASELINES["random"](search, 1)
        logs[fidelity] = log_records(tmp_path / fidelity)
    full, race = logs["full"], logs["race"]
    assert [r["policy"] for r in full] == [r["policy"] for r in race]
    assert all(r.get("proxy_complete", True) for r in full)
    raced = [r for r in race if r.get("proxy_complete") is False]
    assert raced, "nothing was raced"
    best = None
    for a, b in zip(full, race, strict=True):
        if b.get("proxy_complete", True):
            assert b["accuracy"] == a["accuracy"]  # a complete score is the full score
        else:  # stopped early: it could not beat the best so far, and indeed it did not
            assert best is not None and b["proxy_images"] < env.evaluator.val_images
            assert a["accuracy"] <= best
        if a["budget_met"]:
            best = a["accuracy"] if best is None else max(best, a["accuracy"])
    kept = [r["accuracy"] for r in race if r["budget_met"] and r.get("proxy_complete", True)]
    assert max(kept) == max(r["accuracy"] for r in full if r["budget_met"])
    with pytest.raises(SearchError, match="fidelity"):
        Search(tmp_path / "race", RunSettings("random", 40, 1, fidelity="full"), env, resume=True)
    with pytest.raises(SearchError, match="fidelity must be one of"):
        Search(tmp_path / "bad", RunSettings("random", 4, 1, fidelity="half"), env)


def test_a_summary_says_what_the_set_up_and_the_proxy_cost(tmp_path, monkeypatch):
    from jpq_agents.run import run_search
    from jpq_env.proxy import sensitivity

    monkeypatch.setenv("JPQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sensitivity, "_MEMORY", {})
    env = {"val_images": 64, "sensitivity": True}
    summary = run_search("greedy", tmp_path / "a", 8, progress=False, env_kwargs=env)
    assert summary["setup_seconds"] >= summary["sensitivity"]["seconds"] > 0
    assert summary["sensitivity"]["source"] == "measured"
    assert summary["sensitivity"]["evaluations"] > len(JPQEnv().graph)  # at least one per layer
    assert Path(summary["sensitivity"]["cache"]).is_file()
    proxy = summary["proxy"]
    # every search evaluation, and the FP32 policy once; nothing raced at 64 images in one batch
    assert proxy["evaluations"] == proxy["complete_evaluations"] == 8 + 1
    calib = JPQEnv().evaluator.calib_images
    assert 0 < proxy["image_forwards"] <= proxy["evaluations"] * (64 + calib)
    again = run_search("greedy", tmp_path / "b", 2, progress=False, env_kwargs=env)
    assert again["sensitivity"]["source"] == "memory" and again["sensitivity"]["evaluations"] == 0


def test_a_run_from_before_the_fidelity_setting_resumes_in_full(tmp_path):
    from jpq_agents.run import run_search
    from jpq_env.errors import ArgumentError

    env = {"val_images": 64}
    run_search("random", tmp_path, 3, progress=False, env_kwargs=env, fidelity="full")
    run_file = tmp_path / "run.json"
    old = json.loads(run_file.read_text())
    del old["fidelity"]  # what runs written before the setting hold
    run_file.write_text(json.dumps(old))
    summary = run_search("random", tmp_path, 5, progress=False, env_kwargs=env, resume=True)
    assert summary["evaluations"] == 5 and summary["replayed_from_log"] == 3
    with pytest.raises(SearchError, match="fidelity is 'full' there, 'race' here"):
        run_search("random", tmp_path, 6, env_kwargs=env, resume=True, fidelity="race")
    with pytest.raises(ArgumentError, match="fidelity must be one of"):
        run_search("random", tmp_path / "new", 2, progress=False, fidelity="fast")
