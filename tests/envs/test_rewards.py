"""Reward designs (``jpq_env.envs.rewards``): each against hand-computed values."""

import math

import pytest

from jpq_env.envs.rewards import (
    REWARDS,
    Outcome,
    RewardDesign,
    least_accuracy_reaching,
    make_reward,
    register_reward,
)


def _outcome(acc=0.9, fp32=0.95, bops=1e6, bops_ratio=0.02, size_ratio=0.05, budgets=None):
    return Outcome(acc, fp32, bops, bops_ratio, size_ratio, budgets or {"bops": 1 / 64})


def test_amc_haq_galen():
    o = _outcome()
    assert make_reward("amc")(o)["total"] == pytest.approx(-(1 - 0.9) * math.log(1e6))
    assert make_reward("haq")(o)["total"] == pytest.approx(0.1 * (0.9 - 0.95))
    r6 = make_reward("galen")(o)
    assert r6["penalty"] == pytest.approx(5 * abs(0.02 * 64 - 1))
    assert r6["total"] == pytest.approx(0.9 - 5 * abs(0.02 * 64 - 1))
    under = _outcome(bops_ratio=0.01)
    assert make_reward("galen")(under)["penalty"] == pytest.approx(5 * (1 - 0.64))
    assert make_reward("galen-r7")(under)["total"] == 0.9


def test_two_budgets_add_penalties():
    o = _outcome(bops_ratio=0.02, size_ratio=0.2, budgets={"bops": 1 / 64, "size": 0.1})
    assert make_reward("galen")(o)["penalty"] == pytest.approx(5 * (0.28 + 1.0))
    assert o.violation == pytest.approx(1.0)
    factor = make_reward("mnasnet")(o)["factor"]
    assert factor == pytest.approx(1.28**-0.07 * 2.0**-0.07)


def test_mnasnet_is_plain_accuracy_within_budget():
    assert make_reward("mnasnet")(_outcome(bops_ratio=0.01))["total"] == 0.9


def test_lagrangian_multiplier_follows_dual_ascent():
    design = make_reward("lagrangian")
    over, under = _outcome(bops_ratio=0.03125), _outcome(bops_ratio=0.0078125)  # ratio 2 and 0.5
    first = design(over)
    assert first["mu"] == 1.0 and first["total"] == pytest.approx(0.9 - 1.0)
    assert design.mu == pytest.approx(1.5)  # mu + 0.5 * (2 - 1)
    assert design(under)["total"] == 0.9  # no violation
    assert design.mu == pytest.approx(1.25)
    design.reset()
    assert design.mu == 1.0 and not design.deterministic


def test_user_designs_by_object_and_by_name():
    class Accuracy(RewardDesign):
        name = "accuracy-only"

        def terms(self, outcome: Outcome) -> dict[str, float]:
            return {"total": outcome.accuracy}

    assert make_reward(Accuracy())(_outcome())["total"] == 0.9
    register_reward("accuracy-only", Accuracy)
    try:
        assert make_reward("accuracy-only")(_outcome())["total"] == 0.9
    finally:
        REWARDS.pop("accuracy-only")
    with pytest.raises(ValueError, match="unknown reward design 'nope'"):
        make_reward("nope")


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_builtin_returns_a_total_and_prefers_accuracy(name):
    design = make_reward(name)
    low, high = _outcome(acc=0.5), _outcome(acc=0.9)
    assert "total" in design.terms(high)
    assert design.terms(high)["total"] > design.terms(low)["total"]


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_least_accuracy_reaching_inverts_the_design(name):
    design = make_reward(name)
    budgets = {"bops": 1 / 128}

    def outcome(acc: float) -> Outcome:  # one policy's costs, within its budget
        return Outcome(acc, 0.95, 5e6, 1 / 200, 0.05, budgets)

    def reward(acc: float) -> float:
        return design.terms(outcome(acc))["total"]

    target = 0.3 * reward(0.0) + 0.7 * reward(1.0)
    needed = least_accuracy_reaching(design, target, outcome)
    assert needed is not None and 0 < needed < 1
    assert reward(needed) == pytest.approx(target, abs=1e-9)
    assert reward(needed - 1e-6) < target  # the least such score
    assert least_accuracy_reaching(design, reward(0.0) - 1, outcome) is None  # any score does
    assert least_accuracy_reaching(design, reward(1.0) + 1, outcome) > 1  # no score does


def test_a_design_not_monotone_in_the_score_is_not_inverted():
    class Peaked(RewardDesign):
        name = "peaked"

        def terms(self, outcome: Outcome) -> dict[str, float]:
            return {"total": -abs(outcome.accuracy - 0.5)}

    def outcome(acc: float) -> Outcome:
        return Outcome(acc, 0.95, 5e6, 1 / 200, 0.05, {"bops": 1 / 128})

    assert least_accuracy_reaching(Peaked(), -0.25, outcome) is None
