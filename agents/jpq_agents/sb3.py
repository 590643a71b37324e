"""stable-baselines3 agents set up the way the RL compression literature runs them.

- **DDPG** on ``FlatBoxView`` (one step per layer): discount 1.0 with the terminal reward,
  warm-up counted in *episodes* and converted to ``learning_starts`` steps, and a truncated-normal
  exploration noise whose deviation decays per episode (AMC's recipe), as an SB3 ``ActionNoise``.
- **PPO** on ``FlatBoxView`` and **MaskablePPO** (sb3-contrib) on ``MultiDiscreteView`` with its
  action masks; rollouts of a few episodes (SB3's default ``n_steps=2048`` would mean hundreds of
  episodes before the first update) and Monte-Carlo returns (``gae_lambda=1``).

Hyperparameters live in ``agents/jpq_agents/hyperparams/<algo>.yml`` in RL Zoo's format, keyed by
env id (``default`` for any other id), so RL Zoo can train with the same tables, installed as the
modules ``jpq_agents.hyperparams.<algo>`` (RL Zoo's ``--conf-file`` takes a module name).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise

from jpq_env.envs.wrappers import FlatBoxView, MultiDiscreteView
from jpq_env.errors import ArgumentError

from .agent_options import NOT_CONSTRUCTOR_ARGS, schedule
from .play import jpq
from .search import Search

__all__ = ["ALGOS", "TruncatedNormalDecayNoise", "algorithm_class", "hyperparameters", "run_sb3"]

# Our agent names -> (RL Zoo's algorithm name, view).
ALGOS = {
    "ddpg": ("ddpg", FlatBoxView),
    "ppo": ("ppo", FlatBoxView),
    "maskable-ppo": ("ppo_mask", MultiDiscreteView),
}
MODEL_NAME = "model.zip"
"""The trained SB3 model in a run directory (``stable_baselines3.<Algo>.load`` reads it)."""


class TruncatedNormalDecayNoise(ActionNoise):
    """Gaussian noise truncated at two deviations, the deviation decaying after every episode.

    Args:
        size: Action dimension.
        sigma: Initial deviation (actions live in [-1, 1]).
        decay: Factor applied to the deviation at each episode end (SB3 calls ``reset`` then).
        seed: Seed of the noise's own generator.
    """

    def __init__(self, size: int, sigma: float = 0.5, decay: float = 0.99, seed: int = 0) -> None:
        super().__init__()
        self.size = size
        self.sigma0 = sigma
        self.sigma = sigma
        self.decay = decay
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:
        """One noise vector, every entry within two deviations of zero."""
        out = self.rng.normal(0.0, self.sigma, self.size)
        bad = np.abs(out) > 2 * self.sigma
        while bad.any():  # resample the tails: a truncated normal, not a clipped one
            out[bad] = self.rng.normal(0.0, self.sigma, int(bad.sum()))
            bad = np.abs(out) > 2 * self.sigma
        return out.astype(np.float32)

    def reset(self) -> None:
        """End of an episode: shrink the deviation."""
        self.sigma *= self.decay

    def __repr__(self) -> str:
        return f"TruncatedNormalDecayNoise(sigma={self.sigma:.4f}, decay={self.decay})"


def hyperparameters(algo: str, env_id: str) -> dict[str, Any]:
    """The entry of ``hyperparams/<algo>.yml`` for ``env_id`` (or its ``default``)."""
    from .hyperparams import load

    table = load(algo)
    return dict(table.get(env_id, table["default"]))


def algorithm_class(agent: str) -> Any:
    """The SB3 (or sb3-contrib) class of one of our agent names."""
    if agent == "maskable-ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    from stable_baselines3 import DDPG, PPO

    return {"ddpg": DDPG, "ppo": PPO}[agent]


def run_sb3(
    search: Search,
    seed: int,
    agent: str,
    env_id: str,
    warmup_episodes: int = 10,
    workers: int | None = None,
    num_gpus: float = 0.0,
    overrides: dict[str, Any] | None = None,
) -> None:
    """Train an SB3 agent for exactly the search's evaluation budget.

    ``overrides`` replace entries of the shipped hyperparameters (``jpq_agents.agent_options``
    checks them). The learner's own scalars (losses, entropy, learning rate) go to the run's
    ``tensorboard/`` folder and the trained model to ``model.zip`` in the run directory.

    Every episode of the views has one step per layer, so the budget is ``episodes x layers``
    steps of ``learn``. With ``workers``, the episodes run on that many Ray actors at once
    (``jpq_agents.ray_vec_env.RayVecEnv``, ``num_gpus`` each; Ray must be connected); DDPG then
    trains every ``layers`` steps (SB3 allows episodic training with one environment only) and
    each sub-environment gets its own exploration noise.
    """
    view = ALGOS[agent][1]
    base = jpq(search.env)
    layers = base.num_layers
    if workers:
        from .ray_vec_env import RayVecEnv

        env: Any = RayVecEnv(search, f"{view.__module__}:{view.__name__}", workers, num_gpus)
    else:
        env = view(search.env)
    try:
        _learn(search, seed, agent, env, env_id, layers, warmup_episodes, overrides or {})
    finally:
        if workers:
            env.close()


def policy_kwargs(text: str) -> dict[str, Any]:
    """RL Zoo's ``policy_kwargs`` string (``"dict(net_arch=[64, 64])"``), parsed, never run.

    RL Zoo evaluates it as Python; here only a ``dict(...)`` call or a ``{...}`` literal of plain
    values (numbers, strings, lists, nested dicts) is read, so a hyperparameter file cannot run
    code. Activation functions and other objects are not supported.

    Raises:
        ValueError: If the string is anything else.
    """
    import ast

    def value(node: ast.expr) -> Any:
        call = node if isinstance(node, ast.Call) else None
        if call and isinstance(call.func, ast.Name) and call.func.id == "dict" and not call.args:
            return {k.arg: value(k.value) for k in call.keywords if k.arg is not None}
        if isinstance(node, ast.Dict):
            return {
                ast.literal_eval(k): value(v)
                for k, v in zip(node.keys, node.values, strict=True)
                if k
            }
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        return ast.literal_eval(node)

    try:
        parsed = value(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, TypeError, RecursionError) as exc:
        raise ArgumentError(
            f"policy_kwargs {text!r}: only dict(...) or {{...}} of plain values is read ({exc})"
        ) from None
    if not isinstance(parsed, dict):
        raise ArgumentError(f"policy_kwargs {text!r} is not a dict")
    return parsed


def _learn(
    search: Search,
    seed: int,
    agent: str,
    env: Any,
    env_id: str,
    layers: int,
    warmup: int,
    overrides: dict[str, Any],
) -> None:
    from stable_baselines3.common.noise import VectorizedActionNoise
    from stable_baselines3.common.vec_env import VecEnv

    zoo, _ = ALGOS[agent]
    params = {**hyperparameters(zoo, env_id), **overrides}
    vec = isinstance(env, VecEnv)
    kwargs = {k: v for k, v in params.items() if k not in NOT_CONSTRUCTOR_ARGS}
    if "policy_kwargs" in kwargs and isinstance(kwargs["policy_kwargs"], str):
        kwargs["policy_kwargs"] = policy_kwargs(kwargs["policy_kwargs"])
    if "train_freq" in kwargs and isinstance(kwargs["train_freq"], list):
        kwargs["train_freq"] = tuple(kwargs["train_freq"])
    for key in ("learning_rate", "clip_range", "clip_range_vf"):  # RL Zoo's lin_<initial>
        if key in kwargs:
            kwargs[key] = schedule(kwargs[key])
    if vec:
        env.seed(seed)
    else:
        env.reset(seed=seed)
    if agent == "ddpg":
        kwargs["learning_starts"] = warmup * layers
        size, sigma = int(np.prod(env.action_space.shape)), float(params.get("noise_std", 0.5))
        kwargs["action_noise"] = TruncatedNormalDecayNoise(size, sigma, seed=seed)
        if vec and env.num_envs > 1:
            kwargs["train_freq"] = (layers, "step")
            noise = VectorizedActionNoise(kwargs["action_noise"], env.num_envs)
            noise.noises = [  # SB3 copies one noise n times: the same exploration in every env
                TruncatedNormalDecayNoise(size, sigma, seed=seed + i) for i in range(env.num_envs)
            ]
            kwargs["action_noise"] = noise
    # The learner's scalars (train/loss, train/entropy_loss, train/learning_rate, ...) beside the
    # search's own in the run's TensorBoard folder, on the same axis (episodes, not env steps);
    # nothing on stdout.
    cls = algorithm_class(agent)
    model = cls(params.get("policy", "MlpPolicy"), env, seed=seed, verbose=0, **kwargs)
    model.set_logger(_episode_axis_logger(search.out / "tensorboard" / agent, layers))
    # A rollout may run past the budget; the callback stops learning at the exact count.
    model.learn(
        total_timesteps=search.settings.episodes * layers,
        callback=_StopWhenDone(search),
    )
    model.save(search.out / MODEL_NAME)


def _episode_axis_logger(folder: Any, steps_per_episode: int) -> Any:
    """SB3's logger writing TensorBoard scalars with the episode count as their step.

    SB3 counts environment steps (one per layer in the views); the search's own scalars count
    evaluations (episodes). Dividing puts both on one axis.
    """
    from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat

    class EpisodeAxis(TensorBoardOutputFormat):
        def write(self, key_values: Any, key_excluded: Any, step: int = 0) -> None:
            super().write(key_values, key_excluded, step // max(steps_per_episode, 1))

    return Logger(str(folder), [EpisodeAxis(str(folder))])


class _StopWhenDone(BaseCallback):
    def __init__(self, search: Search) -> None:
        super().__init__()
        self.search = search

    def _on_step(self) -> bool:
        return not self.search.done
