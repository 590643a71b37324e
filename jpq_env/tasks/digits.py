"""Built-in ``digits`` tasks: small CNNs on scikit-learn's bundled 8x8 handwritten digits.

The data is ``sklearn.datasets.load_digits`` (1,797 grey-scale 8x8 images, ten classes), which
ships inside scikit-learn, so the tasks work fully offline. Two models are provided:

* :class:`DigitsCNN` (task ``"digits"``): a plain conv/BN/ReLU stack plus two linear layers on
  1x8x8 inputs, about 50k parameters and 6 compressible layers.
* :class:`DeepDigitsNet` (task ``"digits-deep"``): a small ResNet-style network on 1x16x16
  (bilinearly upsampled) inputs, with identity residual adds, one depthwise-separable pair and
  global average pooling; 11 compressible layers. It exercises the graph features a compression
  core must handle (shared residual inputs, grouped convolutions).

Both tasks load FP32 checkpoints shipped in ``jpq_env/tasks/weights/``; they are produced by
``python -m jpq_env.tasks.train_digits``. The task factories take no seed: their splits are always
the ones the checkpoints were trained on (:data:`CHECKPOINT_SEED`), so the val/test numbers a
search reports are never contaminated by training data. Use :func:`digits_splits` with another
seed together with :func:`train_model` to study split variance by retraining.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

from jpq_env.tasks.base import Task, TaskError

__all__ = [
    "CALIB_SIZE",
    "CHECKPOINT_SEED",
    "DEEP_CHECKPOINT",
    "DEEP_INPUT_SIZE",
    "CNN_CHECKPOINT",
    "CNN_INPUT_SIZE",
    "NUM_CLASSES",
    "WEIGHTS_DIR",
    "DeepDigitsNet",
    "DigitsCNN",
    "accuracy",
    "digits_deep_task",
    "digits_split_indices",
    "digits_splits",
    "digits_task",
    "train_model",
]

NUM_CLASSES = 10
"""Number of digit classes."""

CALIB_SIZE = 256
"""Number of training samples in the calibration split."""

CHECKPOINT_SEED = 0
"""Split (and training) seed the shipped checkpoints were produced with."""

CNN_INPUT_SIZE = 8
"""Side length of the :class:`DigitsCNN` input images."""

DEEP_INPUT_SIZE = 16
"""Side length of the :class:`DeepDigitsNet` input images (upsampled from 8x8)."""

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""Directory holding the shipped checkpoints (read at call time, so tests can patch it)."""

CNN_CHECKPOINT = "digits_cnn.pt"
"""File name of the :class:`DigitsCNN` checkpoint inside :data:`WEIGHTS_DIR`."""

DEEP_CHECKPOINT = "digits_deep.pt"
"""File name of the :class:`DeepDigitsNet` checkpoint inside :data:`WEIGHTS_DIR`."""

_TEST_FRACTION = 0.2
_VAL_FRACTION = 0.2


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def digits_split_indices(seed: int = 0) -> dict[str, np.ndarray]:
    """Return the sample indices (into ``load_digits()``) of each split.

    The split is stratified by label at every step, so each split keeps the overall class
    proportions: ``test`` is 20% of all samples (360), ``val`` is 20% of the rest (288) and
    ``train`` is the remainder (1,149). ``calib`` is a stratified draw of :data:`CALIB_SIZE`
    samples from ``train``: BatchNorm re-calibration only needs in-distribution data, and the
    training data is the data the network's statistics were estimated on.

    Exposing the indices (rather than only tensors) makes disjointness and seeding checkable.

    Args:
        seed: ``random_state`` for all three ``train_test_split`` calls.

    Returns:
        Sorted ``int64`` index arrays keyed ``train``, ``val``, ``calib`` and ``test``. ``train``,
        ``val`` and ``test`` are pairwise disjoint and cover all samples; ``calib`` is a subset
        of ``train``.
    """
    labels = load_digits().target
    all_idx = np.arange(len(labels))
    rest_idx, test_idx = train_test_split(
        all_idx, test_size=_TEST_FRACTION, stratify=labels, random_state=seed
    )
    train_idx, val_idx = train_test_split(
        rest_idx, test_size=_VAL_FRACTION, stratify=labels[rest_idx], random_state=seed
    )
    calib_idx, _ = train_test_split(
        train_idx, train_size=CALIB_SIZE, stratify=labels[train_idx], random_state=seed
    )
    return {
        name: np.sort(np.asarray(idx, dtype=np.int64))
        for name, idx in (
            ("train", train_idx),
            ("val", val_idx),
            ("calib", calib_idx),
            ("test", test_idx),
        )
    }


def digits_splits(seed: int = 0, size: int = 8) -> dict[str, TensorDataset]:
    """Build the train/val/calib/test datasets of the digits data.

    Inputs are ``float32`` tensors shaped ``(N, 1, size, size)`` with pixel values divided by 16,
    so they lie in ``[0, 1]``; labels are ``int64``. For ``size != 8`` the 8x8 images are resized
    with bilinear interpolation (``align_corners=False``), which keeps values in ``[0, 1]``. The
    sample membership of each split is :func:`digits_split_indices` ``(seed)``.

    Args:
        seed: Seed of the stratified split.
        size: Side length of the returned images; 8 is the native resolution.

    Returns:
        Datasets keyed ``train``, ``val``, ``calib`` and ``test``, each a ``TensorDataset`` of
        ``(inputs, labels)``.

    Raises:
        TaskError: If ``size`` is smaller than 8.
    """
    if size < 8:
        raise TaskError(f"digits image size must be >= 8, got {size}")
    digits = load_digits()
    images = torch.from_numpy(digits.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = images.clamp_(0.0, 1.0)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return {
        name: TensorDataset(images[torch.from_numpy(idx)], labels[torch.from_numpy(idx)])
        for name, idx in digits_split_indices(seed).items()
    }


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _conv_bn(
    in_ch: int, out_ch: int, *, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Return ``Conv2d`` (no bias, "same" padding) followed by ``BatchNorm2d``."""
    return nn.Sequential(
        nn.Conv2d(
            in_ch,
            out_ch,
            kernel_size=kernel,
            stride=stride,
            padding=kernel // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_ch),
    )


class DigitsCNN(nn.Module):
    """Default digits model on ``1x8x8`` inputs (6 compressible layers, about 50k parameters).

    Layout: ``conv 1->16, conv 16->32, maxpool, conv 32->32, conv 32->64, maxpool, flatten,
    linear 256->64, ReLU, linear 64->10``; every convolution is 3x3 with padding 1 and followed
    by BatchNorm and ReLU. A plain chain, so it is the easy case for a compression search.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        """Create the layers.

        Args:
            num_classes: Number of output logits.
        """
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(64)
        self.relu4 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 2 * 2, 64)
        self.relu5 = nn.ReLU()
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch shaped ``(N, 1, 8, 8)``."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.pool1(x)
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.relu4(self.bn4(self.conv4(x)))
        x = self.pool2(x)
        x = torch.flatten(x, 1)
        x = self.relu5(self.fc1(x))
        logits: torch.Tensor = self.fc2(x)
        return logits


class _BasicBlock(nn.Module):
    """ResNet basic block with an identity shortcut (same channels, stride 1)."""

    def __init__(self, channels: int) -> None:
        """Create two 3x3 conv/BN layers on ``channels`` channels."""
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(bn2(conv2(relu(bn1(conv1(x))))) + x)``."""
        identity = x
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        result: torch.Tensor = self.relu2(out)
        return result


class DeepDigitsNet(nn.Module):
    """Deeper digits model on ``1x16x16`` inputs: residual blocks and a depthwise-separable pair.

    Layout (11 compressible layers, about 104k parameters)::

        stem    conv 1->16 3x3, BN, ReLU                       16x16
        block1  basic block (2 convs 16->16), identity add       16x16
        down1   conv 16->32 3x3 stride 2, BN, ReLU              8x8
        block2  basic block (2 convs 32->32), identity add       8x8
        dw      depthwise conv 32->32 3x3 stride 2 (groups=32), BN, ReLU   4x4
        pw      pointwise conv 32->64 1x1, BN, ReLU             4x4
        block3  basic block (2 convs 64->64), identity add       4x4
        head    AdaptiveAvgPool2d(1), flatten, linear 64->10

    Residual adds make the output channels of a block tied to its input (pruning must respect
    them) and the depthwise conv ties its output channels to its input channels.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        """Create the layers.

        Args:
            num_classes: Number of output logits.
        """
        super().__init__()
        self.stem = _conv_bn(1, 16)
        self.stem_relu = nn.ReLU()
        self.block1 = _BasicBlock(16)
        self.down1 = _conv_bn(16, 32, stride=2)
        self.down1_relu = nn.ReLU()
        self.block2 = _BasicBlock(32)
        self.dw = _conv_bn(32, 32, stride=2, groups=32)
        self.dw_relu = nn.ReLU()
        self.pw = _conv_bn(32, 64, kernel=1)
        self.pw_relu = nn.ReLU()
        self.block3 = _BasicBlock(64)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch shaped ``(N, 1, 16, 16)``."""
        x = self.stem_relu(self.stem(x))
        x = self.block1(x)
        x = self.down1_relu(self.down1(x))
        x = self.block2(x)
        x = self.dw_relu(self.dw(x))
        x = self.pw_relu(self.pw(x))
        x = self.block3(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        logits: torch.Tensor = self.fc(x)
        return logits


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by a random integer offset in ``[-max_shift, max_shift]`` per axis.

    Vacated pixels are zero (the digits' background), so no content wraps around.
    """
    n, _, h, w = x.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    out = torch.empty_like(x)
    for i in range(n):
        dy = max_shift - int(offsets[i, 0])
        dx = max_shift - int(offsets[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


def train_model(
    model: nn.Module,
    splits: Mapping[str, TensorDataset],
    *,
    epochs: int,
    seed: int,
    lr: float = 3e-3,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    max_shift: int = 1,
) -> nn.Module:
    """Train ``model`` in place on ``splits["train"]``, deterministically, on the CPU.

    AdamW with a one-cycle learning-rate schedule and cross-entropy loss; each batch is
    augmented with random integer shifts of up to ``max_shift`` pixels (set 0 to disable). All
    randomness (shuffling, augmentation) comes from a ``torch.Generator`` seeded with ``seed``,
    ``torch.manual_seed(seed)`` is set for anything else, and deterministic algorithms are
    enforced while training, so two runs with the same seed, initial weights and thread count on
    the same machine give bitwise-identical weights. Incomplete final batches are dropped so
    BatchNorm never sees a batch of one.

    Args:
        model: Network to train; its initial weights are the caller's (seed before building it).
        splits: Datasets as returned by :func:`digits_splits`; only ``"train"`` is read.
        epochs: Number of passes over the training split.
        seed: Seed of shuffling, augmentation and the global torch RNG.
        lr: Peak learning rate of the one-cycle schedule.
        batch_size: Mini-batch size.
        weight_decay: AdamW decoupled weight decay.
        max_shift: Largest random shift in pixels used for augmentation.

    Returns:
        The same ``model`` object, trained and switched to eval mode.

    Raises:
        TaskError: If ``epochs`` is not positive or the training split is smaller than one batch.
    """
    if epochs < 1:
        raise TaskError(f"epochs must be >= 1, got {epochs}")
    inputs, labels = splits["train"].tensors
    n = len(inputs)
    batches_per_epoch = n // batch_size
    if batches_per_epoch < 1:
        raise TaskError(f"training split has {n} samples, fewer than batch_size={batch_size}")

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model.to("cpu")
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * batches_per_epoch
        )
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for b in range(batches_per_epoch):
                idx = order[b * batch_size : (b + 1) * batch_size]
                x, y = inputs[idx], labels[idx]
                if max_shift > 0:
                    x = _random_shift(x, max_shift, generator)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                scheduler.step()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, dataset: TensorDataset, batch_size: int = 512) -> float:
    """Return the top-1 accuracy (in ``[0, 1]``) of ``model`` on ``dataset``.

    The model is switched to eval mode (BatchNorm uses running statistics).

    Args:
        model: Classifier returning logits.
        dataset: ``TensorDataset`` of ``(inputs, labels)``.
        batch_size: Evaluation batch size.

    Returns:
        Fraction of correctly classified samples.
    """
    model.eval()
    inputs, labels = dataset.tensors
    correct = 0
    for start in range(0, len(inputs), batch_size):
        logits = model(inputs[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    return correct / len(inputs)


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


def _load_checkpoint(model: nn.Module, filename: str) -> nn.Module:
    """Load ``WEIGHTS_DIR / filename`` into ``model`` and return it in eval mode.

    Raises:
        TaskError: If the checkpoint is missing or does not match the model.
    """
    path = WEIGHTS_DIR / filename
    if not path.is_file():
        raise TaskError(
            f"digits checkpoint not found: {path}; "
            f"run `python -m jpq_env.tasks.train_digits --out {path.parent}` to create it"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TaskError(
            f"digits checkpoint {path} does not match {type(model).__name__}: {exc}; "
            f"run `python -m jpq_env.tasks.train_digits --out {path.parent}` to recreate it"
        ) from exc
    return model.eval()


def _make_task(name: str, model: nn.Module, filename: str, size: int) -> Task:
    """Load a checkpoint into ``model`` and pair it with the seed-0 splits at ``size``."""
    model = _load_checkpoint(model, filename)
    splits = digits_splits(seed=CHECKPOINT_SEED, size=size)
    example_input = splits["val"].tensors[0][:1].clone()
    return Task(
        name=name,
        model=model,
        example_input=example_input,
        train=splits["train"],
        val=splits["val"],
        calib=splits["calib"],
        test=splits["test"],
        num_classes=NUM_CLASSES,
    )


def digits_task() -> Task:
    """Return the ``"digits"`` task: the shipped :class:`DigitsCNN` on 1x8x8 digits.

    The splits are always the seed-:data:`CHECKPOINT_SEED` splits the checkpoint was trained
    on; taking a seed here would silently leak training samples into ``val``/``test``.

    Returns:
        The task, with the model in eval mode and ``example_input`` shaped ``(1, 1, 8, 8)``.

    Raises:
        TaskError: If ``WEIGHTS_DIR / "digits_cnn.pt"`` is missing or does not fit the model.
    """
    return _make_task("digits", DigitsCNN(), CNN_CHECKPOINT, CNN_INPUT_SIZE)


def digits_deep_task() -> Task:
    """Return the ``"digits-deep"`` task: the shipped :class:`DeepDigitsNet` on 1x16x16 digits.

    Like :func:`digits_task`, the splits are always the seed-:data:`CHECKPOINT_SEED` splits the
    checkpoint was trained on, here upsampled to 16x16.

    Returns:
        The task, with the model in eval mode and ``example_input`` shaped ``(1, 1, 16, 16)``.

    Raises:
        TaskError: If ``WEIGHTS_DIR / "digits_deep.pt"`` is missing or does not fit the model.
    """
    return _make_task("digits-deep", DeepDigitsNet(), DEEP_CHECKPOINT, DEEP_INPUT_SIZE)
