"""``make_task``: a user's model and data become a validated task, usable by the env and agents."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from jpq_env import LocalEvaluator, Policy, TaskError, make_task
from jpq_env.envs import JPQEnv
from jpq_env.tasks.user import split_indices
from tests.nets import PlainNet, randomize_bn


def _data(n: int, seed: int = 0, classes: int = 5) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)
    )


class _Pairs(Dataset):
    """A plain map-style dataset (no tensors to slice, no targets attribute)."""

    def __init__(self, data: TensorDataset, label_shift: int = 0) -> None:
        self.data = data
        self.shift = label_shift

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        x, y = self.data[i]
        return x, int(y) + self.shift


def test_splits_are_carved_from_train_deterministically():
    train, test = _data(100), _data(20, seed=1)
    model = randomize_bn(PlainNet())
    task = make_task(model, train=train, test=test, val_size=0.2, calib_size=16, seed=3)
    again = make_task(model, train=train, test=test, val_size=0.2, calib_size=16, seed=3)
    assert (len(task.train), len(task.val), len(task.calib), len(task.test)) == (80, 20, 16, 20)
    assert task.num_classes == 5 and task.example_input.shape == (1, 3, 8, 8)
    assert torch.equal(task.val.tensors[0], again.val.tensors[0])
    idx = split_indices(100, 0.2, 16, 3)
    assert torch.equal(task.val.tensors[0], train.tensors[0][idx["val"]])
    assert torch.equal(task.train.tensors[0], train.tensors[0][idx["train"]])
    assert not set(idx["val"]) & set(idx["train"]) and set(idx["calib"]) <= set(idx["train"])
    assert set(idx["val"]) | set(idx["train"]) == set(range(100))
    assert torch.equal(task.calib.tensors[0], train.tensors[0][idx["calib"]])
    other = make_task(model, train=train, test=test, val_size=0.2, calib_size=16, seed=4)
    assert not torch.equal(other.val.tensors[0], task.val.tensors[0])
    assert task.model is model  # read, never copied into the task or written


def test_given_splits_loaders_and_pairs_are_taken_as_they_are():
    model = randomize_bn(PlainNet())
    val = _data(30, seed=2)
    task = make_task(
        model,
        train=DataLoader(_Pairs(_data(40)), batch_size=7, shuffle=True),
        val=val,
        calib=(val.tensors[0][:10], val.tensors[1][:10]),
        test=_Pairs(_data(12, seed=5)),
        num_classes=5,
        name="mine",
    )
    assert task.val is val and len(task.calib) == 10 and isinstance(task.train, _Pairs)
    assert task.name == "mine"
    ev = LocalEvaluator(task)
    assert 0.0 <= ev.accuracy(Policy.uniform(ev.graph, 4, 8)) <= 1.0
    assert 0.0 <= ev.test_accuracy(None) <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val": _data(0)}, "the val split is empty"),
        (
            {"test": (torch.zeros(3, 3, 8, 8), torch.zeros(2, dtype=torch.long))},
            "3 inputs but 2 labels",
        ),
        (
            {
                "val": _data(5),
                "calib": TensorDataset(torch.zeros(4, 3, 9, 9), torch.zeros(4, dtype=torch.long)),
            },
            r"sample 0 of the calib split has an input of shape \(3, 9, 9\) and dtype "
            r"torch.float32, but the model is traced with samples of shape \(3, 8, 8\)",
        ),
        ({"num_classes": 7}, "num_classes is 7 but the model outputs 5 logits"),
        (
            {"val": _data(10, classes=9)},
            r"the val split has labels in \[\d, [5-8]\], outside \[0, 5\)",
        ),
        (
            {"test": _Pairs(_data(4), label_shift=-9)},
            r"the test split has labels in \[-\d, -\d\]",
        ),
        ({"val": TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4))}, "float32 labels"),
        (
            {"example_input": torch.zeros(1, 1, 8, 8)},
            r"sample 0 of the train split has an input of shape \(3, 8, 8\)",
        ),
        ({"val_size": 100}, "val_size 100 leaves no held-out or no training data"),
        ({"train": [1, 2, 3]}, r"sample 0 of the train split is an int, not an \(input, label\)"),
        ({"train": 3}, "must be a map-style Dataset .* got int"),
        ({"train": DataLoader(_data(8), collate_fn=lambda b: b)}, "custom collate_fn"),
    ],
)
def test_bad_inputs_are_named(kwargs, message):
    args = {"train": _data(40), "test": _data(10, seed=1)} | kwargs
    with pytest.raises(TaskError, match=message):
        make_task(randomize_bn(PlainNet()), **args)


def test_model_that_does_not_fit_the_data_is_named():
    message = r"cannot run on sample 0 of the val split .*\(shape \(1, 3, 8, 8\)"
    with pytest.raises(TaskError, match=message):
        make_task(nn.Sequential(nn.Flatten(), nn.Linear(10, 2)), train=_data(20), test=_data(5))
    with pytest.raises(TaskError, match=r"logits shaped \(batch, classes\), got \(1, 8, 8, 8\)"):
        make_task(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)), train=_data(20), test=_data(5))
    with pytest.raises(TaskError, match=r"model must be a torch\.nn\.Module"):
        make_task("resnet", train=_data(20), test=_data(5))  # type: ignore[arg-type]


def test_user_model_runs_in_the_env_and_stays_untouched():
    model = randomize_bn(PlainNet()).train()  # the user's mode must survive too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = make_task(model, train=_data(60), test=_data(20, seed=1), val_size=20, calib_size=16)
    env = JPQEnv(task=task, budget_bops=1 / 16)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(
            rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        )
    assert 0.0 <= info["accuracy"] <= 1.0 and info["bops_ratio"] <= 1 / 16 + 1e-12
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
