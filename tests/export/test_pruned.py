"""The physically pruned model: the masked model's logits with exactly the cost model's weights."""

from __future__ import annotations

import zlib
from typing import cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from jpq_env.core.compress import CompressedModel, calibrate_ranges
from jpq_env.core.costs import measure
from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import LayerPolicy, Policy
from jpq_env.export.pruned import (
    load_pruned,
    prune_physically,
    pruned_module,
    save_pruned,
    weight_count,
)
from jpq_env.proxy.data import top1
from jpq_env.proxy.evaluator import LocalEvaluator
from jpq_env.tasks.registry import load_task
from jpq_env.tasks.vision import ARCHITECTURES
from tests.nets import (
    ConcatNet,
    OptionANet,
    PadThenBatchNorm,
    PlainNet,
    ResidualNet,
    ResNet20,
    SeparableNet,
    SqueezeExciteNet,
    UpsampleNet,
    randomize_bn,
)


def _predicted_weights(graph: LayerGraph, policy: Policy) -> int:
    """The cost model's size with every kept kernel at one bit: its weight count."""
    ones = Policy(
        tuple(LayerPolicy(lp.name, (lp.bits > 0).astype(np.int64), 32) for lp in policy.layers),
        policy.fingerprint,
    )
    cost = measure(graph, ones)  # uncompressed layers are counted at 32 bits a weight
    return cost.size_bits - cost.uncompressed_size_bits + cost.uncompressed_size_bits // 32


def _random_policy(graph: LayerGraph, rng: np.random.Generator, act: int, prune: float) -> Policy:
    layers = []
    for info in graph.layers:
        bits = rng.choice([2, 3, 4, 8, 32], size=info.out_channels)
        if info.index not in graph.output_layers:
            bits[rng.random(info.out_channels) < prune] = 0
        layers.append(LayerPolicy(info.name, bits, act))
    return Policy(tuple(layers), graph.fingerprint)


class UnevenGroups(nn.Module):
    """A grouped conv (4 groups) whose groups lose different numbers of channels, a depthwise."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.g(torch.relu(self.a(x))))
        x = torch.relu(self.bn(self.dw(x)))
        return self.fc(x.view(x.size(0), -1))


NETS = {
    "plain": (PlainNet, (3, 8, 8)),
    "residual": (ResidualNet, (3, 8, 8)),
    "separable": (SeparableNet, (3, 8, 8)),
    "concat": (ConcatNet, (3, 4, 4)),
    "resnet20": (ResNet20, (3, 16, 16)),
    "uneven-groups": (UnevenGroups, (3, 8, 8)),
    "upsample": (UpsampleNet, (3, 8, 8)),
    "squeeze-excite": (SqueezeExciteNet, (3, 8, 8)),
    "option-a": (OptionANet, (3, 8, 8)),
    "pad-then-batchnorm": (PadThenBatchNorm, (3, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("prune", [0.3, 0.7])
def test_test_nets_match_the_masked_model(name, prune):
    make, shape = NETS[name]
    torch.manual_seed(0)
    model = randomize_bn(make().eval(), 0)
    x = torch.randn(16, *shape)
    graph = LayerGraph.from_module(model, x[:1])
    ranges = calibrate_ranges(model, graph, [x])
    cm = CompressedModel(model, graph, act_ranges=ranges)
    rng = np.random.default_rng(zlib.crc32(f"{name}:{prune}".encode()))  # not hash(): salted
    for trial in range(4):
        policy = _random_policy(graph, rng, 32, prune)
        cm.apply(policy)
        pruned = prune_physically(model, cm.module.state_dict(), graph, policy, x[:1], ranges)
        with torch.no_grad():
            expected, got = cm.module(x), pruned(x)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (trial, got - expected)
        assert weight_count(pruned) == _predicted_weights(graph, policy), trial
        if any((lp.bits == 0).any() for lp in policy.layers):
            assert weight_count(pruned) < weight_count(model)


@pytest.mark.parametrize(("make", "dead"), [(ResidualNet, "a"), (PlainNet, "conv2")])
def test_a_layer_with_no_live_kernel(make, dead):
    torch.manual_seed(0)
    model = randomize_bn(make().eval(), 0)
    x = torch.randn(8, 3, 8, 8)
    graph = LayerGraph.from_module(model, x[:1])
    cm = CompressedModel(model, graph)
    bits = [np.full(i.out_channels, 4) for i in graph.layers]
    # ResidualNet: the block's second conv dies with its first, the shortcut carries on;
    # PlainNet: everything after conv2 dies, the logits are zeros in both models.
    bits[graph.names.index(dead)][:] = 0
    policy = Policy(
        tuple(LayerPolicy(n, b, 32) for n, b in zip(graph.names, bits, strict=True)),
        graph.fingerprint,
    )
    cm.apply(policy)
    pruned = prune_physically(model, cm.module.state_dict(), graph, policy, x[:1])
    with torch.no_grad():
        assert torch.allclose(pruned(x), cm.module(x), atol=1e-5)
    assert weight_count(pruned) == _predicted_weights(graph, policy)


def test_activation_quantization_is_kept():
    torch.manual_seed(0)
    model = randomize_bn(ResidualNet().eval(), 0)
    x = torch.randn(64, 3, 8, 8)
    graph = LayerGraph.from_module(model, x[:1])
    ranges = calibrate_ranges(model, graph, [x])
    cm = CompressedModel(model, graph, act_ranges=ranges)
    policy = _random_policy(graph, np.random.default_rng(3), 4, 0.5)
    cm.apply(policy)
    pruned = prune_physically(model, cm.module.state_dict(), graph, policy, x[:1], ranges)
    with torch.no_grad():
        expected, got = cm.module(x), pruned(x)
    # Rounding at 4 bits can flip a level where float sums differ in the last bit: nearly all
    # logits are equal to float precision, and the decisions agree.
    close = torch.isclose(got, expected, rtol=1e-4, atol=1e-5).all(dim=1)
    assert close.float().mean() >= 0.95
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.95
    with torch.no_grad():
        fp = prune_physically(
            model,
            cm.module.state_dict(),
            graph,
            policy.__class__(
                tuple(LayerPolicy(lp.name, lp.bits, 32) for lp in policy.layers), policy.fingerprint
            ),
            x[:1],
            ranges,
        )(x)
    assert not torch.allclose(fp, got, atol=1e-3)  # the quantizers are really in the graph


@pytest.mark.parametrize("task_name", ["digits", "digits-deep"])
def test_builtin_tasks_match_and_reload(task_name, tmp_path):
    task = load_task(task_name)
    evaluator = LocalEvaluator(task, device="cpu")
    graph = evaluator.graph
    rng = np.random.default_rng(0)
    for act in (32, 8):
        policy = _random_policy(graph, rng, act, 0.5)
        pruned = pruned_module(evaluator, policy)
        masked = evaluator.prepare(policy)
        x = task.test.tensors[0]
        with torch.no_grad():
            expected, got = masked(x), pruned(x)
        if act == 32:
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
        accuracy = top1(pruned, task.test)
        assert abs(accuracy - evaluator.test_accuracy(policy)) <= 1 / len(task.test) + 1e-12
        assert weight_count(pruned) == _predicted_weights(graph, policy)
    path = tmp_path / "model.pt2"
    size = save_pruned(pruned, task.example_input, path)
    assert size == path.stat().st_size
    reloaded = load_pruned(path)
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))
        assert reloaded(x[:1]).shape == (1, expected.shape[1])  # the batch is dynamic


def test_a_foreign_program_file_is_named(tmp_path):
    bad = tmp_path / "model.pt2"
    bad.write_bytes(b"not a program")
    with pytest.raises(ValueError, match=r"'.*model.pt2' is not a readable torch.export program"):
        load_pruned(bad)


@pytest.mark.parametrize("fmt", ["jpq", "torch"])
def test_cli_export_reports_what_it_wrote(fmt, tmp_path, capsys):
    from jpq_agents.cli import main

    task = load_task("digits")
    graph = LayerGraph.from_module(task.model, task.example_input)
    policy = _random_policy(graph, np.random.default_rng(5), 8, 0.5)
    policy.save(tmp_path / "policy.json")
    out = tmp_path / f"model.{fmt}"
    assert main(["export", str(tmp_path / "policy.json"), "--out", str(out), "--format", fmt]) == 0
    text = capsys.readouterr().out
    size = out.stat().st_size
    assert f"{size:,} bytes" in text and "of the FP32 weights" in text
    assert f"size model {measure(graph, policy).size_bits / 8:,.0f} bytes" in text
    accuracy = LocalEvaluator(task, device="cpu").test_accuracy(policy)
    assert f"(evaluate: {accuracy:.2%})" in text and "reloaded model test accuracy" in text


class _MishNet(nn.Module):
    """conv 3->8, Mish (in no op table), conv 8->6, global pooling, linear 6->3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.Mish()
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(self.act(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_an_op_added_to_the_table_is_seen_through_by_the_graph_and_the_pruning(monkeypatch):
    from jpq_env.core.graph import ops

    torch.manual_seed(0)
    model = _MishNet().eval()
    x = torch.randn(8, 3, 8, 8)
    # Not in the table, Mish is opaque: conv2's inputs are alive whatever conv1 keeps.
    assert LayerGraph.from_module(model, x[:1]).sources[1].external.all()
    # Mish(0) == 0: one line in the table, and the cost model and the pruned model both follow.
    monkeypatch.setattr(ops, "MODULE_OPS", (*ops.MODULE_OPS, ((nn.Mish,), ops.Op.KEEP)))
    graph = LayerGraph.from_module(model, x[:1])
    assert not graph.sources[1].external.any()
    cm = CompressedModel(model, graph)
    policy = _random_policy(graph, np.random.default_rng(0), 32, 0.5)
    cm.apply(policy)
    pruned = prune_physically(model, cm.module.state_dict(), graph, policy, x[:1])
    live_in = int(graph.liveness(policy.kept()).alive_in[1].sum())
    assert cast(nn.Conv2d, pruned.get_submodule("conv2")).in_channels == live_in < 8
    with torch.no_grad():
        assert torch.allclose(pruned(x), cm.module(x), rtol=1e-4, atol=1e-5)
    assert weight_count(pruned) == _predicted_weights(graph, policy)


def _pruning(graph: LayerGraph, pruned: dict[str, list[int]]) -> Policy:
    layers = []
    for info in graph.layers:
        bits = np.full(info.out_channels, 8)
        bits[pruned.get(info.name, [])] = 0
        layers.append(LayerPolicy(info.name, bits, 32))
    return Policy(tuple(layers), graph.fingerprint)


def test_pruned_channels_are_seen_through_gates_slices_and_zero_padding():
    """Counted by hand: a channel zeroed by pruning stays zero through a squeeze-and-excitation
    gate and through option A's subsampling and zero padding, so its consumers read fewer inputs."""
    se = LayerGraph.from_module(SqueezeExciteNet().eval(), torch.randn(1, 3, 8, 8))
    cost = measure(se, _pruning(se, {"a": [0, 3]}))
    b = se.names.index("b")
    assert cost.layers[b].macs == 6 * 2 * 9 * 8 * 8  # 6 kernels x 2 live inputs x 3x3 x 8x8
    option_a = LayerGraph.from_module(OptionANet().eval(), torch.randn(1, 3, 8, 8))
    assert option_a.untracked == () and se.untracked == ()
    # b's kernels 0, 1, 6 and 7 meet the padded zeros: pruned, those channels are dead after
    # the add; kernel 2 meets a's channel 0, which is alive: channel 2 stays alive.
    cost = measure(option_a, _pruning(option_a, {"b": [0, 1, 2, 6, 7]}))
    c = option_a.names.index("c")
    assert cost.layers[c].macs == 5 * 4 * 9 * 4 * 4  # 4 live inputs of 8
    cost = measure(option_a, _pruning(option_a, {"a": [1], "b": [3]}))
    assert cost.layers[c].macs == 5 * 7 * 9 * 4 * 4  # channel 3 = a's 1 + b's 3: both pruned
    # A BatchNorm after the padding makes its zeros a constant beta - gamma * mean / std: alive,
    # so the uncompressed policy scores exactly as the model.
    model = randomize_bn(PadThenBatchNorm().eval(), 0)
    x = torch.randn(4, 3, 8, 8)
    padded = LayerGraph.from_module(model, x[:1])
    assert measure(padded, _pruning(padded, {})).layers[padded.names.index("c")].macs == (
        5 * 8 * 9 * 8 * 8
    )
    cm = CompressedModel(model, padded)
    cm.apply(Policy.uniform(padded))
    with torch.no_grad():
        assert torch.equal(cm.module(x), model(x))


@pytest.mark.parametrize(
    ("build", "size"),
    [
        pytest.param(lambda: ARCHITECTURES["resnet20-cifar"](10), 32, id="resnet20-option-a"),
        pytest.param(lambda: torchvision.models.mobilenet_v3_small(num_classes=10), 64, id="mnv3"),
    ],
)  # fmt: skip
def test_the_cost_model_counts_the_macs_the_pruned_model_runs(build, size):
    """The cost model's MACs of a half-pruned policy against torch's flop counter on the
    physically pruned model (which holds only the live channels): equal, to the MAC."""
    from torch.utils.flop_counter import FlopCounterMode

    from jpq_env.core.compress import CompressedModel

    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, size, size)
    graph = LayerGraph.from_module(model, x[:1])
    assert graph.untracked == ()
    policy = _random_policy(graph, np.random.default_rng(0), 32, 0.5)
    cm = CompressedModel(model, graph)
    cm.apply(policy)
    pruned = prune_physically(model, cm.module.state_dict(), graph, policy, x[:1])
    with torch.no_grad():
        assert torch.allclose(pruned(x), cm.module(x), rtol=1e-4, atol=1e-5)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        pruned(x[:1])
    macs = measure(graph, policy).macs
    assert counter.get_total_flops() // 2 == macs < graph.total_macs * 0.7
