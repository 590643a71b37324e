"""Registration (``jpq_env.envs.registration``): idempotent, ``module:id`` from a fresh process,
SB3's vector envs on every id, and the renamed ids.
"""

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from jpq_env.envs.registration import PRESETS, RENAMED, register_envs
from jpq_env.envs.render import HEIGHT


def test_registration_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_envs()
        register_envs()
    assert gym.spec("jpq_env/JPQWeights-v0").entry_point == "jpq_env.envs.jpq:JPQEnv"
    assert PRESETS["jpq_env/JPQWeightsDeep-v0"] == {"task": "digits-deep"}


def test_module_colon_id_from_a_fresh_process():
    code = (
        "import gymnasium as gym, numpy as np\n"
        "env = gym.make('jpq_env:JPQWeights-v0')\n"
        "obs, _ = env.reset(seed=0)\n"
        "print(obs.shape, env.action_space.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(24,) (5,)"


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
