"""Run outputs that explain themselves, the Pareto plot, and agent options from the command line."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from jpq_agents.agent_options import check_agent_options, read_hyperparams
from jpq_agents.cli import main
from jpq_agents.plots import one_in, pareto_figure, pareto_front
from jpq_agents.run import run_search
from jpq_agents.search import LOG_NAME, SearchError

CHEAP = {"val_images": 16}  # a low-fidelity proxy: each evaluation is cheap


def _scalars(folder: Path) -> dict[str, list[float]]:
    """Every scalar tag in the TensorBoard event files under ``folder``, with its values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for events in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return out


def _cli(argv: list[str]) -> tuple[int, str]:
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = main(argv)
    return code, stdout.getvalue()


# ---- the Pareto plot -----------------------------------------------------------------------


def test_pareto_front_matches_a_brute_force_dominance_check():
    rng = np.random.default_rng(0)
    points = [
        {"bops_ratio": float(b), "accuracy": float(a)}
        for b, a in zip(rng.choice(40, 60) / 40 + 0.01, rng.choice(30, 60) / 30, strict=True)
    ]
    front = pareto_front(points)
    # independent: a point is on the front iff no other has <= BOPs and >= accuracy, one strictly
    expected = {
        (p["bops_ratio"], p["accuracy"])
        for p in points
        if not any(
            q["bops_ratio"] <= p["bops_ratio"]
            and q["accuracy"] >= p["accuracy"]
            and (q["bops_ratio"], q["accuracy"]) != (p["bops_ratio"], p["accuracy"])
            for q in points
        )
    }
    assert {(p["bops_ratio"], p["accuracy"]) for p in front} == expected
    assert [p["bops_ratio"] for p in front] == sorted(p["bops_ratio"] for p in front)


@pytest.mark.parametrize(
    ("ratio", "text"), [(1 / 128, "1/128"), (1 / 64, "1/64"), (0.5, "1/2"), (1.0, "1"), (0, "0")]
)
def test_fractions_are_written_as_one_in_n(ratio, text):
    assert one_in(ratio) == text


def _record(episode, bops, acc, met=True, **extra):
    return {
        "episode": episode,
        "bops_ratio": bops,
        "accuracy": acc,
        "accuracy_fp32": 0.99,
        "budget_met": met,
        **extra,
    }


def test_pareto_figure_has_front_colour_bar_fp32_line_budget_title_and_names_a_hidden_point():
    records = [
        _record(0, 1 / 256, 0.80),
        _record(1, 1 / 150, 0.90),
        _record(2, 1 / 200, 0.85),
        _record(3, 1 / 100, 0.95, met=False),
        _record(4, 1 / 140, 0.70, proxy_complete=False),
    ]
    reference = [
        {"label": "two-stage W4A4 (sparsity 0.10)", "bops_ratio": 1 / 150, "accuracy": 0.90},
        {"label": "two-stage W2A2 (sparsity 0.00)", "bops_ratio": 1 / 300, "accuracy": 0.50},
    ]
    fig = pareto_figure(records, reference, 1 / 128, "two-level on digits (JPQWeightsActs-v0)")
    ax, bar = fig.axes  # the plot and its colour bar
    assert bar.get_ylabel() == "episode"
    assert "budget 1/128 of FP32 BOPs" in ax.get_title() and "digits" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Pareto front of the evaluated policies" in labels
    assert "FP32 (99.00%)" in labels and "budget 1/128" in labels
    (star,) = [t for t in labels if t.startswith("best within budget")]
    assert star == "best within budget (90.00%, episode 1): the same point as two-stage W4A4"
    # the front is the step line through the fully scored points (the raced one is left out)
    (front,) = [line for line in ax.get_lines() if line.get_label().startswith("Pareto")]
    assert list(front.get_ydata()) == [0.80, 0.85, 0.90, 0.95]
    fig.canvas.draw()
    ticks = {t.get_text() for t in ax.get_xticklabels() if t.get_text()}
    assert ticks and all(t.startswith("1/") for t in ticks), ticks
    assert "1/128" in ticks or "1/256" in ticks


# ---- what a run writes -------------------------------------------------------------------


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


def test_a_finished_run_run_again_says_it_is_a_replay_and_a_two_stage_best_is_named(tmp_path):
    out = str(tmp_path / "run")
    argv = ["search", "--agent", "two-stage", "--episodes", "40", "--out", out, "--quiet"]
    argv += ["--env", "jpq_env/JPQWeights-v0", "--env-option", "val_images=32"]
    code, first = _cli(argv)
    assert code == 0 and "replayed" not in first
    summary = json.loads(Path(out, "summary.json").read_text())
    assert "replayed_from_log" not in summary
    reference = [json.loads(x) for x in Path(out, "reference.jsonl").read_text().splitlines()]
    best_policy = json.loads(Path(out, "policy.json").read_text())
    key = [[p["act_bits"], p["bits"]] for p in best_policy["layers"]]
    same = [
        p["label"] for p in reference if [[q["act_bits"], q["bits"]] for q in p["policy"]] == key
    ]
    assert same and summary["best"]["same_as"] == same[0]  # the two-stage agent's best is one
    assert f"the best policy is the reference policy '{same[0]}'" in first
    assert json.loads(Path(out, "run.json").read_text())["env"]["val_images"] == 32
    code, again = _cli([*argv, "--resume"])
    n = summary["evaluations"]
    assert code == 0
    assert f"resumed: {n} evaluations replayed from the log (not re-scored), 0 new" in again
    assert "already finished" in again
    assert json.loads(Path(out, "summary.json").read_text())["replayed_from_log"] == n


# ---- agent options -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "options", "message"),
    [
        ("two-level", {"learning_rate": 0.1}, r"no option 'learning_rate'.*'lr'"),
        ("two-level", {"hidden": "wide"}, r"hidden='wide': expected int"),
        ("two-level", {"hidden": 0}, r"TwoLevelConfig.hidden must be at least 1"),
        ("two-level", {"refine_fraction": 1.5}, r"refine_fraction must be in \[0, 1\]"),
        ("two-level", {"surrogate": "maybe"}, r"surrogate='maybe': expected bool"),
        ("two-level", {"lr": float("nan")}, r"lr=nan: expected float"),
        ("ppo", {"n_timesteps": 10}, r"'n_timesteps' is not settable: the evaluation budget"),
        ("ppo", {"env_wrapper": "x"}, r"'env_wrapper' is not settable"),
        ("ddpg", {"noise_type": "normal"}, r"'noise_type' is not settable: DDPG explores"),
        ("ppo", {"buffer_size": 10}, r"ppo has no hyperparameter 'buffer_size'.*'n_steps'"),
        ("ddpg", {"policy_kwargs": "__import__('os')"}, r"only dict\(...\)"),
        ("random", {"x": 1}, r"agent 'random' takes no options"),
        ("two-level", {"lr": {"a": object()}}, r"values must be plain"),
    ],
)  # fmt: skip
def test_bad_agent_options_are_refused_by_name(agent, options, message):
    with pytest.raises(ValueError, match=message):
        check_agent_options(agent, options)


def test_agent_options_are_converted_to_the_agents_types():
    assert check_agent_options("two-level", {"hidden": 32.0, "surrogate": "false", "lr": 1}) == {
        "hidden": 32,
        "surrogate": False,
        "lr": 1.0,
    }
    assert check_agent_options("ddpg", {"noise_std": 1, "gamma": 0.9}) == {
        "noise_std": 1.0,
        "gamma": 0.9,
    }
    assert check_agent_options("uniform", {}) == {}


def test_an_rl_zoo_file_gives_its_entry_for_the_id_without_the_keys_a_search_sets(tmp_path):
    path = tmp_path / "ppo.yml"
    table = {
        "jpq_env/JPQWeights-v0": {"n_steps": 96, "n_timesteps": 1e6, "env_wrapper": "x"},
        "default": {"n_steps": 48, "gamma": 0.99},
    }
    path.write_text(yaml.safe_dump(table))
    assert read_hyperparams(path, "jpq_env/JPQWeights-v0") == {"n_steps": 96}
    assert read_hyperparams(path, "jpq_env/JPQWeightsActs-v0") == {"n_steps": 48, "gamma": 0.99}
    # RL Zoo's DDPG files name their noise; the runner's own noise keeps only its scale.
    path.write_text(yaml.safe_dump({"default": {"noise_type": "normal", "noise_std": 0.3}}))
    assert check_agent_options("ddpg", read_hyperparams(path, "default")) == {"noise_std": 0.3}
    path.write_text("jpq_env/JPQWeights-v0: {n_steps: 1}\n")
    with pytest.raises(ValueError, match="no entry for 'jpq_env/JPQWeightsActs-v0' nor 'default'"):
        read_hyperparams(path, "jpq_env/JPQWeightsActs-v0")
    path.write_text("a: [unclosed\n")
    with pytest.raises(ValueError, match="are not YAML"):
        read_hyperparams(path, "default")
    with pytest.raises(ValueError, match="cannot read hyperparameters"):
        read_hyperparams(tmp_path / "missing.yml", "default")


@pytest.mark.slow
def test_cli_hyperparams_file_and_agent_options_reach_the_sb3_learner(tmp_path, capsys):
    from stable_baselines3 import PPO

    conf = tmp_path / "ppo.yml"
    conf.write_text(yaml.safe_dump({"default": {"learning_rate": 0.002, "n_steps": 36}}))
    out = tmp_path / "run"
    argv = ["search", "--agent", "ppo", "--episodes", "6", "--out", str(out), "--quiet"]
    argv += ["--env-option", "val_images=16", "--hyperparams", str(conf)]
    argv += ["--agent-option", "n_steps=12", "--agent-option", "batch_size=6"]
    code, _ = _cli(argv)
    assert code == 0
    model = PPO.load(out / "model.zip", device="cpu")
    assert (model.learning_rate, model.n_steps, model.batch_size) == (0.002, 12, 6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--agent-option", "lr=fast"], r"agent option lr='fast': expected float"),
        (["--env-option", "val_imgs=16"], r"unknown environment argument\(s\) \['val_imgs'\]"),
        (["--env-option", "budget_bops=0.5"], r"budget_bops=...: set it with --budget-bops"),
        (["--hyperparams", "x.yml"], r"--hyperparams is for the SB3 agents"),
    ],
)
def test_cli_refuses_bad_options_before_writing_anything(tmp_path, capsys, extra, message):
    import re

    out = tmp_path / "run"
    code = main(["search", "--episodes", "3", "--out", str(out), "--quiet", *extra])
    assert code != 0 and re.search(message, capsys.readouterr().err)
    assert not out.exists()
