"""ONNX export: integer weights, QDQ activations, pruned channels removed; run by onnxruntime."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from jpq_env.core.compress import CompressedModel, calibrate_ranges  # noqa: E402
from jpq_env.core.costs import measure  # noqa: E402
from jpq_env.core.graph import LayerGraph  # noqa: E402
from jpq_env.core.policy import LayerPolicy, Policy  # noqa: E402
from jpq_env.export.onnx import (  # noqa: E402
    ONNX_OPSET,
    OnnxFormatError,
    export_onnx,
    load_onnx,
    onnx_top1,
    qdq_module,
    write_onnx,
)
from jpq_env.export.pruned import prune_physically, weight_count  # noqa: E402
from jpq_env.proxy.evaluator import LocalEvaluator  # noqa: E402
from jpq_env.tasks.registry import load_task  # noqa: E402
from tests.nets import ResidualNet, SeparableNet, randomize_bn  # noqa: E402

_T = onnx.TensorProto
_INTEGER = {_T.INT4, _T.INT8, _T.INT16}


def _policy(graph: LayerGraph, rng: np.random.Generator, widths, act: int, prune: float) -> Policy:
    layers = []
    for info in graph.layers:
        bits = rng.choice(widths, size=info.out_channels)
        if info.index not in graph.output_layers:
            bits[rng.random(info.out_channels) < prune] = 0
        layers.append(LayerPolicy(info.name, bits, act))
    return Policy(tuple(layers), graph.fingerprint)


def _assert_close(path, x: torch.Tensor, expected: torch.Tensor, act: int) -> torch.Tensor:
    """The ONNX model's logits on ``x`` against the compressed model's; returns the optimized ones.

    The weights are bitwise the compressed model's, but the runtimes add up in other orders (the
    more so with onnxruntime's optimizations, NCHWc convolutions): an activation on a rounding
    boundary may take the neighbouring level, which moves a few logits by about one activation
    step (``2**-act`` of its range). That is the quantization tolerance: the largest difference a
    few steps, the mean one a step at most, relative to the logits' size; with float activations
    float rounding only.
    """
    for optimize in (False, True):
        got = load_onnx(path, threads=1, optimize=optimize)(x)
        _assert_near(got, expected, act, optimize)
    return got


def _assert_near(got: torch.Tensor, expected: torch.Tensor, act: int, what: object = "") -> None:
    """``got`` is ``expected`` within the quantization tolerance of ``_assert_close``."""
    if act >= 32:
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), (got - expected).abs().max()
        return
    step = max(2.0**-act, 2.0**-12)
    diff = (got - expected).abs()
    assert diff.max() <= 4 * step * expected.abs().max(), (what, diff.max())
    assert diff.mean() <= step * expected.abs().mean(), (what, diff.mean())


def _initializers(path) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def digits():
    task = load_task("digits")
    return task, LocalEvaluator(task, device="cpu")


@pytest.mark.parametrize(
    ("widths", "act", "container"),
    [
        ([2, 3, 4], 8, _T.INT4),
        ([1, 2], 4, _T.INT4),
        ([5, 8], 8, _T.INT8),
        ([8, 16], 16, _T.INT16),
        ([3, 6], 32, _T.INT8),
    ],
)
def test_digits_matches_the_compressed_model(digits, tmp_path, widths, act, container):
    task, ev = digits
    policy = _policy(ev.graph, np.random.default_rng(len(widths) + act), widths, act, 0.4)
    path = tmp_path / "m.onnx"
    info = export_onnx(ev, policy, path, integer=False)  # the compressed model's quantizers only
    assert info["file_bytes"] == path.stat().st_size and info["opset"] == ONNX_OPSET == 21
    x = torch.stack([task.test[i][0] for i in range(len(task.test))])
    with torch.no_grad():
        expected = ev.prepare(policy)(x)
    _assert_close(path, x, expected, act)
    model = load_onnx(path)
    # top-1 on the test split: jpq evaluate's, within one image
    n = len(task.test)
    assert abs(onnx_top1(model, task.test) - ev.test_accuracy(policy)) * n <= 1 + 1e-9
    # every layer's input goes through QuantizeLinear/DequantizeLinear at its width
    nodes = onnx.load(str(path)).graph.node
    quantize = [n for n in nodes if n.op_type == "QuantizeLinear"]
    assert len(quantize) == (len(ev.graph.layers) if act < 32 else 0)
    clips = [
        n for n in nodes if n.op_type == "Clip"
    ]  # digits: unsigned inputs; 8 and 16 bits fill their container
    assert len(clips) == (len(ev.graph.layers) if act not in (8, 16, 32) else 0)
    # the weights are stored as integer levels, one container per layer, no float weight
    inits = _initializers(path)
    for name in ev.graph.names:
        assert inits[f"{name}.weight.levels"].data_type == container
        assert f"{name}.weight" not in inits
    # floats: per channel at most a scale, a bias and BatchNorm's four tensors
    float_bytes = sum(len(i.raw_data) for i in inits.values() if i.data_type == _T.FLOAT)
    assert float_bytes <= 4 * 6 * sum(i.out_channels for i in ev.graph.layers)


def test_int4_levels_are_packed_and_the_file_is_small(digits, tmp_path):
    _, ev = digits
    policy = _policy(ev.graph, np.random.default_rng(0), [4], 8, 0.0)
    path = tmp_path / "w4.onnx"
    info = export_onnx(ev, policy, path, integer=False)
    weights = measure(ev.graph, policy).size_bits // 8  # 4 bits a weight, nothing pruned
    assert info["weight_bytes"] == weights
    inits = _initializers(path)
    levels = [i for n, i in inits.items() if n.endswith(".levels")]
    assert len(levels) == len(ev.graph.layers)
    assert all(i.data_type == _T.INT4 for i in levels)
    assert sum(len(i.raw_data) for i in levels) == weights  # two levels a byte
    for i in levels:
        values = onnx.numpy_helper.to_array(i)
        assert values.min() >= -7 and values.max() <= 7  # the narrowed 4-bit range
    assert path.stat().st_size < 1.5 * weights + 8_000
    assert path.stat().st_size < measure(ev.graph, policy).size_bits_fp32 / 8 / 5


@pytest.mark.parametrize("net", [ResidualNet, SeparableNet])
@pytest.mark.parametrize("act", [1, 2, 4, 8, 32])
def test_test_nets_match_the_compressed_model(tmp_path, net, act):
    torch.manual_seed(0)
    model = randomize_bn(net().eval(), 0)
    x = torch.randn(64, 3, 8, 8)
    graph = LayerGraph.from_module(model, x[:1])
    ranges = calibrate_ranges(model, graph, [x])
    cm = CompressedModel(model, graph, act_ranges=ranges)
    rng = np.random.default_rng(act)
    for trial in range(3):
        policy = _policy(graph, rng, [1, 2, 3, 4, 8, 16, 32], act, 0.3)
        cm.apply(policy)
        pruned = prune_physically(model, cm.module.state_dict(), graph, policy, x[:1], ranges)
        qdq = qdq_module(pruned, graph, policy, cm.quantizers)
        path = tmp_path / f"{trial}.onnx"
        write_onnx(qdq, x[:1], path)
        with torch.no_grad():
            expected = cm.module(x)
            assert torch.allclose(qdq(x), pruned(x), rtol=1e-5, atol=1e-6), trial
            # BatchNorm folded: the same logits up to float rounding at quantizer boundaries
            folded = qdq_module(pruned, graph, policy, cm.quantizers, fold=True)
            _assert_near(folded(x), expected, act)
        got = _assert_close(path, x, expected, act)
        assert (got.argmax(1) != expected.argmax(1)).sum() <= 1, trial
        assert got.shape == expected.shape
        assert load_onnx(path)(x[:1]).shape == (1, expected.shape[1])  # the batch is dynamic
        # pruned channels are removed: the stored levels are the cost model's weights
        inits = _initializers(path)
        stored = sum(
            int(np.prod(i.dims))
            for n, i in inits.items()
            if n.endswith((".levels", ".weight.full"))
        )
        assert stored == weight_count(pruned), trial


def test_a_foreign_or_malformed_file_is_named(tmp_path):
    with pytest.raises(OnnxFormatError, match=r"no ONNX model at '.*absent.onnx'"):
        load_onnx(tmp_path / "absent.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(OnnxFormatError, match=r"'.*bad.onnx' is not a loadable ONNX model"):
        load_onnx(bad)
    # a valid ONNX model that is not an export: two inputs
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Add", ["a", "b"], ["c"])],
        "foreign",
        [h.make_tensor_value_info(n, _T.FLOAT, [1]) for n in ("a", "b")],
        [h.make_tensor_value_info("c", _T.FLOAT, [1])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 21)]), str(foreign))
    with pytest.raises(OnnxFormatError, match=r"'.*foreign.onnx' is not a jpq-env ONNX export"):
        load_onnx(foreign)


def test_cli_export_onnx_reports_what_it_wrote(tmp_path, capsys):
    from jpq_agents.cli import main

    task = load_task("digits")
    graph = LayerGraph.from_module(task.model, task.example_input)
    policy = _policy(graph, np.random.default_rng(5), [2, 4, 8], 8, 0.5)
    policy.save(tmp_path / "policy.json")
    out = tmp_path / "model.onnx"
    args = ["export", str(tmp_path / "policy.json"), "--out", str(out), "--format", "onnx"]
    assert main([*args, "--exact"]) == 0
    text = capsys.readouterr().out
    assert f"{out.stat().st_size:,} bytes" in text and "ONNX opset 21" in text
    assert f"size model {measure(graph, policy).size_bits / 8:,.0f} bytes" in text
    accuracy = LocalEvaluator(task, device="cpu").test_accuracy(policy)
    assert f"(evaluate: {accuracy:.2%})" in text
    reloaded = float(text.split("reloaded model test accuracy ")[1].split("%")[0]) / 100
    assert abs(reloaded - accuracy) * len(task.test) <= 1.01


def test_cli_export_onnx_benchmark_times_it_against_fp32(tmp_path, capsys):
    from jpq_agents.cli import main

    task = load_task("digits")
    graph = LayerGraph.from_module(task.model, task.example_input)
    _policy(graph, np.random.default_rng(5), [8], 8, 0.0).save(tmp_path / "policy.json")
    out = tmp_path / "model.onnx"
    args = ["export", str(tmp_path / "policy.json"), "--out", str(out), "--format", "onnx"]
    assert main([*args, "--benchmark"]) == 0
    text = capsys.readouterr().out
    assert "for integer kernels" in text
    for batch in (1, 64):
        line = next(x for x in text.splitlines() if f"batch {batch}:" in x)
        ms, ms32 = (float(v) for v in re.findall(r"([0-9.e+-]+) ms", line))
        ratio = float(re.search(r"\(([0-9.]+)x\)", line).group(1))
        assert ms > 0 and ms32 > 0 and abs(ratio - ms32 / ms) <= 0.01 + 0.002 * ratio
    # the flags belong to the ONNX format
    assert main([*args[:-2], "--benchmark"]) == 2
    assert "--benchmark applies to --format onnx only" in capsys.readouterr().err
