"""Agent options from the command line and RL Zoo files: refused by name, converted to the agents'
types, and reaching the learner.
"""

import contextlib
import io

import pytest
import yaml

from jpq_agents.agent_options import check_agent_options, read_hyperparams
from jpq_agents.cli import main


def _cli(argv: list[str]) -> tuple[int, str]:
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = main(argv)
    return code, stdout.getvalue()


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


@pytest.mark.parametrize(
    ("agent", "options", "message"),
    [
        ("ppo", {"learning_rate": float("nan")}, r"learning_rate=nan: expected a finite num"),
        ("ppo", {"learning_rate": 0}, r"learning_rate=0: expected a finite number > 0"),
        ("ppo", {"learning_rate": "lin_fast"}, r"schedule lin_<number>"),
        ("ppo", {"learning_rate": "lin_-1"}, r"learning_rate=-1.0: expected"),
        ("ppo", {"n_steps": 0}, r"n_steps=0: expected an integer in \[2, 1e\+06\]"),
        ("ppo", {"n_steps": 2.5}, r"n_steps=2.5: expected an integer"),
        ("ppo", {"batch_size": -1}, r"batch_size=-1: expected an integer in \[2, "),
        ("ppo", {"gamma": "inf"}, r"gamma='inf': expected a finite number in \[0, 1\]"),
        ("ppo", {"gamma": 1.5}, r"gamma=1.5: expected a finite number in \[0, 1\]"),
        ("ppo", {"clip_range": None}, r"clip_range=None: expected a value"),
        ("ppo", {"normalize_advantage": "maybe"}, r"expected true or false"),
        ("ppo", {"policy": "CnnPolicy"}, r"expected one of \['MlpPolicy'\]"),
        ("ppo", {"rollout_buffer_class": "x"}, r"is an object, not settable"),
        ("ddpg", {"tau": -0.1}, r"tau=-0.1: expected a finite number in \[0, 1\]"),
        ("ddpg", {"train_freq": [4, "hour"]}, r"train_freq=\[4, 'hour'\]: expected an integer"),
        ("ddpg", {"buffer_size": 0}, r"buffer_size=0: expected an integer in \[1, 1e\+07\]"),
        ("ddpg", {"buffer_size": 10**9}, r"buffer_size=1000000000: expected an integer in"),
        ("ddpg", {"noise_std": float("inf")}, r"noise_std=inf: expected a finite number"),
        ("maskable-ppo", {"target_kl": 0}, r"target_kl=0: expected a finite number > 0"),
    ],
)  # fmt: skip
def test_bad_inputs_sb3_option_values_are_checked_before_the_run(agent, options, message):
    with pytest.raises(ValueError, match=message):
        check_agent_options(agent, options)


def test_rl_zoo_schedules_and_numbers_written_as_strings_are_accepted():
    from jpq_agents.agent_options import schedule

    options = {"learning_rate": "lin_0.001", "clip_range": "lin_0.2", "gamma": "0.99"}
    checked = check_agent_options("ppo", options)
    assert checked == {"learning_rate": "lin_0.001", "clip_range": "lin_0.2", "gamma": 0.99}
    rate = schedule(checked["learning_rate"])  # RL Zoo's linear schedule
    assert (rate(1.0), rate(0.5), rate(0.0)) == (0.001, 0.0005, 0.0)
    assert schedule(0.1) == 0.1
    assert check_agent_options("ppo", {"n_steps": "1e6"}) == {"n_steps": 10**6}
    assert check_agent_options("ddpg", {"train_freq": [1, "episode"]}) == {
        "train_freq": [1, "episode"]
    }


def test_bad_inputs_a_hyperparameter_file_cannot_expand_without_bound(tmp_path):
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 9):  # 10**9 values once expanded, in 9 short lines
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    lines.append("default: {gamma: 0.9, extra: *a8}")
    path = tmp_path / "bomb.yml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"expand to more than 10000 values"):
        read_hyperparams(path, "jpq_env/JPQWeights-v0")
    deep = tmp_path / "deep.yml"
    deep.write_text("default: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ValueError, match="nested too deeply"):
        read_hyperparams(deep, "jpq_env/JPQWeights-v0")
    big = tmp_path / "big.yml"
    big.write_text("default: {gamma: 0.9}\n" + "# padding\n" * 200_000)
    with pytest.raises(ValueError, match=r"hold \d+ bytes, more than 1000000"):
        read_hyperparams(big, "jpq_env/JPQWeights-v0")


@pytest.mark.slow
def test_bad_inputs_a_run_that_fails_at_start_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    """Whatever fails before the first evaluation (here SB3 itself), the corrected rerun starts."""
    from stable_baselines3 import PPO

    def refuse(*args, **kwargs):
        raise ValueError("SB3 says no")

    out = tmp_path / "run"
    argv = ["search", "--agent", "ppo", "--episodes", "3", "--out", str(out), "--quiet"]
    argv += ["--env-option", "val_images=16"]
    monkeypatch.setattr(PPO, "__init__", refuse)
    with pytest.raises(ValueError, match="SB3 says no"):
        main(argv)
    assert not out.exists()
    monkeypatch.undo()
    assert main(argv) == 0 and (out / "run.json").is_file()
