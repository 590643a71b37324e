"""Built-in tasks with standard vision architectures, on data and weights the user points to.

- ``resnet18-cifar``: torchvision ``resnet18`` with a CIFAR stem, 3x32x32, CIFAR-10 batches;
- ``mobilenet_v2-cifar``: torchvision ``mobilenet_v2`` with a CIFAR stem, 3x32x32, CIFAR-10;
- ``resnet20-cifar``: He et al.'s ResNet-20 (option A shortcuts), 3x32x32, CIFAR-10;
- ``resnet18-imagenet``: torchvision ``resnet18``, 3x224x224, an ImageFolder (``train/``,
  ``val/``; one output per class folder);
- ``mobilenet_v2-imagenet``: torchvision ``mobilenet_v2``, 3x224x224, an ImageFolder.

CIFAR stems, the usual adaptation to 32x32 inputs: ``resnet18`` gets a 3x3 stride-1 ``conv1``
(``Conv2d(3, 64, 3, 1, 1, bias=False)``) and no max-pool (``maxpool = Identity()``);
``mobilenet_v2``'s first conv (``features.0.0``) gets stride 1. Parameter names stay torchvision's,
so a ``state_dict`` of the adapted model loads as is. ``resnet20`` uses the parameter names of the
widely used ``akamaster/pytorch_resnet_cifar10`` code (``conv1``, ``bn1``, ``layer1..3``,
``linear``), so its published checkpoints load too.

Weights come from ``weights=PATH``: a file written by ``torch.save(model.state_dict(), PATH)``
(a dict holding it under ``"state_dict"`` or ``"model"``, and DataParallel's ``module.`` prefix,
are accepted), read with ``torch.load(weights_only=True)``. Nothing is downloaded. Without
weights the model keeps a seeded random initialisation and a warning says so: searching a random
network is meaningless, but it is a quick smoke test of a set-up.

Splits: the held-out ``val`` (default 5,000 CIFAR / 3,000 ImageFolder training images, AMC's sizes)
and ``calib`` (default 512) are drawn from the training images by a seeded permutation; ``train``
keeps the rest; ``test`` is CIFAR-10's test batch or the ImageFolder's ``val/``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from jpq_env import validation as check
from jpq_env.tasks.base import Task, TaskError
from jpq_env.tasks.image_data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    cifar10_data,
    image_folder_data,
)
from jpq_env.tasks.user import make_task, split_indices, subset

__all__ = [
    "ARCHITECTURES",
    "ResNet20",
    "channel_stats",
    "load_weights",
    "mobilenet_v2_cifar_task",
    "mobilenet_v2_imagenet_task",
    "resnet18_cifar_task",
    "resnet18_imagenet_task",
    "resnet20_cifar_task",
]


class _LambdaShortcut(nn.Module):
    """Option A shortcut: subsample by 2 and zero-pad the channels (no parameters)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = _LambdaShortcut(cout // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-20 (16-32-64 channels, 3 blocks per stage, option A shortcuts).

    40,551,040 MACs per 32x32 image; parameter names as in ``akamaster/pytorch_resnet_cifar10``.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        stages = []
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(3):
                blocks.append(_BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for ``(N, 3, 32, 32)`` inputs."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        logits: torch.Tensor = self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return logits


def _resnet18(num_classes: int, cifar: bool) -> nn.Module:
    model = torchvision.models.resnet18(num_classes=num_classes)
    if cifar:
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model


def _mobilenet_v2(num_classes: int, cifar: bool) -> nn.Module:
    model = torchvision.models.mobilenet_v2(num_classes=num_classes)
    if cifar:
        first = model.features[0][0]
        assert isinstance(first, nn.Conv2d)
        first.stride = (1, 1)
    return model


ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "resnet18-cifar": lambda n: _resnet18(n, cifar=True),
    "mobilenet_v2-cifar": lambda n: _mobilenet_v2(n, cifar=True),
    "resnet20-cifar": ResNet20,
    "resnet18-imagenet": lambda n: _resnet18(n, cifar=False),
    "mobilenet_v2-imagenet": lambda n: _mobilenet_v2(n, cifar=False),
}
"""Model builders by task name, each taking the number of classes."""


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # no refused object: not a checkpoint at all
            raise TaskError(f"cannot load weights '{path}': not a torch checkpoint") from None
        # torch's own message suggests weights_only=False, which would run the file's code.
        raise TaskError(
            f"weights file '{path}' holds pickled objects other than tensors: refused, nothing "
            "was executed (a state_dict saved with torch.save(model.state_dict(), path) loads)"
        ) from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TaskError(
            f"cannot load weights '{path}' with torch.load(weights_only=True): "
            f"{type(exc).__name__}: {first}"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TaskError(
            f"weights file '{path}' holds no state_dict (a dict of tensors, as written by "
            "torch.save(model.state_dict(), path))"
        )
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, path: str | Path, what: str) -> None:
    """Load a ``state_dict`` file into ``model``, with an error that lists what does not fit.

    Raises:
        TaskError: If the file is missing or unreadable, or its tensors do not match the model.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise TaskError(
            f"weights file '{file}' does not exist: put there the state_dict of a trained "
            f"{what} (torch.save(model.state_dict(), '{file}'))"
        )
    state = _state_dict(file)
    own = model.state_dict()
    # Checkpoints saved by PyTorch before 0.4.1 (the public CIFAR ResNets among them) have no
    # BatchNorm step counters; torch's own load_state_dict accepts that. The counter only matters
    # for momentum=None training, so it starts at zero, as in a fresh BatchNorm.
    counters = sorted(
        k for k in set(own) - set(state) if k.rsplit(".", 1)[-1] == "num_batches_tracked"
    )
    if counters:
        state = {**state, **{k: torch.zeros_like(own[k]) for k in counters}}
        warnings.warn(
            f"weights '{file}' have no BatchNorm num_batches_tracked counters (saved by an older "
            f"PyTorch): {len(counters)} filled in with 0",
            UserWarning,
            stacklevel=3,
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise TaskError(f"weights '{file}' do not fit a {what}: " + "; ".join(problems))
    model.load_state_dict(state)


def _model(arch: str, num_classes: int, weights: str | Path | None, seed: int) -> nn.Module:
    seed = check.seed("seed", seed, error=TaskError)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # a random model is the same in every process (resume replays)
        model = ARCHITECTURES[arch](num_classes)
    what = f"'{arch}' model with {num_classes} classes"
    if weights is None:
        warnings.warn(
            f"task '{arch}' has no weights (weights=PATH, --weights PATH): the model is randomly "
            "initialised, so a search on it is meaningless (a smoke test at best)",
            UserWarning,
            stacklevel=3,
        )
    else:
        load_weights(model, weights, what)
    return model.eval()


def channel_stats(value: object, name: str) -> tuple[float, float, float]:
    """Three per-channel numbers (``mean`` or ``std``) from a sequence or from text.

    Text as it comes from a command line is accepted in the comma form ``0.485,0.456,0.406`` and
    as JSON ``[0.485, 0.456, 0.406]``.

    Raises:
        TaskError: Naming the option and the forms it takes, if ``value`` is not three finite
            numbers (``std`` also positive).
    """
    import json
    import math

    items: object = value
    if isinstance(value, str):
        text = value.strip()
        try:
            items = json.loads(text) if text.startswith("[") else text.split(",")
        except json.JSONDecodeError:
            items = None
    numbers: list[float] = []
    if isinstance(items, (list, tuple)) and len(items) == 3:
        for item in items:
            try:
                if isinstance(item, bool):
                    raise ValueError
                numbers.append(float(item))
            except (TypeError, ValueError):
                break
    # Finite in float32, where the inputs are normalised (1e308 is finite only in float64).
    ok = len(numbers) == 3 and all(math.isfinite(x) and abs(x) < 3.4e38 for x in numbers)
    if ok and name == "std":
        ok = all(x > 1.2e-38 for x in numbers)  # positive, and not zero in float32
    if not ok:
        kind = "positive numbers" if name == "std" else "numbers"
        raise TaskError(
            f"{name} must be three {kind}, one per colour channel, e.g. "
            f"--task-option {name}=0.485,0.456,0.406 or {name}=[0.485,0.456,0.406]; got {value!r}"
        )
    return numbers[0], numbers[1], numbers[2]


def _normalisation(mean: object, std: object) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    m, sd = channel_stats(mean, "mean"), channel_stats(std, "std")
    known = {(CIFAR10_MEAN, CIFAR10_STD): "CIFAR-10's", (IMAGENET_MEAN, IMAGENET_STD): "ImageNet's"}
    label = known.get((m, sd), "custom")
    return m, sd, f"{label}: mean {', '.join(map(str, m))}; std {', '.join(map(str, sd))}"


def _need_data(arch: str, data: str | Path | None, what: str) -> Path:
    if data is None:
        raise TaskError(f"task '{arch}' needs data=PATH (--data PATH): {what}")
    return Path(data)


def _cifar_task(
    arch: str,
    data: str | Path | None,
    weights: str | Path | None,
    val_size: int,
    calib_size: int,
    seed: int,
    mean: Sequence[float] | str,
    std: Sequence[float] | str,
) -> Task:
    path = _need_data(
        arch, data, "a folder holding cifar-10-batches-py/ with CIFAR-10's python batches"
    )
    mean, std, normalisation = _normalisation(mean, std)
    model = _model(arch, 10, weights, seed)
    train_all, test = cifar10_data(path, mean, std)
    idx = split_indices(len(train_all), val_size, calib_size, seed)
    task = make_task(
        model,
        train=train_all.subset(idx["train"]),
        val=train_all.subset(idx["val"]).tensors(),  # read every episode: keep them as floats
        calib=train_all.subset(idx["calib"]).tensors(),
        test=test,
        example_input=torch.zeros(1, 3, 32, 32),
        num_classes=10,
        name=arch,
    )
    task.details["normalisation"] = normalisation
    return task


def _folder_task(
    arch: str,
    data: str | Path | None,
    weights: str | Path | None,
    image_size: int,
    val_size: int,
    calib_size: int,
    seed: int,
    mean: Sequence[float] | str,
    std: Sequence[float] | str,
) -> Task:
    path = _need_data(arch, data, "an ImageFolder root with train/CLASS/IMAGE and val/CLASS/IMAGE")
    mean, std, normalisation = _normalisation(mean, std)
    train_all, test, classes = image_folder_data(path, image_size, mean=mean, std=std)
    idx = split_indices(len(train_all), val_size, calib_size, seed)  # type: ignore[arg-type]
    model = _model(arch, len(classes), weights, seed)
    task = make_task(
        model,
        train=subset(train_all, idx["train"]),
        val=subset(train_all, idx["val"]),
        calib=subset(train_all, idx["calib"]),
        test=test,
        example_input=torch.zeros(1, 3, image_size, image_size),
        num_classes=len(classes),
        name=arch,
    )
    task.details["normalisation"] = normalisation
    return task


def resnet18_cifar_task(
    data: str | Path | None = None,
    weights: str | Path | None = None,
    val_size: int = 5000,
    calib_size: int = 512,
    seed: int = 0,
    mean: Sequence[float] | str = CIFAR10_MEAN,
    std: Sequence[float] | str = CIFAR10_STD,
) -> Task:
    """``resnet18-cifar``: torchvision resnet18 with a CIFAR stem on CIFAR-10 (see module doc).

    Args:
        data: Folder holding ``cifar-10-batches-py/`` (or that folder itself).
        weights: ``state_dict`` file of the model; None: random weights (warned).
        val_size: Held-out training images scored by the search.
        calib_size: Training images for BatchNorm re-calibration and activation ranges.
        seed: Seed of the split (and of the random initialisation without weights).
        mean: Per-channel normalisation mean the weights were trained with: three numbers, or
            text ``"0.485,0.456,0.406"`` / ``"[0.485, 0.456, 0.406]"`` (the public CIFAR
            ResNet-20/32/44/56 checkpoints were trained with ImageNet's, these numbers).
        std: Per-channel normalisation standard deviation, in the same forms.
    """
    return _cifar_task("resnet18-cifar", data, weights, val_size, calib_size, seed, mean, std)


def mobilenet_v2_cifar_task(
    data: str | Path | None = None,
    weights: str | Path | None = None,
    val_size: int = 5000,
    calib_size: int = 512,
    seed: int = 0,
    mean: Sequence[float] | str = CIFAR10_MEAN,
    std: Sequence[float] | str = CIFAR10_STD,
) -> Task:
    """``mobilenet_v2-cifar``: torchvision mobilenet_v2, stride-1 stem, on CIFAR-10.

    Arguments as for :func:`resnet18_cifar_task`.
    """
    return _cifar_task("mobilenet_v2-cifar", data, weights, val_size, calib_size, seed, mean, std)


def resnet20_cifar_task(
    data: str | Path | None = None,
    weights: str | Path | None = None,
    val_size: int = 5000,
    calib_size: int = 512,
    seed: int = 0,
    mean: Sequence[float] | str = CIFAR10_MEAN,
    std: Sequence[float] | str = CIFAR10_STD,
) -> Task:
    """``resnet20-cifar``: He et al.'s ResNet-20 on CIFAR-10.

    Arguments as for :func:`resnet18_cifar_task`.
    """
    return _cifar_task("resnet20-cifar", data, weights, val_size, calib_size, seed, mean, std)


def resnet18_imagenet_task(
    data: str | Path | None = None,
    weights: str | Path | None = None,
    image_size: int = 224,
    val_size: int = 3000,
    calib_size: int = 512,
    seed: int = 0,
    mean: Sequence[float] | str = IMAGENET_MEAN,
    std: Sequence[float] | str = IMAGENET_STD,
) -> Task:
    """``resnet18-imagenet``: torchvision resnet18 on an ImageFolder (one output per class folder).

    Args:
        data: ImageFolder root with ``train/`` and ``val/`` (``val/`` is the test split).
        weights: ``state_dict`` file; its classifier must match the number of class folders.
        image_size: Side of the center crop (after resizing the shorter side to 256/224 of it).
        val_size: Held-out training images scored by the search.
        calib_size: Training images for BatchNorm re-calibration and activation ranges.
        seed: Seed of the split (and of the random initialisation without weights).
        mean: Per-channel normalisation mean: three numbers or text ``"a,b,c"``.
        std: Per-channel normalisation standard deviation, in the same forms.
    """
    return _folder_task(
        "resnet18-imagenet", data, weights, image_size, val_size, calib_size, seed, mean, std
    )


def mobilenet_v2_imagenet_task(
    data: str | Path | None = None,
    weights: str | Path | None = None,
    image_size: int = 224,
    val_size: int = 3000,
    calib_size: int = 512,
    seed: int = 0,
    mean: Sequence[float] | str = IMAGENET_MEAN,
    std: Sequence[float] | str = IMAGENET_STD,
) -> Task:
    """``mobilenet_v2-imagenet``: torchvision mobilenet_v2 on an ImageFolder.

    Arguments as for :func:`resnet18_imagenet_task`.
    """
    return _folder_task(
        "mobilenet_v2-imagenet", data, weights, image_size, val_size, calib_size, seed, mean, std
    )
