"""Action views (``jpq_env.envs.wrappers``): both checkers, the mapping to native decisions, the
masks, SB3 on the views, specs and monitors.
"""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor

from jpq_env.envs import JPQEnv
from jpq_env.envs.wrappers import FlatBoxView, MultiDiscreteView

# Gymnasium's checker warns whenever it is handed a wrapper rather than a raw env; a view *is* a
# wrapper by design, so that one message is the whitelist.
_WRAPPER_NOTE = r".*is different from the unwrapped version.*"


@pytest.fixture(scope="module")
def base(env: JPQEnv) -> JPQEnv:
    """The shared env (tests/envs/conftest.py) under the name the views wrap."""
    return env


@pytest.mark.parametrize("view", [FlatBoxView, MultiDiscreteView])
def test_views_pass_both_checkers(base: JPQEnv, view):
    env = view(base)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=_WRAPPER_NOTE)
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env)


def test_flat_view_equals_two_native_steps(base: JPQEnv):
    view = FlatBoxView(base)
    other = JPQEnv(evaluator=base.evaluator)
    view.action_space.seed(0)
    actions = [view.action_space.sample() for _ in range(base.num_layers)]
    view.reset(seed=0)
    other.reset(seed=0)
    for a in actions:
        obs, r, done, _, info = view.step(a)
        other.step(a)
        obs2, r2, done2, _, info2 = other.step(a)
        assert np.array_equal(obs, obs2) and r == r2 and done == done2
    assert done and info["accuracy"] == info2["accuracy"]
    assert "layer_applied_sparsity" in info


def test_multidiscrete_view_maps_choices_to_native_decisions(base: JPQEnv):
    view = MultiDiscreteView(base, sparsity_levels=5)
    assert view.action_space.nvec.tolist() == [5, 6, 6, 6, 6]
    view.reset(seed=0)
    view.step(np.array([2, 5, 4, 1, 0]))  # sparsity 0.4 of conv1's 16 kernels -> 6 pruned
    d = base.decisions[0]
    assert d.n_pruned == 6
    assert d.ranked_bits.tolist() == [8, 8, 8, 6, 6, 6, 3, 3, 2, 2] + [0] * 6


def test_masks_allow_exactly_the_sparsities_the_wall_leaves_alone(base: JPQEnv):
    import copy

    view = MultiDiscreteView(base)
    view.reset(seed=0)
    assert view.action_masks().shape == (9 + 4 * 6,)
    rich = np.array([0, 5, 5, 5, 5])
    for _ in range(base.num_layers):
        mask = view.action_masks()[:9]
        if base.current_layer in base.graph.output_layers:
            assert mask.tolist() == [True] + [False] * 8
        else:  # behaviour, not the same formula: an allowed level is applied as proposed
            for level in range(9):
                trial = copy.deepcopy(view)
                _, _, _, _, info = trial.jpq.step(trial._native(np.array([level, 0, 0, 0, 0])))
                honoured = info["proposed_sparsity"] == info["applied_sparsity"]
                assert honoured == bool(mask[level]), (base.current_layer, level)
        view.step(rich)


def test_view_rejects_bad_actions_and_per_kernel_envs(base: JPQEnv):
    view = MultiDiscreteView(base)
    view.reset(seed=0)
    with pytest.raises(ValueError, match="outside"):
        view.step(np.array([9, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="must be 5 integers"):
        view.step(np.array([0.5, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="needs importance groups"):
        MultiDiscreteView(JPQEnv(channel_groups=0, evaluator=base.evaluator))
    with pytest.raises(TypeError, match="wraps a JPQEnv"):
        FlatBoxView(gym.make("CartPole-v1"))


def test_sb3_algorithms_run_on_the_views(base: JPQEnv):
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import DDPG, PPO

    n = base.num_layers
    models = [
        PPO("MlpPolicy", FlatBoxView(base), n_steps=4 * n, batch_size=2 * n, gamma=1.0, seed=0),
        DDPG("MlpPolicy", FlatBoxView(base), learning_starts=2 * n, gamma=1.0, seed=0),
        MaskablePPO("MlpPolicy", MultiDiscreteView(base), n_steps=4 * n, batch_size=2 * n, seed=0),
    ]
    for model in models:
        model.learn(8 * n)
        assert model.num_timesteps == 8 * n  # one view step per layer: 8 whole episodes
        assert model.ep_info_buffer is not None and len(model.ep_info_buffer) == 8


def test_multidiscrete_view_has_an_activation_dimension(acts_env: JPQEnv):
    view = MultiDiscreteView(acts_env, sparsity_levels=5)
    assert view.action_space.nvec.tolist() == [5, 6, 6, 6, 6, 6]
    view.reset(seed=0)
    masks = view.action_masks()
    assert masks[5:11].tolist() == [False] * 5 + [True]  # first layer: input width is fixed
    view.step(np.array([0, 5, 5, 5, 5, 5]))
    assert view.action_masks()[5:11].all()
    view.step(np.array([0, 2, 0, 0, 0, 0]))
    assert acts_env.decisions[1].act_bits <= 4


_CHEAP = {"val_images": 16}  # a low-fidelity proxy: each episode's evaluation is cheap


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
