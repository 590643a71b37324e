"""Kernel importance (``jpq_env.core.importance``): rankings, scaled scores and importance groups
against independent computations.
"""

import numpy as np
import pytest
import torch

from jpq_env.core.importance import (
    group_sizes,
    kernel_ranking,
    ranked_importance,
    register_importance,
)


def test_importance_rankings():
    w = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, -3.0], [1.5, 1.5, 0.0], [0.1, 0.0, 0.0]])
    # L1: 2, 3, 3, 0.1 (ties keep channel order); L2: 1.41, 3, 2.12, 0.1
    assert kernel_ranking(w, "l1").tolist() == [1, 2, 0, 3]
    assert kernel_ranking(w, "l2").tolist() == [1, 2, 0, 3]
    register_importance("first-weight", lambda t: t.flatten(1)[:, 0])
    assert kernel_ranking(w, "first-weight").tolist() == [2, 0, 3, 1]
    with pytest.raises(KeyError, match="unknown importance criterion 'l3'"):
        kernel_ranking(w, "l3")


def _by_hand(w: torch.Tensor, criterion: str) -> np.ndarray:
    flat = w.detach().double().numpy().reshape(w.shape[0], -1)
    return np.abs(flat).sum(1) if criterion == "l1" else np.sqrt((flat**2).sum(1))


@pytest.mark.parametrize("criterion", ["l1", "l2"])
@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (5, 7)], ids=["conv", "linear"])
def test_ranked_importance_is_the_ranking_with_its_scores_scaled_to_the_largest(criterion, shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    w[2] = w[4] if shape[0] > 4 else w[2]  # a tie: channel order decides
    order, scaled = ranked_importance(w, criterion)
    assert order.tolist() == kernel_ranking(w, criterion).tolist()
    scores = _by_hand(w, criterion)
    assert order.tolist() == sorted(range(len(scores)), key=lambda i: (-round(scores[i], 5), i))
    assert scaled.dtype == np.float32 and scaled[0] == 1.0
    np.testing.assert_allclose(scaled, scores[order] / scores.max(), rtol=1e-6)
    assert (np.diff(scaled) <= 0).all()


def test_a_zero_weight_ranks_in_channel_order_with_zero_scores():
    order, scaled = ranked_importance(torch.zeros(4, 2, 3, 3))
    assert order.tolist() == [0, 1, 2, 3] and scaled.tolist() == [0.0] * 4


def test_a_criterion_may_be_a_function_not_registered():
    w = torch.tensor([[3.0, 0.0], [1.0, 5.0], [2.0, 2.0]])
    order, scaled = ranked_importance(w, lambda t: t[:, 0])
    assert order.tolist() == [0, 2, 1] and scaled.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3])


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("kept", [0, 1, 3, 4, 7, 16, 33])
def test_group_sizes_are_numpy_array_split(kept, groups):
    chunks = np.array_split(np.arange(kept), groups)
    assert group_sizes(kept, groups).tolist() == [len(c) for c in chunks]
