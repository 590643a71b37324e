"""A model no agent was tuned on: LeNet-5 trained on the digits at 32x32.

The agents' defaults were chosen on the built-in digits tasks; a search method is only worth
something if it carries over. ``lenet5_digits_task`` is a task factory (``--task
benchmarks.unseen:lenet5_digits_task``, or the case ``lenet5`` of ``two_level_ablation``): LeCun
et al.'s LeNet-5 (1->6 5x5, 6->16 5x5, 400->120->84->10, max-pooling, no BatchNorm: 61,706
parameters, small enough that low widths hurt), trained deterministically on the digits'
training split upsampled to 32x32 (seed 0, seconds on a CPU), its weights cached under
``benchmarks/runs/unseen/`` so every search scores the same network. (A wider variant, 32-64-512
channels, kept 97.5% test at 1/256 of FP32 BOPs with plain prune-then-quantize: every agent tied.)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from jpq_env.tasks import Task
from jpq_env.tasks.digits import CHECKPOINT_SEED, NUM_CLASSES, digits_splits, train_model

__all__ = ["LeNet5", "lenet5_digits_task"]

CACHE = Path(__file__).parent / "runs" / "unseen"
SIZE = 32
EPOCHS = 10


class LeNet5(nn.Module):
    """LeNet-5 on ``1x32x32`` inputs: two 5x5 convolutions with max-pooling, three linear."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of a batch ``(N, 1, 32, 32)``."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc2(F.relu(self.fc1(torch.flatten(x, 1)))))
        logits: torch.Tensor = self.fc3(x)
        return logits


def lenet5_digits_task() -> Task:
    """LeNet-5 on the digits at 28x28: trained once (seed 0), then loaded from the cache."""
    splits = digits_splits(seed=CHECKPOINT_SEED, size=SIZE)
    torch.manual_seed(0)
    model = LeNet5()
    path = CACHE / f"lenet5-digits-{SIZE}px-{EPOCHS}ep.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        train_model(model, splits, epochs=EPOCHS, seed=0)
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model.eval()
    return Task(
        name="lenet5-digits",
        model=model,
        example_input=splits["val"].tensors[0][:1].clone(),
        train=splits["train"],
        val=splits["val"],
        calib=splits["calib"],
        test=splits["test"],
        num_classes=NUM_CLASSES,
        details={"model": f"LeNet-5 trained {EPOCHS} epochs on the digits at {SIZE}x{SIZE}"},
    )
