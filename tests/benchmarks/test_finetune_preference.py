"""The fine-tune benchmark's Kendall tau: does the proxy's ranking survive the fine-tune?"""

import pytest

from benchmarks.resnet20_finetune import preference


def _row(val, before, after, epochs=1, budget=1 / 64, source="frontier:x"):
    return {
        "source": source,
        "budget": budget,
        "epochs": epochs,
        "val_before": val,
        "test_before": before,
        "test_after": after,
    }


def test_tau_counts_each_policy_once_and_compares_before_and_after():
    rows = [
        _row(0.90, 0.84, 0.86),
        _row(0.90, 0.84, 0.86, source="two-stage"),  # the same policy found twice: counted once
        _row(0.88, 0.83, 0.87),
        _row(0.85, 0.80, 0.85),
        _row(0.80, 0.79, 0.84),
        _row(0.70, 0.60, 0.80, epochs=3),  # another recipe length: its own line
        _row(0.95, 0.90, 0.91, budget=1 / 128),  # another budget: left out
    ]
    tau = preference(rows)
    assert set(tau) == {1}
    n, before, after = tau[1]
    assert n == 4
    assert before == pytest.approx(1.0)  # the proxy orders the test accuracies before exactly
    # After: pairs (0.90,0.86) (0.88,0.87) (0.85,0.85) (0.80,0.84): 5 concordant, 1 discordant.
    assert after == pytest.approx((5 - 1) / 6)
