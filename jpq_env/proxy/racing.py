"""Racing: stop an evaluation once it is clear that the policy cannot reach a threshold.

A local search mostly needs to know whether a neighbour beats the incumbent, not its exact
accuracy. The proxy scores images in batches, so after ``n`` of the ``N`` held-out images it can
already bound the final score. With the incumbent's per-image results on the same images (in the
same order) the comparison is *paired*: the differences ``d_i = g_i(candidate) - g_i(incumbent)``
are mostly zero, so their spread is small and the decision comes early; without them the bound
uses the candidate's own results.

Rule: treating the remaining images as a sample of the same population, the final mean of ``d``
is predicted as the running mean ``m`` with a standard error that accounts for both the unseen
images and the uncertainty of ``m``; the evaluation stops when the upper end of that interval,
``m + z * s * sqrt((N - n) * (1 + (N - n) / n)) / N``, falls below the margin the candidate needs.
``s`` is floored (a disagreement rate of at least ``1 / (n + 2)``) so that a run of identical
results is not read as certainty, and no decision is taken before ``min_images``. The rule can be
wrong (the benchmark counts how often it is); ``z = 2.0`` is the default.
"""

from __future__ import annotations

import math

import torch

from jpq_env.errors import ArgumentError

__all__ = ["RaceRule", "upper_bound"]


def upper_bound(values: torch.Tensor, total: int, z: float) -> float:
    """Upper confidence bound on the mean of ``total`` values of which ``values`` are the first.

    Args:
        values: The per-image values seen so far (differences or scores), 1-D.
        total: Images the full evaluation would score.
        z: Width of the interval in standard errors.
    """
    n = int(values.numel())
    if n >= total:
        return float(values.double().mean())
    v = values.double()
    mean = float(v.mean())
    var = float(v.var(unbiased=True)) if n > 1 else 1.0
    var = max(var, 1.0 / (n + 2))  # at least one disagreement in n + 2 images
    rest = total - n
    spread = math.sqrt(rest * var * (1.0 + rest / n)) / total
    return mean + z * spread


class RaceRule:
    """When to stop an evaluation whose final mean must reach ``needed`` (in ``values`` units).

    Args:
        needed: The final mean of the per-image values the policy must reach (for paired values:
            the margin over the incumbent).
        total: Images of the full evaluation.
        z: Confidence of the stop, in standard errors (larger: later, safer stops).
        min_images: No decision before this many images.
    """

    def __init__(self, needed: float, total: int, z: float = 2.0, min_images: int = 256) -> None:
        if not math.isfinite(needed):
            raise ArgumentError(f"the racing threshold must be finite, got {needed}")
        self.needed = float(needed)
        self.total = int(total)
        self.z = float(z)
        self.min_images = min(int(min_images), self.total)

    def lost(self, values: torch.Tensor) -> bool:
        """True if the policy cannot reach ``needed``, with the rule's confidence."""
        if values.numel() < self.min_images:
            return False
        return upper_bound(values, self.total, self.z) < self.needed
