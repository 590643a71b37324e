"""The surrogate (``jpq_agents.surrogate``): it fits the scores it saw and is deterministic."""

import numpy as np
import pytest

from jpq_agents.surrogate import Surrogate, SurrogateEvaluator
from jpq_env import Policy
from jpq_env.core.policy import LayerPolicy
from jpq_env.envs import JPQEnv
from tests.episodes import ACTS


def test_surrogate_fits_the_scores_it_saw_and_is_deterministic():
    env = JPQEnv(act_bits=ACTS, budget_bops=1 / 128, sensitivity=True, device="cpu")
    table, ev = env.sensitivity, env.evaluator
    rng = np.random.default_rng(1)
    policies, scores = [], []
    for _ in range(24):
        layers = []
        for info in env.graph.layers:
            bits = rng.choice([2, 3, 4, 8], size=info.out_channels)
            layers.append(LayerPolicy(info.name, bits, int(rng.choice([3, 4, 8]))))
        p = env.space.conventions.apply(env.graph, Policy(tuple(layers), env.graph.fingerprint))
        policies.append(p)
        scores.append(ev.accuracy(p))
    s = Surrogate(table, ev.fp32_accuracy, floor=0.1, seed=0)
    prior, spread = s.predict(policies)
    assert (spread == ev.fp32_accuracy - 0.1).all()
    s.fit(policies, scores)
    mean, std = s.predict(policies)
    prior_err = float(np.mean((prior - scores) ** 2))
    fit_err = float(np.mean((mean - scores) ** 2))
    assert fit_err < prior_err and (std >= 0).all()
    again = Surrogate(table, ev.fp32_accuracy, floor=0.1, seed=0)
    again.fit(policies, scores)
    assert np.array_equal(again.predict(policies)[0], mean)
    optimistic = SurrogateEvaluator(s, ev.fp32_accuracy, optimism=2.0).accuracy(policies[0])
    assert optimistic == pytest.approx(min(1.0, mean[0] + 2.0 * std[0]))
