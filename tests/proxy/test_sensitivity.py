"""The sensitivity table (``jpq_env.proxy.sensitivity``): entries are the KL of one compressed
layer, interpolated and weighted by kernel share, cached on disk.
"""

import math

import numpy as np
import pytest
import torch

from jpq_env import LocalEvaluator, Policy, load_task
from jpq_env.core.policy import LayerPolicy
from jpq_env.envs import JPQEnv
from jpq_env.proxy.sensitivity import SensitivityTable, measure_sensitivity

ACTS = [2, 3, 4, 5, 6, 8]


@pytest.fixture(scope="module")
def table_and_task():
    task = load_task("digits")
    env = JPQEnv(task=task, act_bits=ACTS, budget_bops=1 / 128, sensitivity=True, device="cpu")
    return env.sensitivity, task, env


def _single_layer(graph, layer: int, bits: np.ndarray, act: int) -> Policy:
    fp32 = Policy.uniform(graph)
    layers = list(fp32.layers)
    layers[layer] = LayerPolicy(graph.names[layer], bits, act)
    return Policy(tuple(layers), fp32.fingerprint)


def test_table_entries_are_the_kl_of_one_compressed_layer(table_and_task):
    table, task, env = table_and_task
    graph = env.graph
    # an independent evaluator on the same 256 images and 128 calibration images, no prefix reuse
    from jpq_env.proxy.sensitivity import _subset
    from jpq_env.tasks import Task

    small = Task(
        task.name,
        task.model,
        task.example_input,
        task.train,
        _subset(task.val, 256),
        _subset(task.calib, 128),
        task.test,
        task.num_classes,
    )
    ev = LocalEvaluator(small, metric="kl", device="cpu", prefix_cache_mb=0)
    k = graph.layers[2].out_channels
    score = ev.accuracy(_single_layer(graph, 2, np.full(k, 3), 32))
    assert table.weight[2, table.bits.index(3)] == pytest.approx(-math.log(score), rel=1e-9)
    assert (table.weight[:, 0] > table.weight[:, -1]).all()  # 2 bits hurt more than 8
    assert (np.diff(table.prune[:-1], axis=1) >= 0).all()  # pruning more hurts more
    assert np.isinf(table.prune[-1]).all()  # the output layer cannot be pruned
    assert (table.act[0] == 0).all()  # the network input's width is fixed


def test_contribution_interpolates_and_weights_by_kernel_share(table_and_task):
    table, _, env = table_and_task
    k = env.graph.layers[1].out_channels
    bits = np.full(k, 4)
    bits[: k // 2] = 2  # half at 2 bits, half at 4
    expected = 0.5 * table.weight[1, table.bits.index(2)] + 0.5 * table.weight[1, 2]
    expected += table.act[1, ACTS.index(6)]
    assert table.contribution(1, bits, 6) == pytest.approx(expected)
    pruned = np.full(k, 8)
    pruned[: round(0.3 * k)] = 0  # 30%: halfway between the 20% and 40% measurements
    share = round(0.3 * k) / k
    lo, hi = table.prune[1, 0], table.prune[1, 1]
    prune = lo + (share - 0.2) / 0.2 * (hi - lo)
    keep = 1 - share
    want = prune + keep * table.weight[1, -1] + keep * table.act[1, -1]
    assert table.contribution(1, pruned, 8) == pytest.approx(want)
    assert table.contribution(1, np.full(k, 32), 32) == 0.0


def test_table_round_trips_and_is_read_from_the_disk_cache(table_and_task):
    table, task, _ = table_and_task
    again = SensitivityTable.from_json(table.to_json())
    assert np.array_equal(again.prune, table.prune) and np.array_equal(again.weight, table.weight)
    import time

    from jpq_env.proxy import sensitivity

    sensitivity._MEMORY.clear()
    start = time.perf_counter()
    cached = JPQEnv(task=task, act_bits=ACTS, budget_bops=1 / 128, sensitivity=True, device="cpu")
    assert time.perf_counter() - start < 10
    assert np.array_equal(cached.sensitivity.weight, table.weight)


def test_measure_without_activation_decisions_and_bad_values(table_and_task):
    _, task, env = table_and_task
    table = measure_sensitivity(task, env.graph, (2, 4, 8), (), cache=False)
    assert table.act.shape == (len(env.graph), 0) and table.act_kl(1, 4) == 0.0
    for kwargs, text in (({"sensitivity": "yes"}, "sensitivity"), ({"error_shaping": -1}, "error")):
        with pytest.raises(ValueError, match=text):
            JPQEnv(task=task, device="cpu", **kwargs)
    torch.manual_seed(0)


def test_measuring_reports_each_layer_and_says_how_the_table_was_obtained(tmp_path, monkeypatch):
    from jpq_env.proxy import sensitivity

    monkeypatch.setenv("JPQ_CACHE_DIR", str(tmp_path))
    task = load_task("digits")
    graph = JPQEnv(task=task, device="cpu").graph
    calls: list[tuple[int, int]] = []
    args = dict(bits=[2, 8], act_bits=[], images=64, calib_images=32)
    with sensitivity.reporting(lambda done, total: calls.append((done, total))):
        measure_sensitivity(task, graph, **args)
    n = len(graph.layers)
    assert [c[0] for c in calls] == list(range(n + 1)) and {c[1] for c in calls} == {n}
    measured = sensitivity.last_measurement()
    assert measured is not None and measured.source == "measured"
    assert tmp_path in measured.path.parents and measured.path.is_file()
    # one evaluation per width and per prunable sparsity of each layer, plus the FP32 reference
    prunable = n - len(graph.output_layers)
    assert measured.evaluations >= n * 2 + 1
    assert measured.evaluations <= n * 2 + prunable * len(sensitivity.SPARSITIES) + 2
    calls.clear()
    with sensitivity.reporting(lambda done, total: calls.append((done, total))):
        measure_sensitivity(task, graph, **args)
    assert calls == [] and sensitivity.last_measurement().source == "memory"
    sensitivity._MEMORY.clear()
    measure_sensitivity(task, graph, **args)
    assert sensitivity.last_measurement().source == "disk"
    assert sensitivity.last_measurement().evaluations == 0
