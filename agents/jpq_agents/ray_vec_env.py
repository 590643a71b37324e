"""An SB3 ``VecEnv`` whose sub-environments are Ray actors, counted by the search in the driver.

SB3's own vectorised environments are single-machine; this one runs each sub-environment (a JPQ
environment in the algorithm's view, with its own accuracy proxy) in a Ray actor, wherever the
cluster has room (one GPU each with ``num_gpus=1``). ``step_async`` sends one action to every
actor, ``step_wait`` gathers the results, so the episodes of all sub-environments, their final
evaluations included, run at the same time.

The search stays in the driver: every episode that ends is recorded there, in sub-environment
order, until the budget is spent (at most ``n - 1`` episodes of the last step run past it: they
are neither counted, nor logged, nor learned from, as the search's callback stops the algorithm
at that step). A resumed run sends the logged accuracies along, so replayed episodes are answered
from the log, not evaluated again. An actor that dies is restarted by Ray (``max_restarts``) and
the driver plays its running episode again on it (the actions so far, then the pending one):
the episode ends, is evaluated and is recorded once, as if nothing had happened. An actor that
dies before or during a ``reset`` is waited for and reset once it is back.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import ray
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvObs, VecEnvStepReturn

from jpq_env.core.policy import Policy, PolicyKey, record_key
from jpq_env.errors import ArgumentError
from jpq_env.proxy.evaluator import Evaluator, WrappedEvaluator

from .search import Search, SearchError

_RESTART_WAIT_S = 120.0

__all__ = ["RayVecEnv"]


class _Logged(WrappedEvaluator):
    """The actor's evaluator: logged accuracies of a resumed run first, else the real proxy."""

    def __init__(self, inner: Evaluator) -> None:
        super().__init__(inner)
        self.answers: dict[PolicyKey, float] = {}

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        """The logged score when this policy's episode is being replayed, else the proxy's."""
        key = policy.key()
        if key in self.answers:
            return self.answers[key]
        return float(self.inner.accuracy(policy, at_least=at_least))


class _NativeReward(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Keeps the native environment's last reward: the one the search records, not the view's."""

    native_steps = True  # a view folds its two native steps above this wrapper, not below

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray]) -> None:
        super().__init__(env)
        self.last_reward = 0.0

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.last_reward = float(reward)
        return obs, reward, terminated, truncated, info


class _EnvActor:
    """One sub-environment: a JPQ environment in a view, with its own task and accuracy proxy."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], view: str) -> None:
        import torch

        import jpq_env  # noqa: F401 - registers the environment ids in this process
        from jpq_env.proxy.evaluator import LocalEvaluator
        from jpq_env.tasks import load_task

        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        device = "cuda" if gpus and torch.cuda.is_available() else "cpu"
        kwargs = dict(env_kwargs)
        task = load_task(kwargs.pop("task", "digits"))
        local = LocalEvaluator(
            task, bn_recalibration=kwargs.get("bn_recalibration", True), device=device
        )
        self.evaluator = _Logged(local)
        base = gym.make(env_id, task=task, evaluator=self.evaluator, **kwargs).unwrapped
        self.native = _NativeReward(base)
        module, _, name = view.partition(":")
        self.env = getattr(importlib.import_module(module), name)(self.native)
        self.started = False  # False on a restarted actor too: the driver must replay

    def describe(self) -> dict[str, Any]:
        """Where this actor runs: process, node, visible GPUs."""
        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    def reset(self, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, Any]:
        self.started = True
        return self.env.reset(seed=seed, options=options)

    def step(self, action: np.ndarray, answers: dict[PolicyKey, float]) -> tuple[Any, ...] | None:
        """One view step; at the episode's end, also the native reward and the reset.

        None if this actor was restarted since the driver's last reset (its episode is lost).
        """
        if not self.started:
            return None
        self.evaluator.answers = answers
        obs, reward, terminated, truncated, info = self.env.step(action)
        native = self.native.last_reward
        reset_info: dict[str, Any] = {}
        if terminated or truncated:
            info["terminal_observation"] = obs
            obs, reset_info = self.env.reset()
        return obs, float(reward), bool(terminated), bool(truncated), info, native, reset_info

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return getattr(self.env, method)(*args, **kwargs)

    def get(self, name: str) -> Any:
        return getattr(self.env, name)

    def set(self, name: str, value: Any) -> None:
        setattr(self.env, name, value)

    def wrapped(self, wrapper_class: type) -> bool:
        env: Any = self.env
        while isinstance(env, gym.Wrapper):
            if isinstance(env, wrapper_class):
                return True
            env = env.env
        return False


def _when_back(method: Any, *args: Any) -> Any:
    """The result of an actor method call, retried while Ray is still restarting the actor."""
    deadline = time.monotonic() + _RESTART_WAIT_S
    while True:
        try:
            return ray.get(method.remote(*args))
        except ray.exceptions.RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class RayVecEnv(VecEnv):
    """``n`` JPQ environments (in an algorithm view) on Ray actors, recorded by ``search``.

    Args:
        search: The search that counts and logs the episodes (its settings name the env id and
            keyword arguments; the task must be a name every node can build).
        view: The view class as ``"module:Class"`` (e.g. ``"jpq_env.envs.wrappers:FlatBoxView"``).
        n: Number of sub-environments (actors).
        num_gpus: GPUs per actor (0: CPU).
        num_cpus: CPUs reserved per actor.
        max_restarts: Times Ray restarts a dead actor.
    """

    def __init__(
        self,
        search: Search,
        view: str,
        n: int,
        num_gpus: float = 0.0,
        num_cpus: float = 1.0,
        max_restarts: int = 3,
    ) -> None:
        if n < 1:
            raise ArgumentError(f"n must be at least 1, got {n}")
        env_kwargs = {k: v for k, v in search.settings.env.items() if k != "id"}
        env_id = str(search.settings.env.get("id", "jpq_env/JPQWeights-v0"))
        if not isinstance(env_kwargs.get("task", "digits"), str):
            raise TypeError("RayVecEnv needs the task by name: each actor builds its own copy")
        self.search = search
        actor_class: Any = ray.remote(_EnvActor).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts
        )
        self.actors: list[Any] = [actor_class.remote(env_id, env_kwargs, view) for _ in range(n)]
        space_owner = self.actors[0]
        obs_space, act_space = ray.get(
            [space_owner.get.remote("observation_space"), space_owner.get.remote("action_space")]
        )
        super().__init__(n, obs_space, act_space)
        self.max_restarts = max_restarts
        self._pending: list[Any] | None = None
        self._sent: tuple[np.ndarray, dict[PolicyKey, float]] | None = None
        # Actions of each sub-environment's running episode: replayed on a restarted actor.
        self._episodes: list[list[np.ndarray]] = [[] for _ in range(n)]

    # ---- VecEnv API -------------------------------------------------------------------------

    def reset(self) -> VecEnvObs:
        """Reset every sub-environment (with the seeds and options set before, if any).

        An actor that died is waited for while Ray restarts it, then reset (nothing of an
        unfinished episode was recorded, so nothing is lost).
        """
        refs = [
            actor.reset.remote(self._seeds[i], self._options[i])
            for i, actor in enumerate(self.actors)
        ]
        results = []
        for i, ref in enumerate(refs):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                try:
                    back = _when_back(self.actors[i].reset, self._seeds[i], self._options[i])
                except ray.exceptions.RayActorError as exc:
                    raise SearchError(
                        f"the Ray actor of sub-environment {i} died and did not come back within "
                        f"{_RESTART_WAIT_S:.0f} s; resume the run (--resume) to continue from "
                        "its log"
                    ) from exc
                results.append(back)
        self.reset_infos = [info for _, info in results]
        self._episodes = [[] for _ in self.actors]
        self._reset_seeds()
        self._reset_options()
        return np.stack([obs for obs, _ in results])

    def _answers(self) -> dict[PolicyKey, float]:
        """Logged accuracies of the episodes this step may end (resumed runs only)."""
        left = self.search.replay_left
        if not left:
            return {}
        start = self.search.count
        records = self.search.logged(start, start + min(left, self.num_envs))
        return {record_key(r["policy"]): float(r["accuracy"]) for r in records}

    def step_async(self, actions: np.ndarray) -> None:
        """Send one action to every actor."""
        answers = self._answers()
        self._sent = (np.asarray(actions), answers)
        self._pending = [
            actor.step.remote(action, answers)
            for actor, action in zip(self.actors, actions, strict=True)
        ]

    def step_wait(self) -> VecEnvStepReturn:
        """Gather the actors' steps; record every finished episode while the budget lasts."""
        assert self._pending is not None and self._sent is not None, "step_async comes first"
        actions, answers = self._sent
        results = [self._result(i, ref, actions[i], answers) for i, ref in enumerate(self._pending)]
        self._pending = self._sent = None
        obs, rewards, dones, infos = [], [], [], []
        for i, (o, r, terminated, truncated, info, native, reset_info) in enumerate(results):
            if terminated and not self.search.done:
                self.search.record(info, native)
            if terminated or truncated:
                info["TimeLimit.truncated"] = truncated and not terminated
                self.reset_infos[i] = reset_info
                self._episodes[i] = []
            else:
                self._episodes[i].append(actions[i])
            obs.append(o)
            rewards.append(r)
            dones.append(terminated or truncated)
            infos.append(info)
        return np.stack(obs), np.array(rewards, np.float32), np.array(dones), infos

    def _result(self, i: int, ref: Any, action: np.ndarray, answers: dict[PolicyKey, float]) -> Any:
        """Sub-environment ``i``'s step; if its actor died, its episode again on the new one."""
        for _ in range(self.max_restarts):
            try:
                result = ray.get(ref)
                if result is not None:
                    return result
            except ray.exceptions.RayActorError:
                pass
            # Ray restarts the actor with a fresh environment: play the episode so far again
            # (the environment is deterministic), then this step. Nothing was recorded for it.
            actor = self.actors[i]
            _when_back(actor.reset, None, None)
            for past in self._episodes[i]:
                ray.get(actor.step.remote(past, {}))
            ref = actor.step.remote(action, answers)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError:
            result = None
        if result is None:
            raise SearchError(
                f"the Ray actor of sub-environment {i} died {self.max_restarts + 1} times; "
                "resume the run (--resume) to continue from its log"
            )
        return result

    def close(self) -> None:
        """Stop the actors."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def _targets(self, indices: Any) -> list[Any]:
        return [self.actors[i] for i in self._get_indices(indices)]

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """An attribute of the sub-environments' views."""
        return list(ray.get([a.get.remote(attr_name) for a in self._targets(indices)]))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set an attribute of the sub-environments' views."""
        ray.get([a.set.remote(attr_name, value) for a in self._targets(indices)])

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of the sub-environments' views (e.g. ``action_masks``)."""
        return list(
            ray.get(
                [
                    a.call.remote(method_name, method_args, method_kwargs)
                    for a in self._targets(indices)
                ]
            )
        )

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        """Whether each sub-environment is wrapped in ``wrapper_class``."""
        return list(ray.get([a.wrapped.remote(wrapper_class) for a in self._targets(indices)]))

    def get_images(self) -> Sequence[np.ndarray | None]:
        """No image rendering (the JPQ environment renders text)."""
        return [None] * self.num_envs
