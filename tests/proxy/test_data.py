"""Data helpers of the proxy (``jpq_env.proxy.data``): the device and the automatic batch size."""

import pytest
import torch

from jpq_env.core.graph import LayerGraph
from jpq_env.proxy.data import ACTIVATION_BUDGET, MAX_BATCH, auto_batch_size, resolve_device
from jpq_env.proxy.evaluator import LocalEvaluator
from tests.proxy.toys import labelled_task


def test_device_auto_is_the_cpu_without_cuda_and_bad_devices_are_named():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    assert LocalEvaluator(labelled_task()).device.type == expected
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' asked for, but CUDA is not available"):
            LocalEvaluator(labelled_task(), device="cuda")


def test_auto_batch_size_bounds_the_widest_activation():
    ev = LocalEvaluator(labelled_task())  # PlainNet on 3x8x8: tiny activations, the cap applies
    assert ev.batch_size == MAX_BATCH
    graph = LayerGraph.from_module(
        torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1)), torch.zeros(1, 3, 224, 224)
    )
    widest = 64 * 224 * 224
    assert auto_batch_size(graph, torch.zeros(1, 3, 224, 224)) == ACTIVATION_BUDGET // widest
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1 or None, got 0"):
        LocalEvaluator(labelled_task(), batch_size=0)
