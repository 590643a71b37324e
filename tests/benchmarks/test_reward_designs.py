"""The reward-design benchmark's measures (``benchmarks/reward_designs.py``) against values
computed by hand."""

import numpy as np
import pytest


def test_reward_design_measures_against_hand_computed_values():
    from benchmarks.reward_designs import best_curve, evaluations_to_within, rank_correlation

    records = [
        {"accuracy": 0.9, "budget_met": False},  # over budget: not counted
        {"accuracy": 0.5, "budget_met": True},
        {"accuracy": 0.7, "budget_met": True},
        {"accuracy": 0.6, "budget_met": True},
        {"accuracy": 0.75, "budget_met": True},
    ]
    curve = best_curve(records)
    assert curve == [0.0, 0.5, 0.7, 0.7, 0.75]
    assert evaluations_to_within(curve, 0.05) == 3  # 0.7 is within 0.05 of 0.75
    assert evaluations_to_within(curve, 0.01) == 5
    # Kendall tau-b by hand: pairs of (1, 2, 3, 4) and (1, 3, 2, 4): 5 concordant, 1 discordant.
    assert rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(rank_correlation([0.9, 0.9, 0.9], [0.8, 0.7, 0.9]))  # a plateau: undefined
    assert np.isnan(rank_correlation([0.1, 0.2], [0.5, 0.5]))
