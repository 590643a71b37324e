"""Rendering (``jpq_env.envs.render``): the ANSI table and the RGB frame of the decided layers."""

import warnings

import gymnasium as gym
import numpy as np
import pytest

from jpq_env import Policy, measure
from jpq_env.envs import JPQEnv
from jpq_env.envs.render import HEIGHT, bits_frame
from tests.episodes import episode_actions, rollout


@pytest.fixture(scope="module")
def env() -> JPQEnv:
    return JPQEnv(render_mode="ansi")


def test_ansi_render_lists_every_layer_with_its_costs(env: JPQEnv):
    actions = episode_actions(env, 6)
    info = rollout(env, actions)[-1][4]
    text = env.render()
    policy = Policy.from_json(
        {"schema": 1, "fingerprint": env.graph.fingerprint, "layers": info["policy"]}
    )
    cost = measure(env.graph, policy)
    for name, c in zip(env.graph.names, cost.layers, strict=True):
        row = next(line for line in text.splitlines() if line.startswith(name))
        assert row.rstrip().endswith(f"{c.bops:,}")
    assert JPQEnv(evaluator=env.evaluator).render() is None


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


def test_human_mode_prints_the_table_without_a_window(env: JPQEnv, capsys):
    human = gym.make("jpq_env/JPQWeights-v0", render_mode="human", evaluator=env.evaluator)
    actions = episode_actions(human, 6)
    rollout(human, actions)
    assert human.render() is None
    printed = capsys.readouterr().out
    env.reset(seed=0)
    rollout(env, actions)
    assert env.render() in printed  # the ansi table, on standard output
    human.close()


@pytest.mark.parametrize("mode", ["rgb", "ANSI", "window"])
def test_bad_inputs_unsupported_render_modes_are_refused_with_the_list(mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's own warning, before the env's error
        with pytest.raises(ValueError, match=r"render_mode.*'ansi', 'human', 'rgb_array'"):
            gym.make("jpq_env/JPQWeights-v0", render_mode=mode, val_images=16)
