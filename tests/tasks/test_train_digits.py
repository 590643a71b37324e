"""Training the digits models (``jpq_env.tasks.train_digits``): MACs, bitwise reproducibility,
and where the weights are written.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from jpq_env.tasks import TaskError
from jpq_env.tasks.digits import (
    DeepDigitsNet,
    DigitsCNN,
    digits_splits,
    train_model,
)
from jpq_env.tasks.train_digits import count_macs


@pytest.fixture(scope="module")
def splits8() -> dict[str, TensorDataset]:
    return digits_splits(seed=0, size=8)


def test_count_macs() -> None:
    assert count_macs(nn.Linear(4, 3), torch.rand(1, 4)) == 12
    conv = nn.Conv2d(2, 4, 3, padding=1, groups=2)
    assert count_macs(conv, torch.rand(1, 2, 5, 5)) == 25 * 4 * 1 * 9


@pytest.mark.parametrize(("cls", "size"), [(DigitsCNN, 8), (DeepDigitsNet, 16)])
def test_train_model_bitwise_reproducible(cls: type[nn.Module], size: int) -> None:
    full = digits_splits(seed=0, size=size)
    x, y = full["train"].tensors
    small = {"train": TensorDataset(x[:96], y[:96])}
    torch.manual_seed(0)
    init = cls()

    def run(seed: int) -> dict[str, torch.Tensor]:
        model = train_model(copy.deepcopy(init), small, epochs=1, seed=seed, batch_size=32)
        assert not model.training
        return model.state_dict()

    first, second, other = run(0), run(0), run(1)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert not all(torch.equal(first[k], v) for k, v in init.state_dict().items())


def test_train_model_rejects_bad_arguments(splits8: dict[str, TensorDataset]) -> None:
    with pytest.raises(TaskError, match="epochs"):
        train_model(DigitsCNN(), splits8, epochs=0, seed=0)
    x, y = splits8["train"].tensors
    with pytest.raises(TaskError, match="batch_size"):
        train_model(DigitsCNN(), {"train": TensorDataset(x[:8], y[:8])}, epochs=1, seed=0)


def test_train_digits_writes_to_the_current_folder_or_out_never_the_package(
    tmp_path, monkeypatch, capsys
):
    import dataclasses
    import hashlib

    from jpq_env.tasks import digits, train_digits

    shipped = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in digits.WEIGHTS_DIR.iterdir()
    }
    quick = tuple(dataclasses.replace(c, epochs=1) for c in train_digits._CONFIGS)
    monkeypatch.setattr(train_digits, "_CONFIGS", quick)
    monkeypatch.chdir(tmp_path)
    assert train_digits.main([]) == 0
    written = tmp_path / "digits-weights"
    assert sorted(p.name for p in written.iterdir()) == sorted(shipped)
    assert "differs from the shipped one" in capsys.readouterr().out  # 1 epoch, not 40
    assert train_digits.main(["--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "metadata.json").exists()
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in digits.WEIGHTS_DIR.iterdir()
    }
    assert after == shipped
