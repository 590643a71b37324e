"""Bad tasks and data, each refused with an error naming the problem.

Part of the catalogue of bad inputs (``pytest tests -k bad_inputs --collect-only -q`` lists it):
user task factories (``tests.bad_tasks``), ``make_task``'s arguments and data (splits given as
lists of samples, samples of a shape or dtype the model cannot take, named by split and sample
index; a held-out split cut from train, warned about), CIFAR-10 batches and weights files.
"""

# ruff: noqa: E501 - the catalogue is a table, one case per line
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from jpq_env import GraphError, Task, TaskError, load_task, make_task
from jpq_env.envs import JPQEnv


def _good_task() -> Task:
    return load_task("tests.bad_tasks:good")


def _data(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 4)


MAKE_TASK = [
    pytest.param({"val_size": True}, r"val_size must be a count of samples \(an integer >= 1\) or a fraction in \(0, 1\), got True", id="make-task-val-size-bool"),
    pytest.param({"val_size": float("nan")}, "val_size must be a count of samples .* got nan", id="make-task-val-size-nan"),
    pytest.param({"val_size": "10"}, "val_size must be a count of samples .* got '10'", id="make-task-val-size-string"),
    pytest.param({"calib_size": True}, "calib_size must be an integer >= 1, got True", id="make-task-calib-size-bool"),
    pytest.param({"calib_size": 2.5}, "calib_size must be an integer >= 1, got 2.5", id="make-task-calib-size-float"),
    pytest.param({"seed": "0"}, r"seed must be an integer in \[0, 2\*\*64 - 1\], got '0'", id="make-task-seed-string"),
    pytest.param({"seed": 2**70}, r"seed must be an integer in \[0, 2\*\*64 - 1\], got 1180591620717411303424", id="make-task-seed-overflow"),
    pytest.param({"seed": -1}, r"seed must be an integer in \[0, 2\*\*64 - 1\], got -1", id="make-task-seed-negative"),
    pytest.param({"seed": 2**64}, r"seed must be an integer in \[0, 2\*\*64 - 1\]", id="make-task-seed-65-bits"),
    pytest.param({"num_classes": True}, "num_classes must be an integer >= 1 or None, got True", id="make-task-num-classes-bool"),
    pytest.param({"name": 3}, "name must be a non-empty string, got 3", id="make-task-name-int"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "message"), MAKE_TASK)
def test_bad_make_task_argument_is_named(kwargs, message):
    args = {"train": _data(40), "test": _data(8, seed=1), "val_size": 8, "calib_size": 8} | kwargs
    with pytest.raises(TaskError, match=message):
        make_task(_good_task().model, **args)


def _pairs(n: int, seed: int = 0, **at: Any) -> list[Any]:
    """``n`` (input, label) samples as a list; ``at`` replaces sample ``int(key[1:])`` (``s3=...``)."""
    data = _data(n, seed)
    samples: list[Any] = [(x, int(y)) for x, y in data]
    for key, sample in at.items():
        samples[int(key[1:])] = sample
    return samples


_X = torch.zeros(3, 8, 8)


# Splits given as lists of samples, and samples the model cannot take: the split and the sample.
MAKE_TASK_DATA = [
    pytest.param({"train": _pairs(40, s3=(torch.zeros(3, 9, 9), 1))}, r"sample 3 of the train split has an input of shape \(3, 9, 9\) and dtype torch.float32, but sample 0 has \(3, 8, 8\)", id="data-list-sample-wrong-shape"),
    pytest.param({"test": _pairs(8, s5=(_X.double(), 1))}, r"sample 5 of the test split has an input of shape \(3, 8, 8\) and dtype torch.float64, but sample 0 has \(3, 8, 8\) and torch.float32", id="data-list-sample-wrong-dtype"),
    pytest.param({"train": _pairs(40, s2=_X)}, r"sample 2 of the train split is a tensor of shape \(3, 8, 8\), not an \(input, label\) pair", id="data-list-sample-not-a-pair"),
    pytest.param({"train": _pairs(40, s0=(np.zeros((3, 8, 8)), 1))}, "sample 0 of the train split has an input of type ndarray: inputs must be tensors", id="data-list-input-not-a-tensor"),
    pytest.param({"test": _pairs(8, s1=(_X, torch.tensor([1, 2])))}, r"sample 1 of the test split has a label of shape \(2,\): one class index per sample", id="data-list-label-not-a-class"),
    pytest.param({"test": _pairs(8, s1=(_X, "cat"))}, "sample 1 of the test split has a label of str", id="data-list-label-string"),
    pytest.param({"test": []}, "the test split is empty", id="data-list-empty"),
    pytest.param({"test": (np.zeros((4, 3, 8, 8)), np.zeros(4))}, r"the test split as a pair \(inputs, labels\) must be two tensors, got ndarray and ndarray", id="data-pair-of-arrays"),
    pytest.param({"test": {"x": 1}}, "got dict: not a torch.utils.data.Dataset, tuple or list", id="data-dict"),
    pytest.param({"test": 3}, "got int: it has no __len__ and __getitem__", id="data-int"),
    pytest.param({"train": (_data(40).tensors[0][:, 0], _data(40).tensors[1]), "test": (torch.zeros(4, 8, 8), torch.zeros(4, dtype=torch.long))}, r"cannot run on sample 0 of the val split \(sample \d+ of train, which val is cut from\) as a batch of one \(shape \(1, 8, 8\), dtype torch.float32\).*its first layer '0' \(Conv2d, 3 input channels\) takes torch.float32 inputs shaped \(batch, 3, height, width\), so each sample should be \(3, height, width\)", id="data-samples-miss-the-channel-axis"),
    pytest.param({"train": (torch.zeros(40, 3, 8, 8, dtype=torch.uint8), torch.arange(40) % 4), "test": (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))}, r"cannot run on sample 0 of the val split .*dtype torch.uint8\).*takes torch.float32 inputs .*: convert the inputs to torch.float32", id="data-uint8-inputs"),
    pytest.param({"test": (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))}, r"sample 0 of the test split has an input of shape \(3, 8, 8\) and dtype torch.uint8, but the model is traced with samples of shape \(3, 8, 8\) and dtype torch.float32", id="data-one-split-of-another-dtype"),
    pytest.param({"example_input": torch.zeros(1, 3, 8, 8, dtype=torch.float64), "test": (torch.zeros(4, 3, 8, 8, dtype=torch.float64), torch.zeros(4, dtype=torch.long)), "val": (torch.zeros(4, 3, 8, 8, dtype=torch.float64), torch.zeros(4, dtype=torch.long)), "train": (torch.zeros(40, 3, 8, 8, dtype=torch.float64), torch.arange(40) % 4)}, r"cannot run on example_input \(shape \(1, 3, 8, 8\), dtype torch.float64\).*convert the inputs to torch.float32", id="data-example-input-of-another-dtype"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "message"), MAKE_TASK_DATA)
def test_bad_make_task_data_is_named(kwargs, message):
    args = {"train": _data(40), "test": _data(8, seed=1), "val_size": 8, "calib_size": 8} | kwargs
    with pytest.raises(TaskError, match=message):
        make_task(_good_task().model, **args)


def test_the_make_task_data_control_is_good():
    """Splits as lists of samples (Python or NumPy labels) are taken, stacked, as they are."""
    train = [(x, np.int64(y)) for x, y in _pairs(40)]
    with pytest.warns(UserWarning, match="val="):
        task = make_task(
            _good_task().model, train=train, test=_pairs(8, seed=1), val_size=8, calib_size=8
        )
    assert (len(task.train), len(task.val), len(task.test)) == (32, 8, 8)
    assert torch.equal(task.test.tensors[0], _data(8, seed=1).tensors[0])


def test_held_out_split_cut_from_train_is_warned_once():
    """Without val=, the search scores data cut from train: one warning naming the option."""
    args = {"train": _data(40), "test": _data(8, seed=1), "val_size": 8, "calib_size": 8}
    with pytest.warns(UserWarning) as caught:
        make_task(_good_task().model, **args)
    about_val = [w for w in caught if "val=" in str(w.message)]
    assert len(about_val) == 1 and about_val[0].filename == __file__  # points at the caller
    assert "held-out split the search scores (8 samples) is cut from train" in str(
        about_val[0].message
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_task(_good_task().model, **args, val=_data(8, seed=2))  # val given: nothing to say


def test_make_task_takes_numpy_sizes():
    task = make_task(
        _good_task().model, train=_data(40), test=_data(8, seed=1), val_size=np.float32(0.25),
        calib_size=np.int64(8),
    )  # fmt: skip
    assert (len(task.val), len(task.train), len(task.calib)) == (10, 30, 8)


TASKS = [
    pytest.param("no_such_package_xyz.tasks:make", TaskError, "cannot import module 'no_such_package_xyz.tasks'", id="factory-unimportable"),
    pytest.param("tests.bad_tasks:missing", TaskError, "module 'tests.bad_tasks' has no function 'missing'", id="factory-missing"),
    pytest.param("tests.bad_tasks:CLASSES", TaskError, "has no function 'CLASSES'", id="factory-not-callable"),
    pytest.param("tests.bad_tasks:returns_a_tuple", TaskError, "returned tuple, expected jpq_env.Task", id="factory-returns-tuple"),
    pytest.param("tests.bad_tasks:raises", TaskError, "factory 'tests.bad_tasks:raises' failed: RuntimeError: the dataset server is down", id="factory-raises"),
    pytest.param("tests.bad_tasks:no_compressible_layers", GraphError, "no compressible layer", id="model-no-compressible-layers"),
    pytest.param("tests.bad_tasks:untraceable", GraphError, "cannot trace the model with torch.fx", id="model-untraceable"),
    pytest.param("tests.bad_tasks:wrong_num_classes", TaskError, r"outputs shape \(8, 4\) on the calib split, expected \(batch, 10\)", id="model-wrong-num-classes"),
    pytest.param("tests.bad_tasks:wrong_input_shape", TaskError, r"cannot run on the val split \(inputs of shape \(8, 1, 8, 8\)\)", id="data-wrong-shape"),
    pytest.param("tests.bad_tasks:labels_out_of_range", TaskError, r"val split has labels outside \[0, 4\)", id="data-labels-out-of-range"),
    pytest.param("tests.bad_tasks:float_labels", TaskError, r"calib split has torch.float32 labels", id="data-float-labels"),
    pytest.param("tests.bad_tasks:empty_val", TaskError, "the val split is empty", id="data-empty"),
    pytest.param("tests.bad_tasks:inputs_only", TaskError, r"calib split must hold \(inputs, labels\), got 1 tensors", id="data-no-labels"),
]  # fmt: skip


def test_the_bad_task_control_is_good():
    env = JPQEnv(task="tests.bad_tasks:good", budget_bops=0.5)
    env.reset(seed=0)
    done = False
    while not done:
        done = env.step(np.zeros(env.action_size, dtype=np.float32))[2]


@pytest.mark.parametrize(("spec", "error", "message"), TASKS)
def test_bad_task_is_named(spec, error, message):
    with pytest.raises(error, match=message):
        JPQEnv(task=spec, budget_bops=0.5)


def _cifar(root: Path, data: Any = None, labels: Any = None) -> Path:
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, size=(12, 3072), dtype=np.uint8) if data is None else data,
            "labels": [int(v) for v in rng.integers(0, 10, size=12)] if labels is None else labels,
        }
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)
    return root


CIFAR_BATCHES = [
    pytest.param({"data": np.full((12, 3072), 0.5, dtype=np.float32)}, r"'data' must be uint8 pixels \(0-255\), got float32", id="cifar-float-pixels"),
    pytest.param({"data": np.full((12, 3072), 765, dtype=np.int64)}, "'data' must be uint8 pixels", id="cifar-int64-pixels"),
    pytest.param({"labels": [3.7] * 12}, "'labels' must be integers, got float64", id="cifar-float-labels"),
    pytest.param({"labels": ["x"] * 12}, "'labels' must be integers", id="cifar-string-labels"),
]  # fmt: skip


@pytest.mark.parametrize(("batch", "message"), CIFAR_BATCHES)
def test_a_bad_cifar_batch_is_named(tmp_path, batch, message):
    from jpq_env.tasks.image_data import cifar10_data

    root = _cifar(tmp_path, **batch)
    with pytest.raises(TaskError, match=rf"CIFAR-10 batch '.*data_batch_1': {message}"):
        cifar10_data(root)


@pytest.mark.parametrize("option", ["std=1,1,1e-300", "mean=1e308,0,0"])
def test_channel_statistics_beyond_float32_are_refused(option):
    from jpq_env.tasks.vision import channel_stats

    name, _, value = option.partition("=")
    with pytest.raises(TaskError, match=f"{name} must be three"):
        channel_stats(value, name)


def test_a_weights_file_with_objects_is_refused_in_one_line(tmp_path):
    import os

    from jpq_env.tasks.vision import _state_dict

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(TaskError) as err:
        _state_dict(tmp_path / "evil.pt")
    assert "refused, nothing was executed" in str(err.value)
    assert "weights_only` set to `False`" not in str(err.value) and "\n" not in str(err.value)
