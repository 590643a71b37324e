"""The fast proxy: prefix reuse (bitwise), fidelity, racing, the continuous metrics, the memo."""

import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

from jpq_env import LayerGraph, LocalEvaluator, Policy, load_task
from jpq_env.proxy.prefix import SegmentedForward
from jpq_env.proxy.racing import RaceRule, upper_bound
from jpq_env.tasks import Task
from tests.nets import ConcatNet, PlainNet, ResidualNet, SeparableNet, randomize_bn


def _task(net: nn.Module, n: int = 96, side: int = 8, classes: int | None = None) -> Task:
    g = torch.Generator().manual_seed(1)
    model = randomize_bn(net, 0).eval()
    x = torch.randn(n, 3, side, side, generator=g)
    with torch.no_grad():
        out = model(x)
    y = out.argmax(1)
    y[: n // 5] = (y[: n // 5] + 1) % out.shape[1]
    data = TensorDataset(x, y)
    calib = TensorDataset(x[:40], y[:40])
    return Task("toy", model, x[:1], data, data, calib, data, out.shape[1])


def _mixed(graph: LayerGraph, seed: int, acts: tuple[int, ...] = (4, 8)) -> Policy:
    """A random policy: random widths and pruning per kernel, random activation widths."""
    rng = np.random.default_rng(seed)
    policy = Policy.uniform(graph)
    layers = []
    for info, lp in zip(graph.layers, policy.layers, strict=True):
        bits = rng.choice([0, 2, 3, 4, 8], size=info.out_channels, p=[0.2, 0.2, 0.2, 0.2, 0.2])
        if info.index in graph.output_layers:
            bits[bits == 0] = 4
        layers.append(type(lp)(lp.name, bits, int(rng.choice(acts))))
    return Policy(tuple(layers), policy.fingerprint)


def _changed_from(graph: LayerGraph, base: Policy, k: int, seed: int) -> Policy:
    """``base`` with every layer from ``k`` on drawn again (layers before ``k`` unchanged)."""
    other = _mixed(graph, seed)
    return Policy(base.layers[:k] + other.layers[k:], base.fingerprint)


@pytest.mark.parametrize(
    ("net", "side"), [(PlainNet, 8), (ResidualNet, 8), (SeparableNet, 8), (ConcatNet, 4)]
)
def test_segmented_forward_is_bitwise_the_module(net, side):
    model = randomize_bn(net(), 3).eval()
    x = torch.randn(7, 3, side, side)
    graph = LayerGraph.from_module(model, x[:1])
    fwd = SegmentedForward(model, graph.names, x[:1], [i.macs for i in graph.layers])
    with torch.no_grad():
        expected = model(x)
        out, kept = fwd.run(x, keep=fwd.checkpoints)
        assert torch.equal(out, expected)
        for c, state in zip(fwd.checkpoints, kept, strict=True):  # resume anywhere
            resumed, _ = fwd.run(x, c.position, state)
            assert torch.equal(resumed, expected)


def test_in_place_relu_is_made_out_of_place_and_resumes_exactly():
    model = torchvision.models.resnet18(num_classes=10).eval()  # nn.ReLU(inplace=True)
    x = torch.randn(2, 3, 32, 32)
    graph = LayerGraph.from_module(model, x[:1])
    with torch.no_grad():
        expected = model(x)
    working = __import__("copy").deepcopy(model)
    fwd = SegmentedForward(working, graph.names, x[:1], [i.macs for i in graph.layers])
    assert fwd.resumable and not working.relu.inplace and model.relu.inplace
    with torch.no_grad():
        out, kept = fwd.run(x, keep=fwd.checkpoints[5:7])
        assert torch.equal(out, expected)
        for c, state in zip(fwd.checkpoints[5:7], kept, strict=True):
            assert torch.equal(fwd.run(x, c.position, state)[0], expected)
    # the live set at the start of a residual block is the block input alone
    block = fwd.checkpoints[graph.names.index("layer2.0.conv1")]
    assert len(block.live) == 1 and block.floats_per_sample == 64 * 8 * 8


@pytest.mark.parametrize("net", [PlainNet, ResidualNet, SeparableNet])
@pytest.mark.parametrize("recalibrate", [True, False])
def test_prefix_reuse_is_bitwise_a_full_evaluation(net, recalibrate):
    task = _task(net())
    reuse = LocalEvaluator(task, device="cpu", metric="kl", bn_recalibration=recalibrate)
    full = LocalEvaluator(
        task, device="cpu", metric="kl", bn_recalibration=recalibrate, prefix_cache_mb=0
    )
    assert reuse._checkpoints and not full._checkpoints
    graph = reuse.graph
    base = _mixed(graph, 0)
    reuse.set_incumbent(base)  # else the best score so far keeps its activations
    assert reuse.accuracy(base) == full.accuracy(base)
    resumed = []
    for k in range(len(graph)):
        candidate = _changed_from(graph, base, k, 10 + k)
        a, b = reuse.accuracy(candidate), full.accuracy(candidate)
        assert a == b, f"layer {k}: {a} != {b}"  # a continuous score: any changed bit shows
        resumed.append(reuse.last.resumed_at)
        # the working copy is the full evaluation's, BatchNorm statistics included
        for (name, t), (_, u) in zip(
            reuse.compressed.module.state_dict().items(),
            full.compressed.module.state_dict().items(),
            strict=True,
        ):
            assert torch.equal(t, u), name
    assert max(resumed) > 0  # it did resume, past the first layer
    assert reuse.stats.image_forwards < full.stats.image_forwards


def test_resnet20_resumes_inside_its_stages_and_saves_forwards():
    from tests.nets import ResNet20

    task = _task(ResNet20(), n=64, side=32)
    reuse = LocalEvaluator(task, device="cpu")
    full = LocalEvaluator(task, device="cpu", prefix_cache_mb=0)
    graph = reuse.graph
    base = Policy.uniform(graph, 4, 4)
    assert reuse.accuracy(base) == full.accuracy(base)
    last = len(graph) - 3
    candidate = _changed_from(graph, base, last, 5)
    assert reuse.accuracy(candidate) == full.accuracy(candidate)
    assert reuse.last.resumed_at > len(graph) // 2
    # the second evaluation computed only the layers from the checkpoint on
    macs = [x.macs for x in graph.layers]
    skipped = sum(macs[: reuse.last.resumed_at]) / sum(macs)
    images = reuse.val_images + len(task.calib)
    saved = full.stats.image_forwards - reuse.stats.image_forwards
    assert saved == pytest.approx(images * skipped)
    assert skipped > 0.5


def test_the_cache_stays_within_its_memory_budget():
    task = _task(ResidualNet(), n=96)
    ev = LocalEvaluator(task, device="cpu", prefix_cache_mb=0.05)  # 52 kB
    images = ev.val_images + len(task.calib)
    used = sum(c.floats_per_sample * 4 * images for c in ev._checkpoints)
    assert 0 < used <= 0.05 * 2**20
    roomy = LocalEvaluator(task, device="cpu", prefix_cache_mb=100)
    assert len(roomy._checkpoints) >= len(ev._checkpoints)


def test_val_images_scores_the_first_images_of_a_seeded_order():
    task = _task(PlainNet(), n=96)
    ev = LocalEvaluator(task, device="cpu", val_images=40, bn_recalibration=False)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(0))[:40]
    x, y = task.val.tensors
    with torch.no_grad():
        expected = float((task.model(x[order]).argmax(1) == y[order]).double().mean())
    assert ev.fp32_accuracy == expected and ev.val_images == 40


def test_agreement_and_kl_against_independent_computations():
    task = _task(PlainNet(), n=96)
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


def test_upper_bound_against_the_formula():
    v = torch.tensor([1.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    n, total, z = 8, 100, 2.0
    var = max(float(np.var(v.numpy(), ddof=1)), 1 / (n + 2))
    expected = float(v.mean()) + z * math.sqrt((total - n) * var * (1 + (total - n) / n)) / total
    assert upper_bound(v, total, z) == pytest.approx(expected)
    assert upper_bound(v, n, z) == pytest.approx(0.0)  # everything seen: the mean itself
    rule = RaceRule(0.0, total, z, min_images=10)
    assert not rule.lost(v)  # too few images for a decision
    assert rule.lost(torch.full((50,), -1.0))
    assert not RaceRule(-2.0, total, z, 10).lost(torch.full((50,), -1.0))


def test_racing_stops_a_hopeless_policy_and_never_a_winner():
    task = load_task("digits")
    ev = LocalEvaluator(task, device="cpu", batch_size=32)
    full = LocalEvaluator(task, device="cpu", batch_size=32, prefix_cache_mb=0)
    graph = ev.graph
    incumbent = Policy.uniform(graph, 6, 6)
    ev.set_incumbent(incumbent)
    best = full.accuracy(incumbent)
    bad = Policy.uniform(graph, 2, 2)  # far worse than 6-bit
    raced = ev.accuracy(bad, at_least=best)
    assert not ev.last.complete and ev.last.images < ev.val_images
    stopped_at = ev.last.images
    assert full.accuracy(bad) < best  # the decision was right
    assert raced == pytest.approx(ev.last.score)
    good = Policy.uniform(graph, 8, 8)
    assert ev.accuracy(good, at_least=best - 0.05) == full.accuracy(good)  # beats it: in full
    assert ev.last.complete and ev.last.images == ev.val_images
    # the same stops in a fresh evaluator (the incumbent is scored again when needed)
    again = LocalEvaluator(task, device="cpu", batch_size=32)
    again.set_incumbent(incumbent)
    assert again.accuracy(bad, at_least=best) == raced and again.last.images == stopped_at


def test_a_policy_scored_before_is_answered_from_memory():
    task = _task(PlainNet())
    ev = LocalEvaluator(task, device="cpu")
    policy = _mixed(ev.graph, 3)
    first = ev.accuracy(policy)
    forwards = ev.stats.image_forwards
    assert ev.accuracy(policy) == first and ev.stats.memo == 1
    assert ev.stats.image_forwards == forwards


def test_bad_evaluator_options_are_named():
    task = _task(PlainNet())
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
