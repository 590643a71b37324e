"""``jpq search --workers`` on Ray (``jpq_agents.scale_out``): the same records and summary as in
process. Uses the session's local Ray (``tests/conftest.py``); skipped without the ``ray`` extra.
"""

import json

import pytest

from tests.episodes import log_records


@pytest.mark.slow
@pytest.mark.parametrize(("agent", "episodes"), [("random", 6), ("two-level", 30)])
def test_cli_search_on_ray_gives_the_in_process_records(local_ray, tmp_path, agent, episodes):
    from jpq_agents.cli import main

    # two-level on v0: 30 evaluations are its warm start, a full batch of 8 sampled episodes
    # (the controllers' draws and an update) and one more, then 15 in refinement rounds of 4
    # (refine_fraction 0.5); 16 imagined episodes per model-based round instead of 96.
    args = ["search", "--agent", agent, "--episodes", str(episodes), "--quiet", "--seed", "5"]
    args += ["--env", "jpq_env/JPQWeights-v0"]
    if agent == "two-level":
        args += ["--agent-option", "imagined=16", "--agent-option", "refine_fraction=0.5"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--workers", "2"]) == 0
    assert log_records(tmp_path / "ray") == log_records(tmp_path / "local")
    summaries = [
        json.loads((tmp_path / name / "summary.json").read_text()) for name in ("local", "ray")
    ]
    for summary in summaries:  # the wall-clock fields differ; everything else must not
        for key in ("seconds", "seconds_per_evaluation", "date", "setup_seconds"):
            summary.pop(key)
        # where the sensitivity table came from (measured, or this process's memory) depends on
        # what ran before in this process; the table itself is the same
        for key in ("seconds", "source", "evaluations"):
            summary.get("sensitivity", {}).pop(key, None)
    # What the proxy spent is counted in process only (a pool's actors keep their own counts).
    assert 0 < summaries[0].pop("proxy")["evaluations"] <= episodes + 1  # and FP32 once
    assert "proxy" not in summaries[1]
    assert summaries[0] == summaries[1]  # test accuracies computed on an actor included
    assert local_ray.is_initialized()  # the session's Ray was used, not stopped
