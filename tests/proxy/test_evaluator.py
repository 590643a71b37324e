import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import Policy
from jpq_env.proxy.data import ACTIVATION_BUDGET, MAX_BATCH, auto_batch_size, resolve_device
from jpq_env.proxy.evaluator import LocalEvaluator
from jpq_env.tasks import Task, TaskError
from tests.nets import PlainNet, randomize_bn


class _Forbidden(Dataset):
    def __len__(self) -> int:
        raise AssertionError("the test split was read during search")

    def __getitem__(self, i: int):
        raise AssertionError("the test split was read during search")


def _task(n=64, labels=None, test=None, seed=0) -> Task:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = randomize_bn(PlainNet(), seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1) if labels is None else labels
    y = y.clone()
    y[: n // 4] = (y[: n // 4] + 1) % 5  # a quarter wrong: FP32 accuracy 75%
    data = TensorDataset(x, y)
    return Task(
        "toy",
        model,
        x[:1],
        data,
        data,
        TensorDataset(x[:32], y[:32]),
        data if test is None else test,
        5,
    )


def test_fp32_accuracy_is_computed_on_the_held_out_split():
    plain = LocalEvaluator(_task(test=_Forbidden()), batch_size=10, bn_recalibration=False)
    assert plain.fp32_accuracy == 0.75  # labels were made so: a quarter wrong
    ev = LocalEvaluator(_task(test=_Forbidden()), batch_size=10)
    fresh = LocalEvaluator(_task(test=_Forbidden()), batch_size=10)
    assert ev.fp32_accuracy == fresh.accuracy(Policy.uniform(fresh.graph))  # same pipeline


def test_search_never_reads_the_test_split():
    ev = LocalEvaluator(_task(test=_Forbidden()))
    ev.accuracy(Policy.uniform(ev.graph, 2, 4))
    with pytest.raises(AssertionError, match="test split was read"):
        ev.test_accuracy(None)


def test_32_bit_policy_without_recalibration_equals_fp32():
    ev = LocalEvaluator(_task(), bn_recalibration=False)
    assert ev.accuracy(Policy.uniform(ev.graph)) == ev.fp32_accuracy == ev.test_accuracy(None)


def test_bn_recalibration_uses_calibration_statistics():
    task = _task()
    ev = LocalEvaluator(task)
    ev.accuracy(Policy.uniform(ev.graph))
    x = task.calib.tensors[0]
    with torch.no_grad():
        h = task.model.conv1(x)
    bn = ev.compressed.module.bn1
    torch.testing.assert_close(bn.running_mean, h.mean((0, 2, 3)))
    torch.testing.assert_close(
        bn.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5
    )
    assert not bn.training and bn.momentum == 0.1


def test_same_inputs_same_numbers():
    a, b = LocalEvaluator(_task()), LocalEvaluator(_task())
    rng = np.random.default_rng(0)
    for _ in range(3):
        bits = rng.choice([2, 3, 4, 8], size=4)
        p = Policy.uniform(a.graph, int(bits[0]), int(bits[1]))
        assert a.accuracy(p) == b.accuracy(p)


def test_labels_out_of_range_name_the_split():
    task = _task()
    x, y = task.val.tensors
    task.val = TensorDataset(x, torch.full_like(y, 7))
    with pytest.raises(TaskError, match=r"val split has labels outside \[0, 5\)"):
        LocalEvaluator(task)


def test_empty_split_is_named():
    task = _task()
    task.calib = TensorDataset(torch.empty(0, 3, 8, 8), torch.empty(0, dtype=torch.long))
    with pytest.raises(TaskError, match="calib split is empty"):
        LocalEvaluator(task)


def test_evaluation_leaves_the_model_untouched():
    task = _task()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    ev = LocalEvaluator(task)
    for w in (2, 3, 8):
        ev.accuracy(Policy.uniform(ev.graph, w, w))
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_model_and_data_that_do_not_fit_are_named():
    task = _task()
    task.num_classes = 10  # the model has 5 outputs
    with pytest.raises(
        TaskError, match=r"outputs shape \(32, 5\) on the calib split, expected \(batch, 10\)"
    ):
        LocalEvaluator(task)
    task = _task()
    task.calib = TensorDataset(torch.randn(4, 2, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(
        TaskError, match=r"cannot run on the calib split \(inputs of shape \(4, 2, 8, 8\)\)"
    ):
        LocalEvaluator(task)
    task = _task()
    x, y = task.val.tensors
    task.val = TensorDataset(x, y.float())
    with pytest.raises(TaskError, match=r"val split has torch\.float32 labels"):
        LocalEvaluator(task)


def test_device_auto_is_the_cpu_without_cuda_and_bad_devices_are_named():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    assert LocalEvaluator(_task()).device.type == expected
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' asked for, but CUDA is not available"):
            LocalEvaluator(_task(), device="cuda")


def test_cpu_proxy_is_bitwise_deterministic_across_evaluators_and_repeats():
    a, b = LocalEvaluator(_task(n=200), device="cpu"), LocalEvaluator(_task(n=200), device="cpu")
    rng = np.random.default_rng(4)
    policies = []
    for _ in range(3):
        p = Policy.uniform(a.graph, 4, 4)
        for lp in p.layers[:-1]:
            lp.bits[:] = rng.choice([0, 2, 3, 8], size=len(lp.bits))
        policies.append(p)
    first = []
    for p in policies:
        first.append((a.accuracy(p), a.prepare(p)(a.task.val.tensors[0]).detach().clone()))
    for p, (acc, logits) in zip(policies[::-1], first[::-1], strict=True):  # other order, b
        assert b.accuracy(p) == acc
        assert torch.equal(b.prepare(p)(b.task.val.tensors[0]), logits)
        assert a.accuracy(p) == acc  # and a again, after the others


def test_auto_batch_size_bounds_the_widest_activation():
    ev = LocalEvaluator(_task())  # PlainNet on 3x8x8: tiny activations, the cap applies
    assert ev.batch_size == MAX_BATCH
    graph = LayerGraph.from_module(
        torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1)), torch.zeros(1, 3, 224, 224)
    )
    widest = 64 * 224 * 224
    assert auto_batch_size(graph, torch.zeros(1, 3, 224, 224)) == ACTIVATION_BUDGET // widest
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1 or None, got 0"):
        LocalEvaluator(_task(), batch_size=0)


class _NoisyView(Dataset):
    """A plain map-style dataset (so it goes through a DataLoader) with a random transform."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data
        self.reads = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        self.reads += 1
        x, y = self.data[i]
        return x + 0.5 * torch.rand(x.shape), y  # draws from torch's global RNG


def test_evaluation_leaves_torch_global_random_state_alone():
    task = _task(n=96)
    noisy = _NoisyView(task.val)
    task = Task("toy", task.model, task.example_input, task.train, noisy, noisy, noisy, 5)
    evaluator = LocalEvaluator(task, device="cpu")
    policy = Policy.uniform(evaluator.graph, 3, 4)
    torch.manual_seed(11)
    state = torch.random.get_rng_state()
    first = evaluator.accuracy(policy)
    # Agents sample from this state: an evaluation (or a log answering for one) must not move it.
    assert torch.equal(torch.random.get_rng_state(), state)
    evaluator.test_accuracy(policy)
    assert torch.equal(torch.random.get_rng_state(), state)
    test = evaluator.test_accuracy(policy)
    torch.rand(5)  # an agent draws between evaluations: the transform's draws must not change
    assert evaluator.test_accuracy(policy) == test
    fresh = LocalEvaluator(task, device="cpu")
    assert fresh.accuracy(policy) == first and evaluator.accuracy(policy) == first
    assert noisy.reads >= 5 * len(noisy)  # the transform ran: its draws just repeat each time
