"""The ResNet-20 / CIFAR-10 workload: data in torchvision's layout and a checkpoint that fits it.

The benchmarks measure the project on the compression literature's canonical workload (AMC, HAQ,
Galen and Distiller all report ResNet-20 on CIFAR-10). They read CIFAR-10 in torchvision's own
layout (``ROOT/cifar-10-batches-py/``, what users have after torchvision's download) and a
``state_dict`` file, through the built-in ``resnet20-cifar`` task; nothing in them depends on where
the data came from. This script only *prepares* that workload from the copy this project's
machines hold (``../shared/data``: CIFAR-10 as JPEG files and the public ResNet-20 checkpoint):

1. ``batches``: decode the JPEG folders (``train/CLASS/NNNN.jpg``, ``test/CLASS/NNNN.jpg``) into
   CIFAR-10 python batches (five training batches of 10,000 images and a test batch, dicts of a
   ``(N, 3072)`` uint8 array and a label list, exactly the format of ``cifar-10-python.tar.gz``),
   classes in CIFAR-10's order, images in a seeded order;
2. ``finetune``: the public checkpoint was trained on the original images and loses about 11
   points on the JPEG copy (81.0% against 91.78%). One epoch of SGD on the task's *training*
   split (the 5,000 held-out images the search scores and the test images are never trained on;
   lr 0.01, momentum 0.9, weight decay 5e-4, batch 128, flips and 4-pixel shifts, ImageNet's
   normalisation, as the checkpoint was trained) adapts it to the JPEG images. Deterministic on
   the CPU: a seeded generator draws the order and the augmentation, threads are fixed.

Run with torchvision's CIFAR-10 instead, skip this script: point the benchmarks' ``--data`` at
the folder holding ``cifar-10-batches-py/`` and ``--weights`` at the public checkpoint, with
``--task-option mean=0.485,0.456,0.406 --task-option std=0.229,0.224,0.225``.

    python -m benchmarks.cifar_workload                  # both steps, into benchmarks/data/
    python -m benchmarks.cifar_workload --quick          # a smoke run on a few images, in a
                                                         # temporary folder (CI)

Writes ``DATA/cifar-10-batches-py/``, ``DATA/resnet20-jpeg-ft.pt`` and its record
``DATA/resnet20-jpeg-ft.json`` (FP32 test accuracy before and after, sha256), and, unless
``--quick``, ``benchmarks/results/cifar_workload.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.common import configure_threads, write_result

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = Path(__file__).resolve().parent / "data"
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
"""The normalisation the public checkpoint was trained with (task options of resnet20-cifar)."""
WEIGHTS_NAME = "resnet20-jpeg-ft.pt"


def task_options(data: Path, weights: Path | None = None, **extra: Any) -> dict[str, Any]:
    """Options of the ``resnet20-cifar`` task on this workload (ImageNet's normalisation)."""
    options: dict[str, Any] = {"data": str(data), **IMAGENET, **extra}
    options["weights"] = str(weights if weights is not None else data / WEIGHTS_NAME)
    return options


def _decode(member: tarfile.TarInfo, archive: tarfile.TarFile) -> np.ndarray:
    from PIL import Image

    handle = archive.extractfile(member)
    assert handle is not None
    with Image.open(io.BytesIO(handle.read())) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if pixels.shape != (32, 32, 3):
        raise ValueError(f"{member.name}: expected a 32x32 RGB image, got {pixels.shape}")
    return pixels.transpose(2, 0, 1).reshape(-1)  # CIFAR's row layout: R plane, G plane, B plane


def make_batches(
    archive_path: Path, out: Path, limit: int | None = None, seed: int = 0
) -> dict[str, int]:
    """Decode the JPEG archive into CIFAR-10 python batches under ``out/cifar-10-batches-py``.

    Args:
        archive_path: ``cifar10-jpeg.tar.gz`` (``train/CLASS/*.jpg``, ``test/CLASS/*.jpg``).
        out: Folder that receives ``cifar-10-batches-py/``.
        limit: Images per class and split (a quick run); None: all of them.
        seed: Seed of the order of the images within each split.

    Returns:
        Images written per split.
    """
    images: dict[str, list[tuple[int, str, np.ndarray]]] = {"train": [], "test": []}
    # One pass over the stream (random access into a .tar.gz decompresses from the start again).
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(archive_path, mode="r|*") as archive:
        for member in archive:
            if not member.isfile() or not member.name.endswith(".jpg"):
                continue
            split, cls, _ = Path(member.name).parts[-3:]
            if split not in images or cls not in CLASSES:
                continue
            if limit is not None and taken.get((split, cls), 0) >= limit:
                continue  # a quick run: the first files of each class in the archive's order
            taken[(split, cls)] = taken.get((split, cls), 0) + 1
            images[split].append((CLASSES.index(cls), member.name, _decode(member, archive)))
    where = out / "cifar-10-batches-py"
    where.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    counts = {}
    for split, items in images.items():
        items.sort(key=lambda t: (t[0], t[1]))
        order = torch.randperm(len(items), generator=g).numpy()
        data = np.stack([items[i][2] for i in order])
        labels = [items[i][0] for i in order]
        names = [Path(items[i][1]).name.encode() for i in order]
        parts = np.array_split(np.arange(len(order)), 5) if split == "train" else [None]
        for number, part in enumerate(parts, 1):
            sel = slice(None) if part is None else part
            batch = {
                b"batch_label": f"{split} batch {number} (from the JPEG copy)".encode(),
                b"labels": labels[sel] if part is None else [labels[i] for i in part],
                b"data": data[sel],
                b"filenames": names[sel] if part is None else [names[i] for i in part],
            }
            name = "test_batch" if part is None else f"data_batch_{number}"
            with (where / name).open("wb") as f:
                pickle.dump(batch, f, protocol=4)
        counts[split] = len(items)
    return counts


def _augment(pixels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and 4-pixel shifts (zero padding) of a ``uint8`` batch."""
    n = pixels.shape[0]
    flip = torch.rand(n, generator=g) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(3), pixels)
    padded = nn.functional.pad(pixels, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=g)
    dy = torch.randint(0, 9, (n,), generator=g)
    return torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])


def finetune_checkpoint(
    data: Path,
    checkpoint: Path,
    out: Path,
    epochs: int = 1,
    lr: float = 0.01,
    batch_size: int = 128,
    seed: int = 0,
    task_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune the checkpoint on the task's training split; write it and its record.

    Returns:
        The record (also written beside the weights as JSON).
    """
    from jpq_env import LocalEvaluator, load_task

    task = load_task("resnet20-cifar", **task_options(data, checkpoint, **(task_extra or {})))
    before = LocalEvaluator(task, device="cpu").test_accuracy(None)
    model = task.model
    train = task.train
    from jpq_env.tasks.image_data import ImageTensors

    assert isinstance(train, ImageTensors)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=g)
        for first in range(0, len(order), batch_size):
            idx = order[first : first + batch_size]
            x = train._normalise(_augment(train.images[idx], g))
            loss = nn.functional.cross_entropy(model(x), train.targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    tuned = load_task("resnet20-cifar", **task_options(data, out, **(task_extra or {})))
    after = LocalEvaluator(tuned, device="cpu").test_accuracy(None)
    record = {
        "weights": out.name,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "from": checkpoint.name,
        "train_images": len(train),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
        "test_accuracy_before": before,
        "test_accuracy_after": after,
        "test_images": len(task.test),  # type: ignore[arg-type]
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=SHARED, help="folder of the JPEG archive")
    parser.add_argument(
        "--out", type=Path, default=None, help="where the workload goes (default benchmarks/data)"
    )
    parser.add_argument("--quick", action="store_true", help="20 images per class, no results")
    args = parser.parse_args()
    configure_threads()
    if args.out is None:  # a quick run never touches the real workload
        args.out = Path(tempfile.mkdtemp(prefix="jpq-cifar-")) if args.quick else DATA
    limit = 20 if args.quick else None
    counts = make_batches(args.shared / "cifar10-jpeg.tar.gz", args.out, limit)
    extra = {"val_size": 50, "calib_size": 32} if args.quick else {}
    record = finetune_checkpoint(
        args.out, args.shared / "resnet20-12fca82f.th", args.out / WEIGHTS_NAME, task_extra=extra
    )
    print(json.dumps({"images": counts, **record}, indent=1))
    if args.quick:
        return
    write_result(
        "cifar_workload",
        "\n".join(
            [
                "# The ResNet-20 / CIFAR-10 workload",
                "",
                f"CIFAR-10 as JPEG files ({counts['train']:,} training, {counts['test']:,} test "
                "images) decoded into torchvision's python batches; the public ResNet-20 "
                "checkpoint (`resnet20-12fca82f.th`, 91.78% on the original test set) fine-tuned "
                f"for {record['epochs']} epoch on the {record['train_images']:,} training images "
                "of the `resnet20-cifar` task (the 5,000 held-out images the search scores and "
                "the test images excluded), SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch "
                "128, flips and 4-pixel shifts, ImageNet normalisation.",
                "",
                "| | FP32 test accuracy (10,000 JPEG test images) |",
                "|---|---|",
                f"| public checkpoint | {100 * record['test_accuracy_before']:.2f}% |",
                f"| fine-tuned (`{record['weights']}`) | "
                f"{100 * record['test_accuracy_after']:.2f}% |",
                "",
                f"Fine-tuning took {record['seconds']:.0f} s on {record['threads']} threads; "
                f"sha256 of the weights `{record['sha256']}` (deterministic for one CPU and torch "
                "build; another CPU gives other last bits, and the accuracy may move by a few "
                "images: the benchmarks on this workload use the weights prepared beside them).",
            ]
        ),
    )


if __name__ == "__main__":
    main()
