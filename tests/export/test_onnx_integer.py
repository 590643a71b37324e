"""The ONNX export for integer kernels: BatchNorm folded, levels widened, outputs requantized."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from jpq_env.core.compress import CompressedModel, calibrate_ranges  # noqa: E402
from jpq_env.core.graph import LayerGraph  # noqa: E402
from jpq_env.export.onnx import (  # noqa: E402
    _QuantizedWeight,
    _widening,
    export_onnx,
    fold_batchnorm,
    load_onnx,
    onnx_top1,
    qdq_module,
    quantize_outputs,
    write_onnx,
)
from jpq_env.export.pruned import ChannelGather, ChannelScatter, prune_physically  # noqa: E402
from jpq_env.proxy.evaluator import LocalEvaluator  # noqa: E402
from jpq_env.tasks.registry import load_task  # noqa: E402
from tests.export.test_onnx import _policy  # noqa: E402
from tests.nets import ResidualNet, randomize_bn  # noqa: E402


def _residual(act: int, widths, prune: float, seed: int = 0):
    torch.manual_seed(seed)
    model = randomize_bn(ResidualNet().eval(), seed)
    with torch.no_grad():
        model.bna.weight[0] = -0.7  # a negative BatchNorm scale: the levels change sign
    x = torch.randn(64, 3, 8, 8)
    graph = LayerGraph.from_module(model, x[:1])
    ranges = calibrate_ranges(model, graph, [x])
    cm = CompressedModel(model, graph, act_ranges=ranges)
    policy = _policy(graph, np.random.default_rng(seed), widths, act, prune)
    cm.apply(policy)
    pruned = prune_physically(model, cm.module.state_dict(), graph, policy, x[:1], ranges)
    return x, graph, policy, cm, pruned


def _optimized(path, tmp_path) -> Counter:
    """The op types of the graph onnxruntime runs (its optimized model, as it writes it)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def test_batchnorm_folds_into_the_scales_and_the_levels_stay():
    x, graph, policy, cm, pruned = _residual(32, [2, 4, 8], 0.3)
    plain = qdq_module(pruned, graph, policy, cm.quantizers)
    folded = qdq_module(pruned, graph, policy, cm.quantizers)
    assert fold_batchnorm(folded) == 3  # bn0, bna, bnb; the head and fc have none
    assert not [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        assert torch.allclose(folded(x), plain(x), rtol=1e-4, atol=1e-5)
    bn = pruned.get_submodule("bna")
    gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    before = plain.get_submodule("a.weight")
    after = folded.get_submodule("a.weight")
    assert isinstance(after, _QuantizedWeight)
    rows = torch.from_numpy(before.rows[0])
    sign = torch.sign(gain[rows]).to(torch.int8).reshape(-1, 1, 1, 1)
    assert torch.equal(after.levels, before.levels * sign)  # the policy's levels, signs aside
    assert torch.allclose(after.scale, before.scale * gain[rows].abs())
    assert (after.scale >= 0).all()


def test_widening_takes_each_kernel_to_the_int8_range():
    levels = np.array([[1, -1, 0], [7, -3, 2], [0, 0, 0], [127, -127, 5]])
    k = _widening(levels)
    assert k.tolist() == [127, 18, 127, 1]
    assert np.abs(levels * k[:, None]).max() <= 127


def test_residual_net_runs_on_integer_kernels(tmp_path):
    x, graph, policy, cm, pruned = _residual(8, [8], 0.3)
    qdq = qdq_module(pruned, graph, policy, cm.quantizers, fold=True)
    added = quantize_outputs(qdq, [x[:32], x[32:]])
    assert added >= 2  # the residual branch's output and the add's
    path = tmp_path / "int.onnx"
    write_onnx(qdq, x[:1], path, integer=True)
    written = onnx.load(str(path))
    assert not [n for n in written.graph.node if n.op_type == "BatchNormalization"]
    for init in written.graph.initializer:
        if init.name.endswith(".levels"):
            assert init.data_type == onnx.TensorProto.INT8
    ops = _optimized(path, tmp_path)
    # a, b (its output quantized before the add) and the head: integer convolutions; the
    # residual add an integer add; the stem reads a signed input and stays float
    assert ops["QLinearConv"] == 3, ops
    assert ops["QLinearAdd"] == 1, ops
    with torch.no_grad():
        expected = cm.module(x)
        torch_logits = qdq(x)
    for optimize in (False, True):
        got = load_onnx(path, threads=1, optimize=optimize)(x)
        # the added 8-bit quantizers move logits by a few of their steps, not more
        assert (got - torch_logits).abs().max() <= 0.05 * expected.abs().max(), optimize
        assert (got - expected).abs().mean() <= 0.05 * expected.abs().mean(), optimize
        assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.9


def test_digits_integer_export_scores_as_evaluate(tmp_path):
    task = load_task("digits")
    ev = LocalEvaluator(task, device="cpu")
    policy = _policy(ev.graph, np.random.default_rng(1), [8], 8, 0.0)
    info = export_onnx(ev, policy, tmp_path / "w8a8.onnx")
    assert info["integer"] is True
    ops = _optimized(tmp_path / "w8a8.onnx", tmp_path)
    assert ops["QLinearConv"] == 4 and not ops["Conv"], ops  # every convolution
    n = len(task.test)
    got = onnx_top1(load_onnx(tmp_path / "w8a8.onnx"), task.test)
    assert abs(got - ev.test_accuracy(policy)) * n <= 3


def test_a_scatter_read_by_a_gather_becomes_one_move():
    x, _, _, cm, pruned = _residual(8, [4, 8], 0.5, seed=3)
    for node in pruned.graph.nodes:
        module = pruned.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, ChannelScatter):
            users = list(node.users)
            assert not (
                len(users) == 1
                and users[0].op == "call_module"
                and isinstance(pruned.get_submodule(users[0].target), ChannelGather)
            )
    with torch.no_grad():
        assert torch.allclose(pruned(x), cm.module(x), rtol=1e-4, atol=1e-5)


def test_a_zero_batchnorm_scale_and_the_logits_stay_exact(tmp_path):
    """A kernel folded with a zero (or negligible) BatchNorm scale would give onnxruntime a zero
    weight scale, which overflows its int32 bias; it is stored as zero levels instead. The
    model's output is never requantized."""
    x, graph, policy, cm, pruned = _residual(8, [8], 0.0, seed=5)
    bn = pruned.get_submodule("bna")
    with torch.no_grad():
        bn.weight[:2] = 0.0
        bn.weight[2] = 1e-9
        bn.bias[:3] = 0.5
    qdq = qdq_module(pruned, graph, policy, cm.quantizers, fold=True)
    quantize_outputs(qdq, [x])
    (output,) = [n for n in qdq.graph.nodes if n.op == "output"]
    assert output.args[0].target == "fc"  # the logits come straight from the last layer
    path = tmp_path / "zero.onnx"
    write_onnx(qdq, x[:1], path, integer=True)
    assert _optimized(path, tmp_path)["QLinearConv"] == 3
    with torch.no_grad():
        plain = qdq(x)
    optimized = load_onnx(path, threads=1)(x)
    as_written = load_onnx(path, threads=1, optimize=False)(x)
    scale = plain.abs().max()
    assert (as_written - plain).abs().max() <= 1e-4 * scale
    assert (optimized - plain).abs().mean() <= 0.005 * scale  # integer kernels: roundings only
