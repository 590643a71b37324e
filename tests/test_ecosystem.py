"""The project as users of the RL ecosystem meet it: SB3's vector envs, gymnasium specs, RL Zoo."""

import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from jpq_env.envs import JPQEnv
from jpq_env.envs.registration import PRESETS, RENAMED
from jpq_env.envs.render import HEIGHT, bits_frame
from jpq_env.envs.wrappers import FlatBoxView, MultiDiscreteView

ROOT = Path(__file__).resolve().parents[1]
_CHEAP = {"val_images": 16}  # a low-fidelity proxy: each episode's evaluation is cheap


def _play(vec, steps: int) -> None:
    vec.seed(0)
    vec.reset()
    for _ in range(steps):
        vec.step(np.stack([vec.action_space.sample() for _ in range(vec.num_envs)]))


@pytest.mark.slow
@pytest.mark.parametrize("env_id", sorted(PRESETS))
def test_make_vec_env_builds_two_subprocess_workers_on_every_id(env_id):
    # SB3 passes render_mode="rgb_array" and only retries without it on a TypeError. "fork" keeps
    # the test fast (the workers inherit the imports); one id below uses SB3's default method.
    vec = make_vec_env(
        env_id, n_envs=2, vec_env_cls=SubprocVecEnv, env_kwargs=_CHEAP,
        vec_env_kwargs={"start_method": "fork"},
    )  # fmt: skip
    try:
        _play(vec, 3)
        frames = vec.get_images()
        assert len(frames) == 2
        for frame in frames:
            assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[0] == HEIGHT
    finally:
        vec.close()


@pytest.mark.slow
def test_make_vec_env_with_sb3s_default_start_method():
    # forkserver workers start from a fresh interpreter that has not imported jpq_env: the
    # "module:id" form makes gymnasium import it (and so register the ids) first.
    vec = make_vec_env(
        "jpq_env:jpq_env/JPQWeightsActs-v0", n_envs=2, vec_env_cls=SubprocVecEnv, env_kwargs=_CHEAP
    )
    try:
        _play(vec, 2)
    finally:
        vec.close()


@pytest.mark.parametrize("old_id", sorted(RENAMED))
def test_make_vec_env_builds_the_renamed_ids(old_id):
    with pytest.warns(FutureWarning, match="is renamed"):
        vec = make_vec_env(old_id, n_envs=1, vec_env_cls=DummyVecEnv, env_kwargs=_CHEAP)
    try:
        _play(vec, 1)
        assert vec.get_images()[0].dtype == np.uint8
    finally:
        vec.close()


def test_rgb_array_frame_shows_each_decided_layer():
    env = JPQEnv(render_mode="rgb_array", val_images=16)
    env.reset(seed=0)
    blank = env.render()
    assert isinstance(blank, np.ndarray) and blank.dtype == np.uint8
    assert blank.shape == (HEIGHT, env.num_layers * 10 + 2, 3)
    env.step(np.ones(env.action_space.shape, dtype=np.float32))  # the layer decision
    env.step(np.ones(env.action_space.shape, dtype=np.float32))  # widest bits for layer 0
    frame = env.render()
    assert frame.shape == blank.shape
    assert not np.array_equal(frame[:, 2:10], blank[:, 2:10])  # layer 0 drawn
    assert np.array_equal(frame[:, 12:], blank[:, 12:])  # the others still undecided
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym.make("jpq_env/JPQWeights-v0", render_mode="rgb_array", val_images=16).close()


def test_bits_frame_scales_bars_to_the_widest_width():
    full = bits_frame([(8.0, 8, 0.0)], 8)
    half = bits_frame([(4.0, 4, 1.0)], 8)
    blue = (full[:, 2:6] == (31, 119, 180)).all(axis=-1).all(axis=-1).sum()
    blue_half = (half[:, 2:6] == (31, 119, 180)).all(axis=-1).all(axis=-1).sum()
    assert blue == HEIGHT - 4 and blue_half == (HEIGHT - 4) // 2
    assert (half[-1, 2:10] == (90, 90, 90)).all()  # all pruned: a full grey strip
    with pytest.raises(ValueError, match="max_bits"):
        bits_frame([], 0)


@pytest.mark.parametrize("view", [FlatBoxView, MultiDiscreteView])
def test_views_are_recreated_from_their_spec_and_pass_gymnasiums_checker(view):
    env = view(gym.make("jpq_env/JPQWeights-v0", val_images=16))
    spec = env.spec
    assert spec is not None and spec.additional_wrappers[-1].name == view.__name__
    again = spec.make()
    assert isinstance(again, view) and again.action_space == env.action_space
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is different from the unwrapped version.*")
        gym_check_env(env, skip_render_check=True)
    if view is MultiDiscreteView:
        assert (
            view(gym.make("jpq_env/JPQWeights-v0"), sparsity_levels=5).spec.make().sparsity_levels
            == 5
        )


@pytest.mark.parametrize("view", [FlatBoxView, MultiDiscreteView])
def test_monitor_under_a_view_counts_the_agents_steps(view):
    # make_vec_env(wrapper_class=view), as RL Zoo builds it, puts SB3's Monitor below the view.
    vec = make_vec_env("jpq_env/JPQWeights-v0", n_envs=1, wrapper_class=view, env_kwargs=_CHEAP)
    vec.seed(0)
    vec.reset()
    monitor = vec.envs[0].env
    assert isinstance(monitor, Monitor)
    layers = vec.envs[0].unwrapped.num_layers
    infos: list = []
    for _ in range(layers):
        _, _, _, infos = vec.step(np.stack([vec.action_space.sample()]))
    assert infos[0]["episode"]["l"] == layers
    assert monitor.get_episode_lengths() == [layers]
    vec.close()


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


@pytest.mark.slow
def test_the_wheel_ships_the_license_and_the_hyperparameters(tmp_path):
    # built from a copy: setuptools leaves build/ and *.egg-info behind in the source folder
    junk = shutil.ignore_patterns(".*", "build", "dist", "runs", "*.egg-info", "__pycache__")
    source = shutil.copytree(ROOT, tmp_path / "src", ignore=junk)
    cmd = [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--no-index", "-q", "-w", str(tmp_path), str(source),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("jpq_env-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    for algo in ("ppo", "ddpg", "ppo_mask"):
        assert f"jpq_agents/hyperparams/{algo}.py" in names
        assert f"jpq_agents/hyperparams/{algo}.yml" in names
    assert not any(n.startswith("agents/") for n in names)  # no generic top-level name
    assert "MIT License" in (ROOT / "LICENSE").read_text()

    # Installed from the wheel into a clean target, beside another package that owns the
    # top-level name `agents` (as openai-agents does), used from outside the checkout.
    target, other, work = tmp_path / "site", tmp_path / "other", tmp_path / "work"
    install = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
        "--target", str(target), str(wheel),
    ]  # fmt: skip
    out = subprocess.run(install, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (other / "agents").mkdir(parents=True)
    (other / "agents" / "__init__.py").write_text("import openai  # what openai-agents does\n")
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(other)])}
    where = "import jpq_agents, jpq_env; print(jpq_agents.__file__); print(jpq_env.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", where], capture_output=True, text=True, cwd=work, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert all(line.startswith(str(target)) for line in out.stdout.split()), out.stdout
    search = [
        str(target / "bin" / "jpq"), "search", "--agent", "random", "--episodes", "3",
        "--out", "run", "--quiet",
    ]  # fmt: skip
    out = subprocess.run(search, capture_output=True, text=True, timeout=300, cwd=work, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((work / "run" / "summary.json").read_text())["evaluations"] == 3
    zoo = [
        sys.executable, "-m", "rl_zoo3.train", "--gym-packages", "jpq_env",
        "--env", "jpq_env/JPQWeights-v0", "--algo", "ppo",
        "--conf-file", "jpq_agents.hyperparams.ppo", "--env-kwargs", "val_images:16",
        "-n", "48", "--log-folder", "zoo", "--eval-freq", "-1", "--seed", "0",
    ]  # fmt: skip
    out = subprocess.run(zoo, capture_output=True, text=True, timeout=600, cwd=work, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Using 'default' hyperparameters" not in out.stdout
    assert list((work / "zoo").rglob("*.zip"))


def test_train_digits_writes_to_the_current_folder_or_out_never_the_package(
    tmp_path, monkeypatch, capsys
):
    import dataclasses
    import hashlib

    from jpq_env.tasks import digits, train_digits

    shipped = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in digits.WEIGHTS_DIR.iterdir()
    }
    quick = tuple(dataclasses.replace(c, epochs=1) for c in train_digits._CONFIGS)
    monkeypatch.setattr(train_digits, "_CONFIGS", quick)
    monkeypatch.chdir(tmp_path)
    assert train_digits.main([]) == 0
    written = tmp_path / "digits-weights"
    assert sorted(p.name for p in written.iterdir()) == sorted(shipped)
    assert "differs from the shipped one" in capsys.readouterr().out  # 1 epoch, not 40
    assert train_digits.main(["--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "metadata.json").exists()
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in digits.WEIGHTS_DIR.iterdir()
    }
    assert after == shipped
