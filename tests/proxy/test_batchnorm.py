"""BatchNorm re-calibration: statistics of the whole calibration split, however it is batched."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from jpq_env import LocalEvaluator, Policy, make_task


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """10 classes of 1x12x12 images: a class template plus noise (learnable in seconds)."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 12, 12, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, 10, (n,), generator=g)
    x = templates[y] * 0.9 + torch.randn(n, 1, 12, 12, generator=g)
    return x, y


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, TensorDataset, TensorDataset]:
    torch.manual_seed(0)
    model = _net()
    x, y = _blobs(2000, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(2)
    for _ in range(2):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():  # the model's own statistics: those of its whole training set
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None
        model(x)
    model.eval()
    order = torch.argsort(y, stable=True)  # a folder-per-class split, read in order
    train = TensorDataset(x[order], y[order])
    vx, vy = _blobs(1000, seed=3)
    return model, train, TensorDataset(vx, vy)


def _stats(ev: LocalEvaluator, policy: Policy) -> list[np.ndarray]:
    module = ev.prepare(policy)
    return [
        t.detach().double().numpy().copy()
        for m in module.modules()
        if isinstance(m, nn.BatchNorm2d)
        for t in (m.running_mean, m.running_var)
    ]


@pytest.mark.parametrize("method", ["shift", "replace"])
def test_statistics_do_not_depend_on_the_batching(trained, method):
    model, train, val = trained
    task = make_task(model, train=train, val=val, test=val, calib_size=256, name="blobs")
    evaluators = {
        bs: LocalEvaluator(task, batch_size=bs, device="cpu", bn_method=method)
        for bs in (3, 100, 256)
    }
    policy = Policy.uniform(evaluators[3].graph, 3, 4)
    stats = {bs: _stats(ev, policy) for bs, ev in evaluators.items()}
    for bs in (100, 256):  # 256 % 100 = 56: an uneven last batch
        for a, b in zip(stats[3], stats[bs], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    if method == "shift":
        return  # its formula is checked below
    # Independently: torch's own train-mode pass over the whole split as one batch gives the
    # population mean and (unbiased) variance of every BatchNorm's input.
    reference = evaluators[256]
    module = reference.prepare(policy)
    for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        module(torch.cat([x for x, _ in reference._batches("calib")]))
    exact = [
        t.detach().double().numpy()
        for m in module.modules()
        if isinstance(m, nn.BatchNorm2d)
        for t in (m.running_mean, m.running_var)
    ]
    # torch normalises a train-mode batch by its biased variance (n, not n - 1), the proxy by
    # the unbiased one it stores: later layers differ by about 1/n (n = 256 x 12 x 12 values).
    for a, b in zip(stats[3], exact, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


def test_class_sorted_split_scores_fp32_as_the_model_scores_itself(trained):
    model, train, val = trained
    with torch.no_grad():
        own = float((model(val.tensors[0]).argmax(1) == val.tensors[1]).double().mean())
    task = make_task(model, train=train, val=val, test=val, calib_size=256, name="blobs")
    ev = LocalEvaluator(task, batch_size=222, device="cpu")  # 222 + 34: an uneven last batch
    assert abs(ev.fp32_accuracy - own) <= 0.005
    # One treatment of FP32 on both splits: the test split here is the held-out one.
    assert ev.test_accuracy(None) == pytest.approx(ev.fp32_accuracy, abs=1e-12)


def test_shift_keeps_fp32_and_moves_the_trained_statistics_by_the_measured_shift(trained):
    model, train, val = trained
    task = make_task(model, train=train, val=val, test=val, calib_size=256, name="blobs")
    ev = LocalEvaluator(task, batch_size=100, device="cpu")
    trained_stats = [
        (m.running_mean.double().clone(), m.running_var.double().clone())
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    # FP32: the model's own statistics, bitwise.
    fp32 = [
        (m.running_mean.double(), m.running_var.double())
        for m in ev.prepare(None).modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    for (mean, var), (m0, v0) in zip(fp32, trained_stats, strict=True):
        assert torch.equal(mean, m0) and torch.equal(var, v0)

    # A compressed policy: each BatchNorm's input moments, measured independently on the whole
    # calibration split (the network run module by module, every BatchNorm normalising with the
    # statistics the proxy set), against the FP32 model's moments on the same images.
    policy = Policy.uniform(ev.graph, 2, 3)
    module = ev.prepare(policy)
    calib = torch.cat([x for x, _ in ev._batches("calib")]).contiguous()
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]

    def moments_of(net: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        seen = []
        hooks = [
            b.register_forward_pre_hook(lambda _, a: seen.append(a[0].double()))
            for b in net.modules()
            if isinstance(b, nn.BatchNorm2d)
        ]
        with torch.no_grad():
            net(calib)
        for h in hooks:
            h.remove()
        return [(x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)) for x in seen]

    measured = moments_of(module)
    reference = moments_of(model)
    for bn, (mq, vq), (mf, vf), (m0, v0) in zip(
        bns, measured, reference, trained_stats, strict=True
    ):
        ratio = vq / vf
        torch.testing.assert_close(bn.running_var.double(), v0 * ratio, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(
            bn.running_mean.double(), mq - ratio.sqrt() * (mf - m0), rtol=1e-4, atol=1e-6
        )
