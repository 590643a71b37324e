"""Built-in vision tasks on tiny data sets written here in torchvision's on-disk formats."""

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jpq_agents.cli import main
from jpq_env import LayerGraph, LocalEvaluator, Policy, TaskError, load_task
from jpq_env.tasks.image_data import CIFAR10_MEAN, CIFAR10_STD, cifar10_data
from jpq_env.tasks.vision import ARCHITECTURES, ResNet20
from tests.nets import ResNet20 as ReferenceResNet20

PER_BATCH = 12  # images per CIFAR batch file: 60 training images, 12 test images


def _write_cifar(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=PER_BATCH)]
        with (folder / name).open("wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        written[name] = (data, labels)
    return written


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cifar")
    return root, _write_cifar(root)


def _no_weights_warning():
    return pytest.warns(UserWarning, match="randomly initialised, so a search on it is meaningless")


def test_cifar_batches_are_read_pixel_for_pixel(cifar_root):
    root, written = cifar_root
    train, test = cifar10_data(root)
    assert len(train) == 5 * PER_BATCH and len(test) == PER_BATCH
    data, labels = written["data_batch_2"]
    i = PER_BATCH + 3  # fourth image of the second batch
    x, y = train[i]
    pixels = torch.from_numpy(data[3].reshape(3, 32, 32).astype(np.float32)) / 255
    mean = torch.tensor(CIFAR10_MEAN).reshape(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).reshape(3, 1, 1)
    torch.testing.assert_close(x, (pixels - mean) / std)
    assert int(y) == labels[3]
    assert test.targets.tolist() == written["test_batch"][1]
    # The folder itself works as well as its parent.
    assert len(cifar10_data(root / "cifar-10-batches-py")[0]) == 5 * PER_BATCH


def test_cifar_task_splits_are_disjoint_seeded_and_labelled(cifar_root):
    root, written = cifar_root
    with _no_weights_warning():
        task = load_task("resnet20-cifar", data=str(root), val_size=10, calib_size=8)
    with _no_weights_warning():
        again = load_task("resnet20-cifar", data=str(root), val_size=10, calib_size=8)
    assert (len(task.train), len(task.val), len(task.calib), len(task.test)) == (50, 10, 8, 12)
    x_val = task.val.tensors[0]
    torch.testing.assert_close(x_val, again.val.tensors[0], rtol=0, atol=0)  # same seed
    train_x = torch.stack([task.train[i][0] for i in range(len(task.train))])
    # val is held out: none of its images is in train; calib images all are.
    assert not any((train_x == v).flatten(1).all(1).any() for v in x_val)
    assert all((train_x == c).flatten(1).all(1).any() for c in task.calib.tensors[0])
    all_labels = sorted(v for i in range(1, 6) for v in written[f"data_batch_{i}"][1])
    split_labels = sorted(task.val.tensors[1].tolist() + [int(task.train[i][1]) for i in range(50)])
    assert split_labels == all_labels
    with _no_weights_warning():
        other = load_task("resnet20-cifar", data=str(root), val_size=10, calib_size=8, seed=1)
    assert not torch.equal(other.val.tensors[1], task.val.tensors[1]) or not torch.equal(
        other.val.tensors[0], x_val
    )
    # The random initialisation is seeded too: the same model in every process.
    for a, b in zip(
        task.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18-cifar", "mobilenet_v2-cifar", "resnet20-cifar"])
def test_cifar_tasks_load_user_weights_and_evaluate(cifar_root, tmp_path, name):
    root, _ = cifar_root
    torch.manual_seed(5)
    trained = ARCHITECTURES[name](10)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # weights given: no warning
        task = load_task(name, data=str(root), weights=str(path), val_size=10, calib_size=8)
    for key, value in trained.state_dict().items():
        assert torch.equal(task.model.state_dict()[key], value), key
    assert task.example_input.shape == (1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            task.model(task.val.tensors[0]), trained.eval()(task.val.tensors[0])
        )


@pytest.mark.slow
def test_cifar_stems_and_resnet20_architecture():
    r18 = ARCHITECTURES["resnet18-cifar"](10)
    g = LayerGraph.from_module(r18, torch.zeros(1, 3, 32, 32))
    first = g.layers[0]
    assert (first.kernel, first.stride, first.out_hw) == ((3, 3), (1, 1), (32, 32))
    mnv2 = LayerGraph.from_module(
        ARCHITECTURES["mobilenet_v2-cifar"](10), torch.zeros(1, 3, 32, 32)
    )
    assert mnv2.layers[0].stride == (1, 1) and mnv2.layers[-1].kind == "linear"
    resnet20 = LayerGraph.from_module(ResNet20(), torch.zeros(1, 3, 32, 32))
    assert resnet20.total_macs == 40_551_040  # ResNet-20 on CIFAR: the published 40.55M MACs
    reference = LayerGraph.from_module(ReferenceResNet20(), torch.zeros(1, 3, 32, 32))
    assert [x.macs for x in resnet20.layers] == [x.macs for x in reference.layers]


def test_wrong_weights_are_named(cifar_root, tmp_path):
    root, _ = cifar_root
    path = tmp_path / "r18.pt"
    torch.save(ARCHITECTURES["resnet18-imagenet"](10).state_dict(), path)  # 7x7 stem
    with pytest.raises(
        TaskError, match=r"do not fit a 'resnet18-cifar'.*wrong shape: conv1.weight"
    ):
        load_task("resnet18-cifar", data=str(root), weights=str(path))
    torch.save(ResNet20().state_dict(), path)
    with pytest.raises(TaskError, match=r"missing: .*unexpected: "):
        load_task("resnet18-cifar", data=str(root), weights=str(path))
    with pytest.raises(TaskError, match=r"weights file '.*nope.pt' does not exist: put there"):
        load_task("resnet20-cifar", data=str(root), weights=str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TaskError, match=r"cannot load weights .*junk.pt.: not a torch checkpoint"):
        load_task("resnet20-cifar", data=str(root), weights=str(tmp_path / "junk.pt"))


_IGNORE_RANDOM = pytest.mark.filterwarnings("ignore:task .* has no weights")


@_IGNORE_RANDOM
def test_missing_or_broken_cifar_data_is_named(tmp_path):
    with pytest.raises(TaskError, match=r"needs data=PATH \(--data PATH\)"):
        load_task("resnet20-cifar")
    missing = tmp_path / "nowhere"
    with pytest.raises(
        TaskError,
        match=r"data path '.*nowhere' does not exist: expected CIFAR-10 python batches "
        r"data_batch_1..5 and test_batch in .*nowhere/cifar-10-batches-py",
    ):
        load_task("resnet20-cifar", data=str(missing))
    _write_cifar(tmp_path / "partial")
    (tmp_path / "partial" / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(TaskError, match="is incomplete: missing data_batch_4"):
        cifar10_data(tmp_path / "partial")
    _write_cifar(tmp_path / "evil")
    with (tmp_path / "evil" / "cifar-10-batches-py" / "test_batch").open("wb") as f:
        pickle.dump({"data": Path("x"), "labels": [0]}, f)  # a class, not an array
    with pytest.raises(TaskError, match="refusing to load pathlib"):
        cifar10_data(tmp_path / "evil")
    _write_cifar(tmp_path / "good")
    with pytest.raises(TaskError, match=r"val_size 60 leaves no held-out or no training data"):
        load_task("resnet20-cifar", data=str(tmp_path / "good"), val_size=60)


def _write_folder(root: Path, classes: list[str], per_class: dict[str, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


@pytest.mark.slow
def test_image_folder_task(tmp_path):
    _write_folder(tmp_path, ["cat", "dog", "eel"], {"train": 5, "val": 2})
    with _no_weights_warning():
        task = load_task(
            "mobilenet_v2-imagenet", data=str(tmp_path), image_size=32, val_size=3, calib_size=4
        )
    assert task.num_classes == 3 and task.example_input.shape == (1, 3, 32, 32)
    assert (len(task.train), len(task.val), len(task.calib), len(task.test)) == (12, 3, 4, 6)
    x, y = task.test[5]
    assert x.shape == (3, 32, 32) and int(y) == 2  # val/eel/1.png
    assert sorted(int(task.test[i][1]) for i in range(6)) == [0, 0, 1, 1, 2, 2]
    ev = LocalEvaluator(task)
    assert 0.0 <= ev.accuracy(Policy.uniform(ev.graph, 8, 8)) <= 1.0


@_IGNORE_RANDOM
def test_image_folder_errors_are_named(tmp_path):
    with pytest.raises(
        TaskError, match=r"data path '.*absent' does not exist: expected an ImageFolder"
    ):
        load_task("resnet18-imagenet", data=str(tmp_path / "absent"))
    _write_folder(tmp_path / "a", ["cat", "dog"], {"train": 2})
    with pytest.raises(TaskError, match=r"has no 'val' folder"):
        load_task("resnet18-imagenet", data=str(tmp_path / "a"))
    _write_folder(tmp_path / "b", ["cat", "dog"], {"train": 2})
    _write_folder(tmp_path / "b", ["cat"], {"val": 2})
    with pytest.raises(TaskError, match=r"hold different classes \(2 and 1\)"):
        load_task("resnet18-imagenet", data=str(tmp_path / "b"))
    _write_folder(tmp_path / "c", ["cat", "dog"], {"train": 4, "val": 1})
    path = tmp_path / "w.pt"
    torch.save(ARCHITECTURES["resnet18-imagenet"](1000).state_dict(), path)
    with pytest.raises(TaskError, match=r"wrong shape: fc.bias, fc.weight"):
        load_task("resnet18-imagenet", data=str(tmp_path / "c"), weights=str(path), val_size=2)


def test_digits_tasks_take_no_options():
    with pytest.raises(TaskError, match=r"task 'digits' does not take the options \['data'\]"):
        load_task("digits", data="x")


@pytest.mark.slow
def test_cli_search_on_a_cifar_folder_and_a_checkpoint(cifar_root, tmp_path, capsys):
    root, _ = cifar_root
    torch.manual_seed(1)
    weights = tmp_path / "resnet20.pt"
    torch.save(ResNet20().state_dict(), weights)
    out = tmp_path / "run"
    common = ["--task", "resnet20-cifar", "--weights", str(weights), "--device", "cpu"]
    options = ["--task-option", "val_size=10", "--task-option", "calib_size=8"]
    search = ["search", "--agent", "random", "--episodes", "2", "--budget-bops", "1/8", "--quiet"]
    code = main([*search, *common, *options, "--data", str(root), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    env = json.loads((out / "run.json").read_text())["env"]
    assert env["task"] == "resnet20-cifar" and env["device"] == "cpu"
    assert env["task_options"] == {
        "data": str(root),
        "weights": str(weights),
        "val_size": 10,
        "calib_size": 8,
    }
    capsys.readouterr()
    assert main(["evaluate", str(out / "policy.json")]) == 0  # data and weights from the run
    assert "test accuracy" in capsys.readouterr().out
    missing = tmp_path / "no-cifar-here"
    code = main([*search, *common, "--data", str(missing), "--out", str(tmp_path / "run2")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"data path '{missing}' does not exist: expected CIFAR-10 python batches" in err
