"""The shipped hyperparameters (``jpq_agents.hyperparams``): the YAML tables as modules, read by
RL Zoo from any folder and by a training run with the checkout's files.
"""

import os
import subprocess
import sys

import pytest

from tests import ROOT


@pytest.mark.slow
def test_rl_zoo_reads_the_shipped_hyperparameters_as_a_module_from_any_folder(tmp_path):
    # No checkout path: the conf file is a module of the installed package (RL Zoo imports a
    # --conf-file that is neither .yml nor .py and reads its `hyperparams`).
    cmd = [
        sys.executable, "-m", "rl_zoo3.train", "--gym-packages", "jpq_env",
        "--env", "jpq_env/JPQWeights-v0", "--algo", "ppo",
        "--conf-file", "jpq_agents.hyperparams.ppo", "--env-kwargs", "val_images:16",
        "-n", "48", "--log-folder", str(tmp_path), "--eval-freq", "-1", "--seed", "0",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Using 'default' hyperparameters" not in out.stdout
    (config,) = tmp_path.rglob("config.yml")
    saved = config.read_text()
    assert "jpq_env.envs.wrappers.FlatBoxView" in saved and "gae_lambda" in saved
    assert list(tmp_path.rglob("*.zip"))


def test_hyperparameter_modules_hold_the_yaml_tables():
    from jpq_agents.hyperparams import ddpg, load, ppo, ppo_mask

    assert ppo.hyperparams["jpq_env/JPQWeights-v0"]["n_steps"] == 48
    assert ddpg.hyperparams["default"]["env_wrapper"] == "jpq_env.envs.wrappers.FlatBoxView"
    wrapper = ppo_mask.hyperparams["jpq_env/JPQWeightsActs-v0"]["env_wrapper"]
    assert wrapper == "jpq_env.envs.wrappers.MultiDiscreteView"
    with pytest.raises(ValueError, match="no hyperparameters for 'sac'"):
        load("sac")


def test_rl_zoo_trains_with_the_project_hyperparameters(tmp_path):
    conf = str(ROOT / "agents" / "jpq_agents" / "hyperparams" / "ppo.yml")
    cmd = [
        sys.executable, "-m", "rl_zoo3.train", "--gym-packages", "jpq_env",
        "--env", "jpq_env/JPQWeights-v0", "--algo", "ppo", "--conf-file", conf,
        "-n", "48", "--log-folder", str(tmp_path), "--eval-freq", "-1", "--seed", "0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the checkout, installed or not
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert list(tmp_path.rglob("*.zip"))
