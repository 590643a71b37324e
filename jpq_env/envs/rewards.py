"""Reward designs: small named classes that turn an episode's outcome into a reward.

Every design returns *all* its terms (the environment puts each in ``info`` as ``reward_<term>``),
with the reward itself under ``"total"``. Designs from the literature:

========================  =====================================================================
``amc``                   ``-error * ln(BOPs)`` (AMC), budget enforced by the environment
``haq``                   ``scale * (acc - acc_fp32)`` (HAQ, scale 0.1), budget enforced
``galen``                 ``acc - beta * sum_i |cost_i / target_i - 1|`` (Galen R6, beta 5)
``galen-r7``              as ``galen`` but penalised only over budget (Galen R7)
``mnasnet``               ``acc * prod_i (cost_i / target_i) ** w`` over budget (w = -0.07)
``lagrangian``            ``acc - mu * violation``, ``mu`` raised by dual ascent while violated
========================  =====================================================================

``cost_i / target_i`` is the BOPs (and, if set, size) ratio to its budget, both as fractions of
FP32. Add a design by subclassing ``RewardDesign`` and calling ``register_reward``; select it by
name or pass an instance to the environment.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from jpq_env import validation as check

__all__ = [
    "REWARDS",
    "AMCReward",
    "GalenR6Reward",
    "GalenR7Reward",
    "HAQReward",
    "LagrangianReward",
    "MnasNetReward",
    "Outcome",
    "RewardDesign",
    "make_reward",
    "register_reward",
]


@dataclass(frozen=True)
class Outcome:
    """What an episode produced, as reward designs see it.

    Attributes:
        accuracy: Proxy accuracy of the compressed model, in [0, 1].
        accuracy_fp32: Proxy accuracy of the FP32 model, in [0, 1].
        bops: BOPs of the compressed model.
        bops_ratio: BOPs as a fraction of FP32.
        size_ratio: Weight bits as a fraction of FP32.
        budgets: Target fraction of FP32 per constrained cost (``"bops"``, ``"size"``).
    """

    accuracy: float
    accuracy_fp32: float
    bops: float
    bops_ratio: float
    size_ratio: float
    budgets: dict[str, float]

    def ratios(self) -> dict[str, float]:
        """Cost over target for every budget (1.0 = exactly on budget)."""
        cost = {"bops": self.bops_ratio, "size": self.size_ratio}
        return {k: cost[k] / target for k, target in self.budgets.items()}

    @property
    def violation(self) -> float:
        """Largest relative excess over any budget (0 when every budget holds)."""
        return max([0.0, *(r - 1.0 for r in self.ratios().values())])


class RewardDesign(ABC):
    """Base class of reward designs.

    Attributes:
        name: Registry name.
        deterministic: True if the same outcome always gives the same reward (a design with
            internal state, such as an adaptive multiplier, is not).
    """

    name: str = ""
    deterministic: bool = True

    def reset(self) -> None:  # noqa: B027 - optional hook, most designs are stateless
        """Forget any state learned across episodes (called when the environment is built)."""

    @abstractmethod
    def terms(self, outcome: Outcome) -> dict[str, float]:
        """All terms of the reward for ``outcome``, the reward itself under ``"total"``."""

    def __call__(self, outcome: Outcome) -> dict[str, float]:
        """Terms of the reward (see ``terms``); stateful designs update themselves here."""
        return self.terms(outcome)


class AMCReward(RewardDesign):
    """AMC: ``-error * ln(BOPs)``, favouring accuracy and, logarithmically, fewer operations."""

    name = "amc"

    def terms(self, outcome: Outcome) -> dict[str, float]:
        """Error, log BOPs and their product."""
        error = 1.0 - outcome.accuracy
        log_bops = math.log(max(outcome.bops, 1.0))
        return {"error": error, "log_bops": log_bops, "total": -error * log_bops}


class HAQReward(RewardDesign):
    """HAQ: ``scale * (acc - acc_fp32)``; the budget is left to the environment's enforcement."""

    name = "haq"

    def __init__(self, scale: float = 0.1) -> None:
        self.scale = check.number("scale", scale, low=0.0, low_open=True)

    def terms(self, outcome: Outcome) -> dict[str, float]:
        """Accuracy change against FP32 and the scaled reward."""
        delta = outcome.accuracy - outcome.accuracy_fp32
        return {"accuracy_delta": delta, "total": self.scale * delta}


class GalenR6Reward(RewardDesign):
    """Galen R6: ``acc - beta * sum |cost/target - 1|``: close to the budget from both sides.

    A policy *under* its budget is penalised as much as one over it by the same ratio: the
    design steers a search to spend the budget (``galen-r7`` penalises only going over).
    """

    name = "galen"

    def __init__(self, beta: float = 5.0) -> None:
        self.beta = check.number("beta", beta, low=0.0)

    def _gap(self, ratio: float) -> float:
        return abs(ratio - 1.0)

    def terms(self, outcome: Outcome) -> dict[str, float]:
        """Accuracy, the budget penalty and the reward."""
        penalty = self.beta * sum(self._gap(r) for r in outcome.ratios().values())
        return {
            "accuracy": outcome.accuracy,
            "penalty": penalty,
            "total": outcome.accuracy - penalty,
        }


class GalenR7Reward(GalenR6Reward):
    """Galen R7: as R6, but only exceeding a budget is penalised."""

    name = "galen-r7"

    def _gap(self, ratio: float) -> float:
        return max(0.0, ratio - 1.0)


class MnasNetReward(RewardDesign):
    """MnasNet-style soft constraint: ``acc * prod (cost/target) ** w`` for costs over budget."""

    name = "mnasnet"

    def __init__(self, w: float = -0.07) -> None:
        # A positive exponent would reward exceeding the budget.
        self.w = check.number("w", w, high=0.0)

    def terms(self, outcome: Outcome) -> dict[str, float]:
        """Accuracy, the multiplicative factor (1 within budget) and the reward."""
        factor = math.prod(r**self.w for r in outcome.ratios().values() if r > 1.0)
        return {"accuracy": outcome.accuracy, "factor": factor, "total": outcome.accuracy * factor}


class LagrangianReward(RewardDesign):
    """``acc - mu * violation`` with ``mu`` adapted by dual ascent.

    After each episode ``mu <- max(0, mu + lr * violation')`` where ``violation'`` is the
    relative excess over budget (negative slack when under budget, so ``mu`` relaxes again).
    Not deterministic: the same outcome is rewarded differently as ``mu`` moves.
    """

    name = "lagrangian"
    deterministic = False

    def __init__(self, mu: float = 1.0, lr: float = 0.5) -> None:
        self.mu0 = check.number("mu", mu, low=0.0)
        self.lr = check.number("lr", lr, low=0.0)
        self.mu = self.mu0

    def reset(self) -> None:
        """Start again from the initial multiplier."""
        self.mu = self.mu0

    def terms(self, outcome: Outcome) -> dict[str, float]:
        """Accuracy, violation, the multiplier used and the reward (no update)."""
        return {
            "accuracy": outcome.accuracy,
            "violation": outcome.violation,
            "mu": self.mu,
            "total": outcome.accuracy - self.mu * outcome.violation,
        }

    def __call__(self, outcome: Outcome) -> dict[str, float]:
        """Reward with the current multiplier, then one dual-ascent step."""
        terms = self.terms(outcome)
        slack = max(outcome.ratios().values(), default=1.0) - 1.0
        self.mu = max(0.0, self.mu + self.lr * slack)
        return terms


REWARDS: dict[str, Callable[[], RewardDesign]] = {
    cls.name: cls
    for cls in (AMCReward, HAQReward, GalenR6Reward, GalenR7Reward, MnasNetReward, LagrangianReward)
}


def register_reward(name: str, factory: Callable[[], RewardDesign]) -> None:
    """Make a reward design selectable by ``name`` (a class or a no-argument factory)."""
    REWARDS[name] = factory


def make_reward(spec: str | RewardDesign) -> RewardDesign:
    """A reward design from its registered name, or the instance itself.

    Raises:
        ValueError: If the name is not registered.
    """
    if isinstance(spec, RewardDesign):
        return spec
    return REWARDS[check.choice("reward design", spec, sorted(REWARDS))]()


def least_accuracy_reaching(
    design: RewardDesign, target: float, outcome: Callable[[float], Outcome]
) -> float | None:
    """The least score whose reward reaches ``target`` (None: any score does, or not invertible).

    What racing needs: the environment races an evaluation against the score that would give
    the incumbent's reward at this policy's costs. Found by bisection on the design's ``terms``
    (pure: a stateful design is not moved); a design whose reward is not monotone in the score is
    not raced. A target that even a perfect score misses gives a value above 1.

    Args:
        design: The reward design.
        target: The reward to reach.
        outcome: The outcome of a score (the policy's costs and the FP32 score fixed).
    """

    def reward(acc: float) -> float:
        return float(design.terms(outcome(acc))["total"])

    grid = [reward(a) for a in np.linspace(0.0, 1.0, 11)]
    if any(b < a - 1e-12 for a, b in itertools.pairwise(grid)):
        return None
    if grid[-1] < target:
        return 1.0 + 1e-9  # not even a perfect score reaches it
    if grid[0] >= target:
        return None  # any score reaches it: nothing to race
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if reward(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi
