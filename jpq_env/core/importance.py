"""Kernel importance: one ranking of a layer's output kernels, shared by every decision.

AJPQ's two levels follow one importance criterion: the layer decision prunes the least important
kernels, and the channel decision gives widths to the rest in importance order. Everything that
needs that order (the environment, the sensitivity measurement, the agents through the
environment) computes it here, once per layer:

- ``IMPORTANCE``: the criteria by name (``"l1"``, ``"l2"`` norm of each kernel's weights); add
  your own with ``register_importance`` (a function from a weight tensor to one score per kernel);
- ``kernel_ranking``: the kernels most important first (ties keep channel order);
- ``ranked_importance``: the ranking and the scores in ranked order, scaled to [0, 1] (what the
  agents observe of each kernel);
- ``group_sizes``: how a channel decision's importance groups cover the kept kernels: near-equal
  chunks in importance order, the larger ones first (``numpy.array_split``'s rule).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = [
    "IMPORTANCE",
    "Importance",
    "group_sizes",
    "kernel_ranking",
    "ranked_importance",
    "register_importance",
]

Importance = Callable[[torch.Tensor], torch.Tensor]


def _l1(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().flatten(1).sum(dim=1)


def _l2(weight: torch.Tensor) -> torch.Tensor:
    return weight.pow(2).flatten(1).sum(dim=1).sqrt()


IMPORTANCE: dict[str, Importance] = {"l1": _l1, "l2": _l2}


def register_importance(name: str, criterion: Importance) -> None:
    """Add an importance criterion: a function from a weight tensor to one score per kernel."""
    IMPORTANCE[name] = criterion


def _scores(weight: torch.Tensor, criterion: str | Importance) -> np.ndarray:
    if isinstance(criterion, str):
        if criterion not in IMPORTANCE:
            raise KeyError(
                f"unknown importance criterion '{criterion}': choose one of {sorted(IMPORTANCE)}"
            )
        criterion = IMPORTANCE[criterion]
    return criterion(weight.detach().float().cpu()).numpy()


def kernel_ranking(weight: torch.Tensor, criterion: str | Importance = "l1") -> np.ndarray:
    """Output kernels of a weight tensor, most important first (ties keep channel order).

    Raises:
        KeyError: If ``criterion`` names no registered criterion.
    """
    return np.argsort(-_scores(weight, criterion), kind="stable")


def ranked_importance(
    weight: torch.Tensor, criterion: str | Importance = "l1"
) -> tuple[np.ndarray, np.ndarray]:
    """The ranking of ``kernel_ranking`` and the scores in that order, scaled to [0, 1].

    Returns:
        ``(order, scaled)``: kernel indices most important first, and ``scaled[i]`` the score of
        kernel ``order[i]`` over the layer's largest score (float32; all zero for a zero weight).
    """
    scores = _scores(weight, criterion)
    order = np.argsort(-scores, kind="stable")
    ranked = torch.from_numpy(scores)[torch.from_numpy(order)]
    scaled = (ranked / max(float(scores.max()), 1e-12)).numpy().astype(np.float32)
    return order, scaled


def group_sizes(kept: int, groups: int) -> np.ndarray:
    """Sizes of ``groups`` importance groups over ``kept`` kernels (near-equal, larger first).

    The kernels are taken in importance order, so group 0 holds the most important ones. With more
    groups than kernels the last groups are empty.
    """
    base, extra = divmod(kept, groups)
    return np.array([base + 1] * extra + [base] * (groups - extra), dtype=np.int64)
