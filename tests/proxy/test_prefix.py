"""Prefix reuse (``jpq_env.proxy.prefix``): a segmented forward is bitwise the module, and a
resumed evaluation bitwise a full one, within its memory budget.
"""

import pytest
import torch
import torchvision

from jpq_env import LayerGraph, LocalEvaluator, Policy
from jpq_env.proxy.prefix import SegmentedForward
from tests.nets import ConcatNet, PlainNet, ResidualNet, SeparableNet, randomize_bn
from tests.proxy.toys import mixed_policy, toy_task


def _changed_from(graph: LayerGraph, base: Policy, k: int, seed: int) -> Policy:
    """``base`` with every layer from ``k`` on drawn again (layers before ``k`` unchanged)."""
    other = mixed_policy(graph, seed)
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
    task = toy_task(net())
    reuse = LocalEvaluator(task, device="cpu", metric="kl", bn_recalibration=recalibrate)
    full = LocalEvaluator(
        task, device="cpu", metric="kl", bn_recalibration=recalibrate, prefix_cache_mb=0
    )
    assert reuse.prefix_checkpoints and not full.prefix_checkpoints
    graph = reuse.graph
    base = mixed_policy(graph, 0)
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

    task = toy_task(ResNet20(), n=64, side=32)
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
    task = toy_task(ResidualNet(), n=96)
    ev = LocalEvaluator(task, device="cpu", prefix_cache_mb=0.05)  # 52 kB
    images = ev.val_images + len(task.calib)
    used = sum(c.floats_per_sample * 4 * images for c in ev.prefix_checkpoints)
    assert 0 < used <= 0.05 * 2**20
    roomy = LocalEvaluator(task, device="cpu", prefix_cache_mb=100)
    assert len(roomy.prefix_checkpoints) >= len(ev.prefix_checkpoints)
