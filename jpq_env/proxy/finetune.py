"""Short quantization-aware fine-tuning of a compressed model, bits and masks fixed.

Weights keep a float copy that the optimizer updates; every forward pass uses their quantized
version at the policy's widths through a straight-through estimator (the gradient passes the
rounding as if it were the identity). Pruned kernels stay exactly zero (their bias and BatchNorm
scale and shift too), and layer inputs are fake-quantized at the policy's activation widths, also
with a straight-through estimator. The user's model is never written: training happens on the
working copy of a ``CompressedModel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from jpq_env import validation as check
from jpq_env.core.policy import Policy
from jpq_env.core.quant import FULL_PRECISION, ActRange, quantize_activation, quantize_weight
from jpq_env.proxy.data import top1
from jpq_env.proxy.evaluator import LocalEvaluator

__all__ = ["FinetuneResult", "finetune"]


class _STEWeight(nn.Module):
    """Parametrization: quantized weight forward, identity gradient."""

    bits: torch.Tensor

    def __init__(self, bits: torch.Tensor, method: str) -> None:
        super().__init__()
        self.register_buffer("bits", bits)
        self.method = method

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = quantize_weight(w.detach(), self.bits, self.method)
        return w + (q - w).detach()


class _Mask(nn.Module):
    """Parametrization: keep masked entries at zero."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class _STEActivation:
    def __init__(self, bits: int, rng: ActRange) -> None:
        self.bits = bits
        self.rng = rng

    def __call__(self, _: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]
        return (x + (quantize_activation(x, self.bits, self.rng) - x).detach(), *args[1:])


@dataclass(frozen=True)
class FinetuneResult:
    """Accuracy on the test split before and after fine-tuning, and the fine-tuned tensors.

    Attributes:
        accuracy_before: Test top-1 of the compressed model (BN re-calibrated, not fine-tuned).
        accuracy_after: Test top-1 after fine-tuning (same widths, masks and activation widths).
        state_dict: The fine-tuned model's tensors, weights already quantized.
    """

    accuracy_before: float
    accuracy_after: float
    state_dict: dict[str, torch.Tensor]


def finetune(
    evaluator: LocalEvaluator,
    policy: Policy,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune the model compressed by ``policy`` on the task's training split.

    Args:
        evaluator: The task's evaluator (its working copy is where training happens).
        policy: The compression policy (widths and masks stay fixed).
        epochs: Passes over the training split.
        lr: Adam learning rate.
        batch_size: Training batch size.
        seed: Seed of the shuffling.
        progress: Show a progress bar over the training batches (the loss on it).

    Returns:
        Test accuracy before (as ``LocalEvaluator.test_accuracy`` reports it) and after.
    """
    epochs = check.integer("epochs", epochs, low=1)
    lr = check.number("lr", lr, low=0.0, low_open=True)
    batch_size = check.integer("batch_size", batch_size, low=1)
    seed = check.seed("seed", seed)
    before = evaluator.test_accuracy(policy)
    module = evaluator.prepare(policy)
    cm, graph = evaluator.compressed, evaluator.graph
    cm.set_activation_bits([FULL_PRECISION] * len(graph))  # the STE hooks below take over
    live = graph.liveness(policy.kept())
    hooks = []
    for info, lp, layer in zip(graph.layers, policy.layers, cm.layers, strict=True):
        alive = torch.tensor(live.alive_out[info.index])
        bits = torch.from_numpy(np.where(alive.numpy(), lp.bits, 0))
        parametrize.register_parametrization(layer, "weight", _STEWeight(bits, cm.weight_method))
        if layer.bias is not None:
            parametrize.register_parametrization(layer, "bias", _Mask(alive.float()))
        if lp.act_bits < FULL_PRECISION and cm.act_ranges is not None:
            hook = _STEActivation(lp.act_bits, cm.act_ranges[info.index])
            hooks.append(layer.register_forward_pre_hook(hook))
    for name, mask in live.bn_alive.items():
        bn = module.get_submodule(name)
        for attr in ("weight", "bias"):
            if getattr(bn, attr, None) is not None:
                parametrize.register_parametrization(
                    bn, attr, _Mask(torch.from_numpy(mask).float())
                )
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    train = evaluator.task.train
    from tqdm import tqdm

    steps = epochs * -(-len(train) // batch_size)  # type: ignore[arg-type]
    bar = tqdm(total=steps, desc="fine-tuning", unit="batch", disable=not progress)
    try:
        for _ in range(epochs):
            module.train()
            order = torch.randperm(len(train), generator=generator)  # type: ignore[arg-type]
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size].tolist()
                x = torch.stack([train[i][0] for i in idx]).to(evaluator.device)
                y = torch.as_tensor([int(train[i][1]) for i in idx], device=evaluator.device)
                loss = nn.functional.cross_entropy(module(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
        module.eval()
        after = top1(module, evaluator.task.test, evaluator.batch_size, evaluator.device)
        for layer in cm.layers:
            for attr in ("weight", "bias"):
                if parametrize.is_parametrized(layer, attr):
                    parametrize.remove_parametrizations(layer, attr, leave_parametrized=True)
        for name in live.bn_alive:
            bn = module.get_submodule(name)
            for attr in ("weight", "bias"):
                if parametrize.is_parametrized(bn, attr):
                    parametrize.remove_parametrizations(bn, attr, leave_parametrized=True)
        tuned = {k: v.detach().clone() for k, v in module.state_dict().items()}
    finally:
        bar.close()
        for h in hooks:
            h.remove()
        cm.restore()  # the working copy goes back to FP32 for the next evaluation
    return FinetuneResult(before, after, tuned)
