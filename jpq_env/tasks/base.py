"""The task: a model together with the data splits a compression search needs.

A search never touches the test split: the accuracy proxy reads ``val`` (a held-out part of the
training data) and re-calibrates BatchNorm on ``calib``; ``test`` is for final reports only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from jpq_env.errors import TaskError

__all__ = ["Task", "TaskError"]


@dataclass
class Task:
    """A model and its data, as the compression core and the environment consume them.

    Attributes:
        name: Short identifier used in logs and policy files.
        model: The trained FP32 network. Nothing in jpq-env ever writes to its tensors.
        example_input: One input batch (batch size 1 is enough) used to trace the model.
        train: Training split (for fine-tuning only; never used to score a policy).
        val: Held-out split of the training data, scored by the accuracy proxy during search.
        calib: Small split used for BatchNorm re-calibration and activation ranges.
        test: Test split, used only for final reports.
        num_classes: Number of classes; labels must lie in ``[0, num_classes)``.
        details: Facts about how the task was built that reports show (e.g. the input
            normalisation a vision task applied), as short strings.
    """

    name: str
    model: nn.Module
    example_input: torch.Tensor
    train: Dataset
    val: Dataset
    calib: Dataset
    test: Dataset
    num_classes: int
    details: dict[str, str] = field(default_factory=dict)
