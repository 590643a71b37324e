"""Quantization (``jpq_env.core.quant``): weights per kernel against a reference, activation
levels, refused widths.
"""

import numpy as np
import pytest
import torch

from jpq_env.core.quant import ActRange, quantize_activation, quantize_weight


def _reference_kernel(w: np.ndarray, bits: int) -> np.ndarray:
    """One kernel quantized the textbook way, in float64 numpy."""
    if bits == 0:
        return np.zeros_like(w)
    if bits == 32:
        return w
    if bits == 1:
        return np.sign(w) * np.abs(w).mean()
    levels = 2 ** (bits - 1) - 1
    scale = np.abs(w).max() / levels
    return np.clip(np.round(w / scale), -levels, levels) * scale


def test_mixed_bits_match_a_per_kernel_reference():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(9, 4, 3, 3, generator=g)
    bits = torch.tensor([0, 1, 2, 3, 4, 5, 8, 16, 32])
    q = quantize_weight(w, bits).numpy()
    for k, b in enumerate(bits.tolist()):
        expected = _reference_kernel(w[k].double().numpy(), b)
        np.testing.assert_allclose(q[k], expected, rtol=1e-5, atol=1e-6, err_msg=f"{b} bits")


def test_level_counts_and_special_widths():
    w = torch.randn(4, 256)
    q = quantize_weight(w, torch.tensor([2, 3, 4, 32]))
    for k, levels in enumerate((3, 7, 15)):
        assert len(torch.unique(q[k])) <= levels
    assert len(torch.unique(q[2])) > 7  # 4 bits use more than 3 bits' levels on 256 weights
    assert torch.equal(q[3], w[3])  # 32 bits pass through bitwise
    assert torch.equal(quantize_weight(w, torch.zeros(4, dtype=torch.long)), torch.zeros_like(w))
    assert torch.equal(quantize_weight(w, torch.full((4,), 32)), w)


def test_linear_weights_and_all_zero_kernels():
    w = torch.randn(3, 5)
    w[1] = 0.0
    q = quantize_weight(w, torch.tensor([4, 4, 2]))
    assert torch.isfinite(q).all() and torch.equal(q[1], torch.zeros(5))


def test_input_is_never_modified():
    w = torch.randn(5, 3)
    before = w.clone()
    quantize_weight(w, torch.tensor([0, 1, 2, 8, 32]), "mse")
    assert torch.equal(w, before)


def test_mse_search_never_does_worse_than_max():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 8, 3, 3, generator=g) ** 3  # heavy tails: clipping pays off
    bits = torch.full((16,), 3)
    err_max = (quantize_weight(w, bits, "max") - w).pow(2).flatten(1).sum(1)
    err_mse = (quantize_weight(w, bits, "mse") - w).pow(2).flatten(1).sum(1)
    assert (err_mse <= err_max + 1e-6).all() and err_mse.sum() < err_max.sum()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="expected 3 bit-widths"):
        quantize_weight(torch.randn(3, 2), torch.tensor([4, 4]))
    with pytest.raises(ValueError, match="unknown weight range method 'median'"):
        quantize_weight(torch.randn(3, 2), torch.tensor([4, 4, 4]), "median")


def test_unsigned_activation_levels():
    x = torch.linspace(-1, 3, 1001)
    q = quantize_activation(x, 2, ActRange(0.0, 3.0))
    assert sorted(torch.unique(q).tolist()) == pytest.approx([0.0, 1.0, 2.0, 3.0])


def test_signed_activation_levels_and_full_precision():
    x = torch.linspace(-5, 5, 1001)
    q = quantize_activation(x, 3, ActRange(-2.0, 1.5))
    assert sorted(torch.unique(q).tolist()) == pytest.approx(
        [-2, -4 / 3, -2 / 3, 0, 2 / 3, 4 / 3, 2]
    )
    assert quantize_activation(x, 32, ActRange(-2.0, 1.5)) is x


def test_unsupported_widths_are_named():
    with pytest.raises(ValueError, match=r"unsupported weight widths \[-1, 33\]"):
        quantize_weight(torch.randn(3, 2), torch.tensor([-1, 4, 33]))


def test_signed_one_bit_activations_have_two_levels():
    q = quantize_activation(torch.linspace(-3, 3, 101), 1, ActRange(-2.0, 1.0))
    assert sorted(torch.unique(q).tolist()) == [-1.0, 1.0]
