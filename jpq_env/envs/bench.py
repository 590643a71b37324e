"""JPQ-Bench environments: the real environment's problem, scored by a learned surrogate.

``gym.make("jpq_env/JPQBench-ResNet20-v0")`` is ``JPQWeightsActs-v0`` on ResNet-20 / CIFAR-10
(same spaces, decisions, budgets, rewards, observations and ``info``) whose accuracy proxy is
JPQ-Bench's surrogate (``jpq_env.proxy.bench``): no data, no network run, a deterministic
answer in well under a millisecond, so that algorithms can be compared over thousands of
episodes and many seeds. The last step's ``info`` adds the predicted test accuracy
(``accuracy_test``) and the ensembles' spread (``accuracy_std``, ``accuracy_test_std``) to the
predicted held-out score (``accuracy``). A policy found here is a real policy of the real task
(same layers, same kernel ranking): ``jpq validate --real POLICY`` scores it with the real proxy.

The problem's settings that decide what a policy scores (weight and activation widths, the
importance criterion, the conventions, BatchNorm re-calibration) are the data's and cannot be
changed; budgets, reward designs, enforcement, the action-space grouping, shaping and the
sensitivity observations can.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from torch import nn

from jpq_env.core.policy import Policy
from jpq_env.envs.jpq import JPQEnv
from jpq_env.errors import ArgumentError, PolicyError
from jpq_env.proxy.bench import (
    BenchEvaluator,
    BenchModel,
    Ensemble,
    TreeEnsemble,
    bench_task,
    log_odds,
    policy_features,
)
from jpq_env.proxy.sensitivity import SensitivityTable

__all__ = ["FIXED", "JPQBenchEnv", "build_bench", "settings_of"]

FIXED = ("bits", "act_bits", "importance", "input_bits", "first_last_bits", "bn_recalibration")
"""Settings of the data that a bench environment keeps (changing them changes every score)."""

_NOT_HERE = ("task", "task_options", "device", "metric", "val_images")


class JPQBenchEnv(JPQEnv):
    """``JPQEnv`` on a bench: the real problem's spaces and ``info``, the surrogate's scores.

    Args:
        bench: A shipped bench's name (``jpq_env.proxy.bench.bench_names()``) or a bench file.
        model: The network a bench file was made for where jpq-env does not build its
            architecture (a bench of your own model: ``build_bench``); its weights are not used
            and it is not changed.
        **kwargs: ``JPQEnv``'s arguments (budgets, reward, enforcement, ...); those of ``FIXED``
            only with the data's values, and no task or proxy settings (``evaluator``: default
            the bench's own, ``BenchEvaluator``).
    """

    def __init__(
        self, bench: str = "resnet20-cifar", model: nn.Module | None = None, **kwargs: Any
    ) -> None:
        bench_model = BenchModel.load(bench)
        settings = bench_model.meta["env"]
        bad = [k for k in _NOT_HERE if k in kwargs]
        if bad:
            raise ArgumentError(
                f"a bench environment takes no {bad}: its task and scores are bench "
                f"'{bench_model.name}''s"
            )
        for key in FIXED:
            if key in kwargs and _normal(kwargs[key]) != _normal(settings[key]):
                raise ArgumentError(
                    f"bench '{bench_model.name}' was made with {key}={settings[key]!r}; got "
                    f"{kwargs[key]!r} (its surrogate knows only the data's setting)"
                )
            kwargs[key] = settings[key]
        self.bench = bench_model
        # An evaluator given here (a search's wrapper around this bench's) is used as given.
        kwargs.setdefault("evaluator", BenchEvaluator(bench_model))
        super().__init__(task=bench_task(bench_model, model), **kwargs)

    def _ranking(self, importance: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """The real task's kernel ranking and scaled scores, as recorded in the bench."""
        ranking = self.bench.meta["importance"]
        return [
            (np.asarray(order, dtype=np.int64), np.asarray(scaled, dtype=np.float32))
            for order, scaled in zip(ranking["order"], ranking["scaled"], strict=True)
        ]

    def _measure_sensitivity(self, importance: str, bn_recalibration: bool) -> SensitivityTable:
        """The real task's table, recorded in the bench (nothing to measure)."""
        return self.bench.table

    def _finish(self) -> dict[str, Any]:
        info = super()._finish()
        info["bench"] = self.bench.name
        scorer: Any = self.evaluator
        while not isinstance(scorer, BenchEvaluator) and hasattr(scorer, "inner"):
            scorer = scorer.inner
        if not isinstance(scorer, BenchEvaluator):
            return info  # another evaluator: its own scores, no prediction to add
        pred = scorer.prediction
        info["accuracy_std"] = pred.val_std
        if pred.test is not None:
            info["accuracy_test"] = float(np.clip(pred.test, 0.0, 1.0))
            info["accuracy_test_std"] = pred.test_std
        return info


def _normal(value: Any) -> Any:
    """Settings compared as JSON would store them (tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value


def settings_of(env: JPQEnv) -> dict[str, Any]:
    """The settings of ``env`` that decide what a policy scores (``FIXED``), JSON-able."""
    return {
        "bits": list(env.bits),
        "act_bits": list(env.space.act_bits),
        "importance": env.importance,
        "input_bits": env.conventions.input_bits,
        "first_last_bits": env.conventions.first_last_bits,
        "bn_recalibration": env.bn_recalibration,
    }


def _real_env(env: Any) -> JPQEnv:
    """The ``JPQEnv`` under ``gym.make``'s wrappers (refused by name if there is none)."""
    inner = getattr(env, "unwrapped", env)
    if not isinstance(inner, JPQEnv):
        raise ArgumentError(
            f"build_bench needs a jpq-env environment (gym.make('jpq_env/...') or JPQEnv), got "
            f"{type(env).__name__}"
        )
    return inner


def _policy_of(env: JPQEnv, policy: Any, index: int) -> Policy:
    """A ``Policy`` of ``env``'s graph from a ``Policy`` or an ``info["policy"]`` list."""
    if not isinstance(policy, (Policy, list, tuple)):
        raise ArgumentError(
            f"build_bench: policies[{index}] is a {type(policy).__name__}: give Policy objects "
            "(env.unwrapped.last_policy) or the last step's info['policy']"
        )
    try:
        if not isinstance(policy, Policy):
            policy = Policy.from_layers(list(policy), env.graph.fingerprint)
        policy.validate(env.graph)
    except PolicyError as exc:
        raise ArgumentError(
            f"build_bench: policies[{index}] is not a policy of task '{env.task.name}': {exc}"
        ) from None
    return policy


def build_bench(
    env: JPQEnv | gym.Env[Any, Any],
    policies: Sequence[Policy | Sequence[dict[str, Any]]],
    val: Sequence[float],
    *,
    test: Sequence[float | None] | None = None,
    weights: Sequence[float] | None = None,
    architecture: str | None = None,
    surrogate: str = "trees",
    epochs: int = 600,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> BenchModel:
    """A bench of ``env``'s task, fitted on policies the real proxy scored.

    Args:
        env: The real environment, as made or wrapped by ``gym.make`` (its task, graph, kernel
            ranking and settings are recorded; its sensitivity table is measured if it has none:
            on the first call for a task a minute or two, then read from the cache).
        policies: Scored policies of ``env``'s graph: ``Policy`` objects (``env.unwrapped.
            last_policy`` after an episode) or the last step's ``info["policy"]``.
        val: Their held-out scores (the real proxy's).
        test: Their test accuracies (None where not measured): with at least 10, the bench
            predicts test accuracy from the held-out score (``test_map``, linear in log-odds).
        weights: Per-policy weights of the fit (e.g. the share of the held-out split a raced
            evaluation scored).
        architecture: The name ``bench_task`` rebuilds the graph from (default: the task's). A
            bench of an architecture jpq-env does not build is made with ``model=`` (the
            network) in ``JPQBenchEnv``.
        surrogate: ``trees`` (``TreeEnsemble``, the default) or ``mlp`` (``Ensemble``).
        epochs: Adam steps per member of an ``mlp`` surrogate.
        seed: Seed of the fit.
        meta: More facts to record (where the data came from, metrics).

    Raises:
        ArgumentError: If ``env`` is not a jpq-env environment, the lengths differ, there are
            fewer than 10 policies, a policy is not one of ``env``'s graph or the surrogate is
            unknown.
    """
    env = _real_env(env)
    checked = [_policy_of(env, p, i) for i, p in enumerate(policies)]
    if surrogate not in ("trees", "mlp"):
        raise ArgumentError(f"build_bench: surrogate must be 'trees' or 'mlp', got {surrogate!r}")
    if len(policies) != len(val) or (test is not None and len(test) != len(val)):
        raise ArgumentError("build_bench: policies, val (and test) must have the same length")
    if len(policies) < 10:
        raise ArgumentError(f"build_bench needs at least 10 scored policies, got {len(policies)}")
    table = env.sensitivity or env._measure_sensitivity(env.importance, env.bn_recalibration)
    x = policy_features(checked, table)
    val_model: Ensemble | TreeEnsemble
    if surrogate == "trees":
        val_model = TreeEnsemble.fit(x, np.asarray(val), weights=weights, seed=seed, logit=True)
    else:
        val_model = Ensemble.fit(
            x, np.asarray(val), weights=weights, epochs=epochs, seed=seed, logit=True
        )
    test_map = None
    if test is not None:
        known = [i for i, t in enumerate(test) if t is not None]
        if len(known) >= 10:  # test log-odds linear in the held-out log-odds, on the real scores
            vt = np.array([[val[i], test[i]] for i in known], dtype=np.float64)
            slope, intercept = np.polyfit(log_odds(vt[:, 0]), log_odds(vt[:, 1]), 1)
            test_map = {"slope": float(slope), "intercept": float(intercept), "rows": len(known)}
    evaluator = env.evaluator
    fp32_test = float(evaluator.test_accuracy(None)) if evaluator.has_test_split else None
    name = env.task.name
    record = {
        "task": name,
        "architecture": architecture or name,
        "input_shape": list(env.task.example_input.shape[1:]),
        "num_classes": int(env.task.num_classes),
        "names": list(env.graph.names),
        "fingerprint": env.graph.fingerprint,
        "importance": {
            "criterion": env.importance,
            "order": [np.asarray(o).tolist() for o in env.space.orders],
            "scaled": [np.asarray(s, dtype=np.float64).tolist() for s in env.ranked_importance],
        },
        "env": settings_of(env),
        "fp32": {"val": float(evaluator.fp32_accuracy), "test": fp32_test},
        "fit": {
            "surrogate": surrogate,
            "members": len(val_model),
            **({"epochs": epochs} if surrogate == "mlp" else {}),
            "seed": seed,
        },
        "policies": len(policies),
        **({"test_map": test_map} if test_map else {}),
        **(meta or {}),
    }
    return BenchModel(record, table, val_model)
