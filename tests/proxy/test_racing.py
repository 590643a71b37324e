"""Racing (``jpq_env.proxy.racing``): the upper bound against its formula; a hopeless policy
stopped early, a winner never.
"""

import math

import numpy as np
import pytest
import torch

from jpq_env import LocalEvaluator, Policy, load_task
from jpq_env.proxy.racing import RaceRule, upper_bound


def test_upper_bound_against_the_formula():
    v = torch.tensor([1.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    n, total, z = 8, 100, 2.0
    var = max(float(np.var(v.numpy(), ddof=1)), 1 / (n + 2))
    expected = float(v.mean()) + z * math.sqrt((total - n) * var * (1 + (total - n) / n)) / total
    assert upper_bound(v, total, z) == pytest.approx(expected)
    assert upper_bound(v, n, z) == pytest.approx(0.0)  # everything seen: the mean itself
    rule = RaceRule(0.0, total, z, min_images=10)
    assert not rule.lost(v)  # too few images for a decision
    assert rule.lost(torch.full((50,), -1.0))
    assert not RaceRule(-2.0, total, z, 10).lost(torch.full((50,), -1.0))


def test_racing_stops_a_hopeless_policy_and_never_a_winner():
    task = load_task("digits")
    ev = LocalEvaluator(task, device="cpu", batch_size=32)
    full = LocalEvaluator(task, device="cpu", batch_size=32, prefix_cache_mb=0)
    graph = ev.graph
    incumbent = Policy.uniform(graph, 6, 6)
    ev.set_incumbent(incumbent)
    best = full.accuracy(incumbent)
    bad = Policy.uniform(graph, 2, 2)  # far worse than 6-bit
    raced = ev.accuracy(bad, at_least=best)
    assert not ev.last.complete and ev.last.images < ev.val_images
    stopped_at = ev.last.images
    assert full.accuracy(bad) < best  # the decision was right
    assert raced == pytest.approx(ev.last.score)
    good = Policy.uniform(graph, 8, 8)
    assert ev.accuracy(good, at_least=best - 0.05) == full.accuracy(good)  # beats it: in full
    assert ev.last.complete and ev.last.images == ev.val_images
    # the same stops in a fresh evaluator (the incumbent is scored again when needed)
    again = LocalEvaluator(task, device="cpu", batch_size=32)
    again.set_incumbent(incumbent)
    assert again.accuracy(bad, at_least=best) == raced and again.last.images == stopped_at
