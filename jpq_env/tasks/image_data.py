"""Image data sets on disk, in torchvision's formats: CIFAR-10 python batches and ImageFolder.

Nothing here downloads. A path that does not hold what a reader expects gets a ``TaskError`` that
names the path and says what to put there.

- **CIFAR-10** (``cifar10_data``): torchvision's layout, ``ROOT/cifar-10-batches-py/`` holding
  ``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` (the contents of
  ``cifar-10-python.tar.gz``); ``ROOT`` may also be that folder itself. The batches are read
  here rather than by ``torchvision.datasets.CIFAR10`` because that class insists on the md5 sums
  of the full files, which rules out smaller subsets in the same format, and they are unpickled
  with a reader that only accepts numpy arrays (a pickle from an untrusted path cannot run code).
- **ImageFolder** (``image_folder_data``): ImageNet's layout, ``ROOT/train/CLASS/*.jpg`` and
  ``ROOT/val/CLASS/*.jpg`` (the validation images sorted into class folders), read lazily by
  ``torchvision.datasets.ImageFolder``.

Inputs are normalised per channel, ``(pixel / 255 - mean) / std``; the defaults are the usual
CIFAR-10 and ImageNet statistics, and a checkpoint trained with other ones must say so.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from jpq_env.tasks.base import TaskError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR_DIR",
    "CIFAR_TEST",
    "CIFAR_TRAIN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTensors",
    "cifar10_data",
    "image_folder_data",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
_CIFAR_HINT = (
    f"expected CIFAR-10 python batches {CIFAR_TRAIN[0]}..5 and {CIFAR_TEST} in "
    "{where} (torchvision's layout: extract cifar-10-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html into {root})"
)


class ImageTensors(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images held as ``uint8`` tensors, normalised when read (a quarter of the float memory).

    Args:
        images: ``(N, C, H, W)`` ``uint8`` pixels.
        labels: ``(N,)`` ``int64`` class indices.
        mean: Per-channel mean of ``pixel / 255``.
        std: Per-channel standard deviation of ``pixel / 255``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.images = images
        self.targets = labels
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() / 255.0 - self.mean) / self.std

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._normalise(self.images[index]), self.targets[index]

    def subset(self, indices: np.ndarray) -> ImageTensors:
        """The samples ``indices``, still as ``uint8``."""
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return ImageTensors(
            self.images[idx],
            self.targets[idx],
            self.mean.flatten().tolist(),
            self.std.flatten().tolist(),
        )

    def tensors(self) -> TensorDataset:
        """The normalised ``float32`` images as a ``TensorDataset`` (the evaluator's fast path)."""
        return TensorDataset(self._normalise(self.images), self.targets.clone())


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain Python values, nothing that could run code."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR batch holds only arrays"
        )


def _cifar_root(path: str | Path) -> Path:
    root = Path(path).expanduser()
    for where in (root / CIFAR_DIR, root):
        if (where / CIFAR_TRAIN[0]).is_file() or (where / CIFAR_TEST).is_file():
            missing = [f for f in (*CIFAR_TRAIN, CIFAR_TEST) if not (where / f).is_file()]
            if missing:
                raise TaskError(
                    f"CIFAR-10 data in '{where}' is incomplete: missing {', '.join(missing)}; "
                    + _CIFAR_HINT.format(where=where, root=root)
                )
            return where
    state = "does not exist" if not root.exists() else "holds no CIFAR-10 batches"
    raise TaskError(
        f"data path '{root}' {state}: " + _CIFAR_HINT.format(where=root / CIFAR_DIR, root=root)
    )


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            raw = _ArraysOnly(f, encoding="latin1").load()
    except Exception as exc:
        raise TaskError(
            f"cannot read CIFAR-10 batch '{path}': {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(raw, dict):
        raise TaskError(f"CIFAR-10 batch '{path}' holds a {type(raw).__name__}, expected a dict")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise TaskError(
            f"CIFAR-10 batch '{path}': 'data' must be an (N, 3072) uint8 array, got {shape}"
        )
    if data.dtype != np.uint8:  # a cast would truncate floats in [0, 1] or wrap large ints
        raise TaskError(
            f"CIFAR-10 batch '{path}': 'data' must be uint8 pixels (0-255), got {data.dtype}"
        )
    try:
        raw_labels = np.asarray(labels if labels is not None else [])
    except (TypeError, ValueError) as exc:
        raise TaskError(f"CIFAR-10 batch '{path}': 'labels' is not a list of integers") from exc
    if raw_labels.size and (raw_labels.dtype.kind not in "iu" and not _whole_numbers(raw_labels)):
        raise TaskError(
            f"CIFAR-10 batch '{path}': 'labels' must be integers, got {raw_labels.dtype} values "
            f"such as {raw_labels.flat[0]!r}"
        )
    labels_arr = raw_labels.astype(np.int64) if raw_labels.size else np.zeros(0, np.int64)
    if labels_arr.shape != (data.shape[0],):
        raise TaskError(
            f"CIFAR-10 batch '{path}': {data.shape[0]} images but {labels_arr.size} labels"
        )
    if labels_arr.size and (labels_arr.min() < 0 or labels_arr.max() > 9):
        raise TaskError(f"CIFAR-10 batch '{path}': labels outside [0, 9]")
    return data.reshape(-1, 3, 32, 32), labels_arr


def _whole_numbers(values: np.ndarray) -> bool:
    """True for an object array of Python ints (what a pickled list of labels becomes)."""
    return values.dtype == object and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and -(2**62) < v < 2**62
        for v in values.flat
    )


def cifar10_data(
    path: str | Path,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> tuple[ImageTensors, ImageTensors]:
    """Read CIFAR-10 python batches: the training set (batches 1-5) and the test set.

    Raises:
        TaskError: If the path, a batch file or its contents are missing or malformed.
    """
    where = _cifar_root(path)
    parts = [_read_batch(where / name) for name in CIFAR_TRAIN]
    train_x = torch.from_numpy(np.concatenate([x for x, _ in parts]))
    train_y = torch.from_numpy(np.concatenate([y for _, y in parts]))
    test_x, test_y = _read_batch(where / CIFAR_TEST)
    return (
        ImageTensors(train_x, train_y, mean, std),
        ImageTensors(torch.from_numpy(test_x), torch.from_numpy(test_y), mean, std),
    )


def image_folder_data(
    path: str | Path,
    image_size: int,
    resize: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[Dataset, Dataset, list[str]]:
    """Open ``PATH/train`` and ``PATH/val`` as ImageFolders: resize, center crop, normalise.

    Args:
        path: Root holding ``train/`` and ``val/``, each with one folder of images per class.
        image_size: Side of the center crop fed to the model.
        resize: Shorter side after resizing, before the crop (default ``image_size * 256 / 224``,
            the ImageNet evaluation convention).
        mean: Per-channel mean of ``pixel / 255``.
        std: Per-channel standard deviation.

    Returns:
        The training set, the test set (``val/``) and the class names.

    Raises:
        TaskError: If a folder is missing or empty, or ``train`` and ``val`` disagree on classes.
    """
    from torchvision import datasets, transforms

    root = Path(path).expanduser()
    hint = (
        f"expected an ImageFolder tree: {root}/train/CLASS/IMAGE and {root}/val/CLASS/IMAGE "
        "(one sub-folder per class, the same classes in both; ImageNet's validation images "
        "sorted into class folders)"
    )
    if not root.is_dir():
        raise TaskError(f"data path '{root}' does not exist: {hint}")
    transform = transforms.Compose(
        [
            transforms.Resize(resize or round(image_size * 256 / 224)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    folders = []
    for split in ("train", "val"):
        where = root / split
        if not where.is_dir():
            raise TaskError(f"data path '{root}' has no '{split}' folder: {hint}")
        try:
            folders.append(datasets.ImageFolder(str(where), transform=transform))
        except (FileNotFoundError, RuntimeError) as exc:
            raise TaskError(f"cannot read images in '{where}': {exc}; {hint}") from exc
    train, test = folders
    if train.classes != test.classes:
        raise TaskError(
            f"'{root}/train' and '{root}/val' hold different classes ({len(train.classes)} and "
            f"{len(test.classes)}): {hint}"
        )
    return train, test, list(train.classes)
