"""Layers the graph does not compress: recorded, counted at FP32, told to the user, never dropped.

The MACs below are counted by hand from each layer's definition (a transposed conv does
``C_in x C_out / groups x kh x kw`` MACs per *input* position), independently of the flop
counter the graph uses; the whole-network totals are also checked against
``torch.utils.flop_counter``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from jpq_agents.cli import main
from jpq_env import (
    CompressedModel,
    LayerGraph,
    LocalEvaluator,
    Policy,
    load_task,
    make_task,
    measure,
)
from jpq_env.core.costs import totals
from jpq_env.core.graph import UncompressedLayer, UncompressedLayersWarning
from jpq_env.core.graph import layer_graph as graph_module
from jpq_env.core.policy import LayerPolicy
from jpq_env.envs import JPQEnv
from jpq_env.envs.observation import FEATURES, squash
from tests.nets import LeNet5, ResNet20, UpsampleNet, randomize_bn

pytestmark = pytest.mark.filterwarnings("ignore::jpq_env.errors.UncompressedLayersWarning")

X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
# UpsampleNet by hand: conv1 8 x 3 x 9 x 64, up 8 x 8 x 16 x 64 (input positions), conv2 4 x 8 x 9
# x 64 (8x8 output), fc 4 x 3.
CONV1, UP, CONV2, FC = 8 * 3 * 9 * 64, 8 * 8 * 16 * 64, 4 * 8 * 9 * 64, 4 * 3
TOTAL = CONV1 + UP + CONV2 + FC
W_CONV1, W_UP, W_CONV2, W_FC = 8 * 3 * 9, 8 * 8 * 16, 4 * 8 * 9, 4 * 3
W_TOTAL = W_CONV1 + W_UP + W_CONV2 + W_FC


def _flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() // 2


@pytest.fixture(scope="module")
def graph() -> LayerGraph:
    return LayerGraph.from_module(randomize_bn(UpsampleNet()), X)


def _policy(graph: LayerGraph, bits: list[np.ndarray], act: list[int]) -> Policy:
    layers = (LayerPolicy(x.name, b, a) for x, b, a in zip(graph.layers, bits, act, strict=True))
    return Policy(tuple(layers), graph.fingerprint)


def test_the_transposed_conv_is_recorded_with_its_macs_and_weights(graph: LayerGraph):
    assert graph.names == ("conv1", "conv2", "fc")
    assert graph.uncompressed == (UncompressedLayer("up", "ConvTranspose2d", W_UP + 8, W_UP, UP),)
    assert graph.total_macs == TOTAL == _flop_counter_macs(UpsampleNet(), X)
    assert graph.compressible_macs == CONV1 + CONV2 + FC and graph.weight_params == W_TOTAL


def test_fp32_reference_budget_and_totals_count_it_at_full_precision(graph: LayerGraph):
    fp32 = measure(graph, Policy.uniform(graph))
    assert (fp32.macs_fp32, fp32.bops_fp32, fp32.size_bits_fp32) == (
        TOTAL, TOTAL * 1024, W_TOTAL * 32
    )  # fmt: skip
    assert fp32.bops == fp32.bops_fp32 and fp32.size_bits == fp32.size_bits_fp32
    w4a8 = measure(graph, Policy.uniform(graph, 4, 8))
    fixed = UP * 32 * 32  # 32-bit weights and 32-bit inputs whatever the policy
    assert w4a8.bops == (CONV1 + CONV2 + FC) * 4 * 8 + fixed
    assert w4a8.size_bits == (W_CONV1 + W_CONV2 + W_FC) * 4 + W_UP * 32
    assert (w4a8.uncompressed_macs, w4a8.uncompressed_bops, w4a8.uncompressed_size_bits) == (
        UP, fixed, W_UP * 32
    )  # fmt: skip
    assert w4a8.bops_ratio == pytest.approx(w4a8.bops / (TOTAL * 1024))
    assert sum(c.bops for c in w4a8.layers) + w4a8.uncompressed_bops == w4a8.bops
    bits = [lp.bits for lp in Policy.uniform(graph, 4, 8).layers]
    assert totals(graph, bits, [8, 8, 8]) == (w4a8.bops, w4a8.size_bits)


def test_pruning_before_it_does_not_make_it_or_its_consumer_cheaper(graph: LayerGraph):
    bits = [np.full(8, 4), np.full(4, 4), np.full(3, 4)]
    bits[0][:4] = 0  # conv1 keeps 4 of 8 kernels: the transposed conv still mixes all 8
    cost = measure(graph, _policy(graph, bits, [8, 8, 8]))
    assert cost.layers[0].macs == CONV1 // 2
    assert cost.layers[1].kept_in == 8 and cost.layers[1].macs == CONV2  # alive after `up`
    assert cost.uncompressed_macs == UP and cost.macs == CONV1 // 2 + UP + CONV2 + FC


def test_the_compressed_view_leaves_it_in_fp32(graph: LayerGraph):
    model = randomize_bn(UpsampleNet())
    cm = CompressedModel(model, graph)
    bits = [np.full(8, 2), np.full(4, 2), np.full(3, 2)]
    bits[0][[1, 5]] = 0
    cm.apply(_policy(graph, bits, [32, 32, 32]))
    assert torch.equal(cm.module.up.weight, model.up.weight)
    assert torch.equal(cm.module.up.bias, model.up.bias)
    assert not cm.module.conv1.weight[[1, 5]].any()


@pytest.mark.parametrize(
    ("model", "x", "name", "kind", "params", "macs"),
    [
        pytest.param(
            nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(2), nn.Conv1d(4, 6, 3, padding=1),
                nn.Flatten(), nn.Linear(6 * 64, 2),
            ),
            X, "2", "Conv1d", 6 * 4 * 3 + 6, 6 * 4 * 3 * 64, id="conv1d",
        ),
        pytest.param(
            nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.Unflatten(1, (4, 1)),
                nn.Conv3d(4, 2, (1, 3, 3), padding=(0, 1, 1), groups=2), nn.Flatten(),
                nn.Linear(2 * 64, 2),
            ),
            X, "2", "Conv3d", 2 * 2 * 9 + 2, 2 * 2 * 9 * 64, id="conv3d-grouped",
        ),
        pytest.param(
            nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.LayerNorm(8), nn.Flatten(), nn.Linear(256, 2)
            ),
            X, "1", "LayerNorm", 16, 0, id="layernorm-no-macs",
        ),
        pytest.param(
            nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                nn.Unflatten(1, (1, 4)), nn.LSTM(4, 5, batch_first=True),
            ),
            X, "4", "LSTM", 4 * 5 * (4 + 5) + 2 * 4 * 5, 4 * 5 * (4 + 5), id="lstm-by-hand",
        ),
    ],
)  # fmt: skip
def test_other_uncompressed_modules(model, x, name, kind, params, macs):
    if kind == "LSTM":  # an LSTM returns (output, state): take the last step's output
        model = _LastStep(model)
        name = f"inner.{name}"
    g = LayerGraph.from_module(model, x)
    [layer] = g.uncompressed
    assert (layer.name, layer.kind, layer.params, layer.macs) == (name, kind, params, macs)
    assert g.uncompressed_macs == macs
    # The whole network counted by torch's flop counter, which does not see an LSTM's kernel
    # (one step of 4 gates x 5 hidden x (4 inputs + 5 hidden), counted by hand above).
    total = _flop_counter_macs(model, x) + (macs if kind == "LSTM" else 0)
    assert g.total_macs == total
    summary = g.uncompressed_summary()
    assert summary is not None and f"'{name}' ({kind})" in summary
    assert "cannot be counted" not in summary
    assert f"holding {macs / total:.1%} of its MACs" in summary


class _Recurrent(nn.Module):
    """A conv, then a sequence module over the feature map's rows (batch first or not)."""

    def __init__(self, seq: nn.Module, batch_first: bool, width: int) -> None:
        super().__init__()
        self.conv, self.seq, self.batch_first = nn.Conv2d(3, 4, 3, padding=1), seq, batch_first
        self.fc = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.conv(x).permute(0, 2, 1, 3).flatten(2)  # (N, 8 rows, 4 x 8)
        if not self.batch_first:
            rows = rows.transpose(0, 1)
        if isinstance(self.seq, nn.MultiheadAttention):
            out = self.seq(rows, rows, rows, need_weights=False)[0]
        elif isinstance(self.seq, nn.Bilinear):
            out = self.seq(rows, rows)
        else:
            out = self.seq(rows)[0]
        return self.fc(out[:, -1] if self.batch_first else out[-1])


@pytest.mark.parametrize(
    ("seq", "batch_first", "width"),
    [
        pytest.param(nn.GRU(32, 6, num_layers=2, bidirectional=True), False, 12, id="gru-bi"),
        pytest.param(nn.RNN(32, 5, batch_first=True), True, 5, id="rnn"),
        pytest.param(nn.LSTM(32, 6, num_layers=2, batch_first=True), True, 6, id="lstm-2-layers"),
        pytest.param(nn.LSTM(32, 6, proj_size=3, bidirectional=True, batch_first=True), True, 6),
        pytest.param(nn.MultiheadAttention(32, 4, batch_first=True), True, 32, id="attention"),
        pytest.param(nn.MultiheadAttention(32, 2, kdim=32, vdim=32), False, 32, id="mha-seq"),
        pytest.param(nn.Bilinear(32, 32, 3), True, 3, id="bilinear"),
    ],
)  # fmt: skip
def test_recurrent_attention_and_bilinear_macs_are_counted(seq, batch_first, width):
    """Counted from the modules' sizes; checked against torch's flop counter running the same
    computation as plain matrix products (the LSTM's and the bilinear's by hand: the counter
    does not see them)."""
    model = _Recurrent(seq, batch_first, width).eval()
    x = torch.randn(2, 3, 8, 8)
    g = LayerGraph.from_module(model, x)
    [layer] = g.uncompressed
    if isinstance(seq, nn.LSTM):
        hidden, proj = seq.hidden_size, seq.proj_size
        out, dirs = proj or hidden, 2 if seq.bidirectional else 1
        width_in, per_step = 32, 0
        for _ in range(seq.num_layers):
            per_step += dirs * (4 * hidden * (width_in + out) + hidden * proj)
            width_in = out * dirs
        expected = 8 * per_step  # 8 steps (rows) per sample
    elif isinstance(seq, nn.Bilinear):  # the counter does not see it either
        expected = 8 * 3 * 32 * 32  # 8 rows x 3 outputs x 32 x 32
    else:  # the counter, on the module alone in training mode (attention's plain-math path)
        seq.train()
        rows = torch.randn(2, 8, 32) if batch_first else torch.randn(8, 2, 32)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            seq(rows, rows, rows) if isinstance(seq, nn.MultiheadAttention) else seq(rows)
        expected = counter.get_total_flops() // 2 // 2  # 2 FLOPs a MAC, 2 samples
    assert layer.macs == expected > 0
    summary = g.uncompressed_summary()
    assert summary is not None and "0.0%" not in summary and "cannot be counted" not in summary


def test_a_share_of_an_incomplete_total_is_never_printed():
    import dataclasses

    from jpq_env.core.graph import UncompressedLayer

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(256, 2))
    g = LayerGraph.from_module(model, X)
    blind = UncompressedLayer("custom", "Kernel", 1000, 1000, None)
    summary = dataclasses.replace(g, uncompressed=(blind,)).uncompressed_summary()
    assert summary is not None and "unknown share of its MACs" in summary
    assert "%" not in summary.split("unknown share")[0] and "0.0% of its MACs" not in summary


class _LastStep(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[0][:, -1]


class _Functional(nn.Module):
    """A custom module (traced through) that convolves with its own parameter functionally."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


class _WithFunctional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = _Functional()
        self.proj = nn.Parameter(torch.randn(6 * 64, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.mix(self.conv(x)), 1) @ self.proj


def test_functional_code_with_parameters_is_recorded_under_its_module():
    g = LayerGraph.from_module(_WithFunctional(), X)
    assert g.names == ("conv",)
    by_name = {x.name: x for x in g.uncompressed}
    assert by_name["mix"] == UncompressedLayer(
        "mix", "_Functional", 6 * 4 * 9, 6 * 4 * 9, 6 * 4 * 9 * 64
    )
    # The model's own `@ self.proj`, named after the parameter it multiplies by.
    assert by_name["proj"] == UncompressedLayer("proj", "matmul", 768, 768, 6 * 64 * 2)
    assert len(g.uncompressed) == 2
    assert g.uncompressed_macs == 6 * 4 * 9 * 64 + 6 * 64 * 2
    assert g.total_macs == _flop_counter_macs(_WithFunctional(), X)


def test_the_user_is_told_once_with_the_shares(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(graph_module, "_TOLD", set())  # as in a fresh process
    model = UpsampleNet()
    macs, weights = f"{UP / TOTAL:.1%}", f"{W_UP / W_TOTAL:.1%}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        LayerGraph.from_module(model, X)
        LayerGraph.from_module(model, X)  # the env, the evaluator ... build it again
    [warning] = [w for w in caught if issubclass(w.category, UncompressedLayersWarning)]
    text = str(warning.message)
    assert (
        f"'up' (ConvTranspose2d), holding {macs} of its MACs and {weights} of its weights" in text
    )
    assert "counted at 32-bit weights and inputs" in text and "alive" in text


def _task():
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(48, 3, 8, 8, generator=g), torch.arange(48) % 3)
    return make_task(randomize_bn(UpsampleNet()), train=data, test=data, val_size=16, calib_size=8)


UPSAMPLE_TASK = f"{__name__}:upsample_task"


def upsample_task():
    """A task factory for the command line (see ``UPSAMPLE_TASK``)."""
    return _task()


def test_the_env_counts_it_in_feasibility_rewards_and_observations():
    task = _task()
    share = UP / TOTAL
    with pytest.raises(ValueError, match=rf"alone cost BOPs {share:.5f} and size"):
        JPQEnv(task=task, budget_bops=1 / 64)
    budget = 0.75
    env = JPQEnv(task=task, budget_bops=budget, evaluator=LocalEvaluator(task, device="cpu"))
    obs, _ = env.reset(seed=0)
    # Before any decision, the uncompressed layer's BOPs are already spent.
    assert obs[FEATURES.index("bops_used")] == pytest.approx(squash(share / budget), abs=1e-6)
    done = False
    while not done:
        _, _, done, _, info = env.step(np.zeros(env.action_size, dtype=np.float32))
    cost = measure(env.graph, env.last_policy)
    assert info["bops"] == cost.bops and info["bops_ratio"] == cost.bops_ratio >= share
    assert info["budget_met"] and cost.bops <= budget * TOTAL * 1024


def test_report_lists_it(capsys: pytest.CaptureFixture[str]):
    assert (
        main(["report", "--task", "tests.core.graph.test_uncompressed:upsample_task", "--quiet"])
        == 0
    )
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("up "))
    assert "ConvTranspose2d" in row and f"{UP:,}" in row and f"{UP / TOTAL:.1%}" in row
    assert f"MACs {TOTAL:,}" in out


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        pytest.param(lambda: torchvision.models.resnet18(), (1, 3, 32, 32), id="resnet18"),
        pytest.param(lambda: torchvision.models.mobilenet_v2(), (1, 3, 32, 32), id="mobilenet_v2"),
        pytest.param(ResNet20, (1, 3, 32, 32), id="resnet20"),
        pytest.param(LeNet5, (1, 1, 28, 28), id="lenet5"),
        pytest.param(lambda: load_task("digits").model, (1, 1, 8, 8), id="digits"),
        pytest.param(lambda: load_task("digits-deep").model, (1, 1, 16, 16), id="digits-deep"),
    ],
)
def test_the_built_in_architectures_compress_every_layer(build, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncompressedLayersWarning)
        g = LayerGraph.from_module(build(), torch.randn(*shape))
    assert g.uncompressed == () and g.total_macs == g.compressible_macs
