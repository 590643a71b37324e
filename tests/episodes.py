"""What the tests play and read back: episodes of an environment, the records a search logs."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np

from jpq_agents.search import LOG_NAME

ACTS = [2, 3, 4, 5, 6, 8]
"""The activation widths of JPQWeightsActs-v0: each layer decision also picks one of them."""


def rollout(env: gym.Env, actions: list[np.ndarray], seed: int | None = 0) -> list[tuple]:
    """``[(obs, info), (obs, reward, terminated, truncated, info), ...]`` until termination."""
    obs, info = env.reset(seed=seed)
    trace: list[tuple] = [(obs, info)]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        trace.append((obs, reward, terminated, truncated, info))
        if terminated:
            break
    return trace


def episode_actions(env: gym.Env, seed: int) -> list[np.ndarray]:
    """A whole episode of actions sampled from ``env``'s action space (two per layer)."""
    env.action_space.seed(seed)
    return [env.action_space.sample() for _ in range(2 * env.unwrapped.num_layers)]


def log_records(run: Path) -> list[dict]:
    """The records of a search's evaluation log, in order."""
    return [json.loads(line) for line in (run / LOG_NAME).read_text().splitlines()]


def policy_keys(records: list[dict]) -> list[str]:
    """Each logged policy as one comparable string (activation and kernel widths per layer)."""
    return [json.dumps([[p["act_bits"], p["bits"]] for p in r["policy"]]) for r in records]


def widths(record: dict) -> list[tuple[int, int]]:
    """(largest weight width, activation width) of every layer of a logged policy."""
    return [(max(p["bits"]), p["act_bits"]) for p in record["policy"]]


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in the TensorBoard event files under ``folder``: its (step, value)s."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out
