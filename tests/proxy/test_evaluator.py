"""The accuracy proxy (``jpq_env.proxy.evaluator``): what it scores and on which split, bitwise
determinism, the fidelity options and the metrics against independent computations, the memo,
and the evaluator interface's defaults.
"""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from jpq_env import LayerGraph, LocalEvaluator, Policy
from jpq_env.errors import ArgumentError
from jpq_env.proxy.evaluator import Evaluator, WrappedEvaluator, as_evaluator
from jpq_env.tasks import Task, TaskError
from tests.nets import PlainNet
from tests.proxy.toys import labelled_task, mixed_policy, toy_task


class _Forbidden(Dataset):
    def __len__(self) -> int:
        raise AssertionError("the test split was read during search")

    def __getitem__(self, i: int):
        raise AssertionError("the test split was read during search")


def test_fp32_accuracy_is_computed_on_the_held_out_split():
    plain = LocalEvaluator(labelled_task(test=_Forbidden()), batch_size=10, bn_recalibration=False)
    assert plain.fp32_accuracy == 0.75  # labels were made so: a quarter wrong
    ev = LocalEvaluator(labelled_task(test=_Forbidden()), batch_size=10)
    fresh = LocalEvaluator(labelled_task(test=_Forbidden()), batch_size=10)
    assert ev.fp32_accuracy == fresh.accuracy(Policy.uniform(fresh.graph))  # same pipeline


def test_search_never_reads_the_test_split():
    ev = LocalEvaluator(labelled_task(test=_Forbidden()))
    ev.accuracy(Policy.uniform(ev.graph, 2, 4))
    with pytest.raises(AssertionError, match="test split was read"):
        ev.test_accuracy(None)


def test_32_bit_policy_without_recalibration_equals_fp32():
    ev = LocalEvaluator(labelled_task(), bn_recalibration=False)
    assert ev.accuracy(Policy.uniform(ev.graph)) == ev.fp32_accuracy == ev.test_accuracy(None)


def test_bn_recalibration_replaced_uses_calibration_statistics():
    task = labelled_task()
    ev = LocalEvaluator(task, bn_method="replace")
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
    a, b = LocalEvaluator(labelled_task()), LocalEvaluator(labelled_task())
    rng = np.random.default_rng(0)
    for _ in range(3):
        bits = rng.choice([2, 3, 4, 8], size=4)
        p = Policy.uniform(a.graph, int(bits[0]), int(bits[1]))
        assert a.accuracy(p) == b.accuracy(p)


def test_labels_out_of_range_name_the_split():
    task = labelled_task()
    x, y = task.val.tensors
    task.val = TensorDataset(x, torch.full_like(y, 7))
    with pytest.raises(TaskError, match=r"val split has labels outside \[0, 5\)"):
        LocalEvaluator(task)


def test_empty_split_is_named():
    task = labelled_task()
    task.calib = TensorDataset(torch.empty(0, 3, 8, 8), torch.empty(0, dtype=torch.long))
    with pytest.raises(TaskError, match="calib split is empty"):
        LocalEvaluator(task)


def test_evaluation_leaves_the_model_untouched():
    task = labelled_task()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    ev = LocalEvaluator(task)
    for w in (2, 3, 8):
        ev.accuracy(Policy.uniform(ev.graph, w, w))
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_model_and_data_that_do_not_fit_are_named():
    task = labelled_task()
    task.num_classes = 10  # the model has 5 outputs
    with pytest.raises(
        TaskError, match=r"outputs shape \(32, 5\) on the calib split, expected \(batch, 10\)"
    ):
        LocalEvaluator(task)
    task = labelled_task()
    task.calib = TensorDataset(torch.randn(4, 2, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(
        TaskError, match=r"cannot run on the calib split \(inputs of shape \(4, 2, 8, 8\)\)"
    ):
        LocalEvaluator(task)
    task = labelled_task()
    x, y = task.val.tensors
    task.val = TensorDataset(x, y.float())
    with pytest.raises(TaskError, match=r"val split has torch\.float32 labels"):
        LocalEvaluator(task)


def test_cpu_proxy_is_bitwise_deterministic_across_evaluators_and_repeats():
    a, b = (
        LocalEvaluator(labelled_task(n=200), device="cpu"),
        LocalEvaluator(labelled_task(n=200), device="cpu"),
    )
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
    task = labelled_task(n=96)
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


def test_val_images_scores_the_first_images_of_a_seeded_order():
    task = toy_task(PlainNet(), n=96)
    ev = LocalEvaluator(task, device="cpu", val_images=40, bn_recalibration=False)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(0))[:40]
    x, y = task.val.tensors
    with torch.no_grad():
        expected = float((task.model(x[order]).argmax(1) == y[order]).double().mean())
    assert ev.fp32_accuracy == expected and ev.val_images == 40


def test_agreement_and_kl_against_independent_computations():
    task = toy_task(PlainNet(), n=96)
    policy = Policy.uniform(LayerGraph.from_module(task.model, task.example_input), 2, 2)
    for metric in ("agreement", "kl"):
        ev = LocalEvaluator(task, device="cpu", metric=metric, bn_recalibration=False)
        assert ev.fp32_accuracy == 1.0
        score = ev.accuracy(policy)
        x, _ = task.val.tensors
        with torch.no_grad():
            fp32 = task.model(x)
            module = ev.prepare(policy)
            q = module(x)
        if metric == "agreement":
            expected = float((fp32.argmax(1) == q.argmax(1)).double().mean())
        else:
            p_log = torch.log_softmax(fp32.double(), 1)
            kl = (p_log.exp() * (p_log - torch.log_softmax(q.double(), 1))).sum(1)
            expected = math.exp(-float(kl.mean()))
        assert score == pytest.approx(expected, rel=1e-9)
        assert 0 < score < 1


def test_a_policy_scored_before_is_answered_from_memory():
    task = toy_task(PlainNet())
    ev = LocalEvaluator(task, device="cpu")
    policy = mixed_policy(ev.graph, 3)
    first = ev.accuracy(policy)
    forwards = ev.stats.image_forwards
    assert ev.accuracy(policy) == first and ev.stats.memo == 1
    assert ev.stats.image_forwards == forwards


def test_bad_evaluator_options_are_named():
    task = toy_task(PlainNet())
    for kwargs, text in (
        ({"metric": "mse"}, "unknown metric"),
        ({"val_images": 0}, "val_images"),
        ({"val_images": True}, "val_images"),
        ({"prefix_cache_mb": -1}, "prefix_cache_mb"),
        ({"race_z": 0}, "race_z"),
    ):
        with pytest.raises(ValueError, match=text):
            LocalEvaluator(task, device="cpu", **kwargs)


_THREADS_SCRIPT = """
import json, sys
import numpy as np
from jpq_env import LocalEvaluator, Policy, load_task
ev = LocalEvaluator(load_task("digits"))
rng = np.random.default_rng(0)
scores = []
for _ in range(12):
    layers = []
    for info, lp in zip(ev.graph.layers, Policy.uniform(ev.graph).layers):
        bits = rng.choice([0, 2, 3, 4, 8], size=info.out_channels)
        if info.index in ev.graph.output_layers:
            bits[bits == 0] = 4
        layers.append({"name": lp.name, "bits": bits.tolist(), "act_bits": int(rng.choice([4, 8]))})
    data = {"schema": 1, "fingerprint": ev.graph.fingerprint, "layers": layers}
    scores.append(ev.accuracy(Policy.from_json(data)))
print(json.dumps(scores))
"""


@pytest.mark.slow
def test_scores_do_not_depend_on_the_thread_count():
    # A Ray actor runs one thread, a local search two: channels-last BatchNorm statistics once
    # made them disagree by an image. Thread pools are sized at start-up, hence the subprocesses.
    import json
    import os
    import subprocess
    import sys

    runs = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "JPQ_THREADS": threads}
        out = subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 6  # the policies really differ


# ---- the evaluator interface: as_evaluator, the defaults, WrappedEvaluator ---------------------

POLICY = Policy((), "none")  # the fakes below never look inside a policy


class _Minimal(Evaluator):
    """An evaluator implementing only what is abstract: 0.5 for every policy."""

    fp32_accuracy = 0.9

    def __init__(self) -> None:
        self.asked: list[Policy] = []

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        self.asked.append(policy)
        return 0.5


def test_the_base_class_defaults_describe_an_evaluator_without_those_abilities():
    ev = _Minimal()
    assert (ev.supports_racing, ev.workers, ev.last, ev.device) == (
        False,
        1,
        None,
        torch.device("cpu"),
    )
    assert ev.scorer is ev and not ev.has_test_split
    with pytest.raises(NotImplementedError, match="_Minimal has no test split"):
        ev.test_accuracy(None)
    assert ev.set_incumbent(POLICY) is None and ev.check_split("test") is None
    assert ev.accuracy_many([POLICY, POLICY]) == [0.5, 0.5] and len(ev.asked) == 2
    assert list(ev.iter_accuracy(iter([POLICY] * 3))) == [0.5] * 3 and len(ev.asked) == 5
    assert as_evaluator(ev) is ev


class _Duck:
    """Not an Evaluator: ``accuracy(policy)`` (no ``at_least``) and ``fp32_accuracy``."""

    fp32_accuracy = 0.75

    def __init__(self) -> None:
        self.checked: list[str] = []

    def accuracy(self, policy):
        return 1  # an int: the adapter returns floats

    def check_split(self, split):
        self.checked.append(split)


def test_an_object_with_accuracy_and_fp32_accuracy_is_adapted():
    duck = _Duck()
    ev = as_evaluator(duck)
    assert isinstance(ev, Evaluator) and ev.inner is duck
    assert ev.fp32_accuracy == 0.75 and type(ev.fp32_accuracy) is float
    assert ev.accuracy(POLICY, at_least=0.99) == 1.0 and type(ev.accuracy(POLICY)) is float
    assert (ev.supports_racing, ev.workers, ev.device) == (False, 1, torch.device("cpu"))
    assert ev.accuracy_many([POLICY] * 2) == [1.0, 1.0]
    ev.check_split("test")
    assert duck.checked == ["test"]
    assert not ev.has_test_split
    with pytest.raises(NotImplementedError, match="_Duck has no test_accuracy"):
        ev.test_accuracy(None)
    duck.test_accuracy = lambda policy: 0.25  # type: ignore[attr-defined]
    assert ev.has_test_split and ev.test_accuracy(None) == 0.25
    # fp32_accuracy may be an instance attribute, as a user's simple class sets it
    other = type("Plain", (), {"accuracy": lambda self, p: 0.1})()
    other.fp32_accuracy = 0.2
    assert as_evaluator(other).fp32_accuracy == 0.2


NO_FP32 = type("NoFp32", (), {"accuracy": lambda self, p: 0.1})
NO_ACCURACY = type("NoAccuracy", (), {"fp32_accuracy": 0.1})


@pytest.mark.parametrize(
    "obj", [object(), NO_FP32(), NO_ACCURACY()], ids=["nothing", "no-fp32", "no-accuracy"]
)
def test_anything_else_is_refused_by_name(obj):
    wanted = r"or have an accuracy\(policy\) method and an fp32_accuracy attribute, got "
    with pytest.raises(ArgumentError, match=wanted + type(obj).__name__):
        as_evaluator(obj)


class _Recording(Evaluator):
    """An evaluator with every ability, recording what it was asked."""

    supports_racing = True
    workers = 3
    device = torch.device("meta")
    fp32_accuracy = 0.8

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        self.calls.append(("accuracy", at_least))
        return 0.6

    def set_incumbent(self, policy: Policy | None) -> None:
        self.calls.append(("incumbent", policy))

    def test_accuracy(self, policy: Policy | None) -> float:
        self.calls.append(("test", policy))
        return 0.7

    def check_split(self, split: str) -> None:
        self.calls.append(("check", split))


def test_a_wrapped_evaluator_forwards_everything_to_the_inner_one():
    inner = _Recording()
    ev = WrappedEvaluator(inner)
    assert (ev.supports_racing, ev.workers, ev.device) == (True, 3, torch.device("meta"))
    assert ev.fp32_accuracy == 0.8 and ev.has_test_split
    assert ev.accuracy(POLICY, at_least=0.4) == 0.6
    ev.set_incumbent(POLICY)
    assert ev.test_accuracy(None) == 0.7
    ev.check_split("val")
    assert inner.calls == [
        ("accuracy", 0.4),
        ("incumbent", POLICY),
        ("test", None),
        ("check", "val"),
    ]
    # batches go through the wrapper's accuracy, so a subclass that changes it changes them too
    assert ev.accuracy_many([POLICY]) == [0.6] and inner.calls[-1] == ("accuracy", None)
    assert ev.scorer is ev
    # around a minimal evaluator the wrapper has its defaults; around a duck, the adapter's
    plain = WrappedEvaluator(_Minimal())
    assert (plain.supports_racing, plain.workers, plain.has_test_split) == (False, 1, False)
    assert WrappedEvaluator(_Duck()).fp32_accuracy == 0.75  # type: ignore[arg-type]
