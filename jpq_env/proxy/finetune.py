"""Quantization-aware fine-tuning of a compressed model: widths and masks fixed, steps learned.

The recipe the literature runs after a mixed-precision search (LSQ, Esser et al. 2020, with
knowledge distillation):

- **Learned step sizes.** Every quantized kernel's weight step and every quantized layer input's
  activation step is a parameter, initialised from the proxy's quantizers (the kernel's
  ``WeightQuantizer`` scale, the calibrated activation range over its levels), so that before the
  first update the fine-tuned model computes exactly the compressed model's logits. The forward
  pass rounds with a straight-through estimator; the step's gradient is LSQ's, scaled by
  ``1 / sqrt(elements * largest level)``, and the step is learned in the log domain (``step =
  initial * exp(t)``, ``t`` from 0): it stays positive and moves by its own relative size (a
  small step, a normalised image's, once overshot through zero and zeroed a whole layer).
  Binary kernels (1 bit: ``sign(w) * step``) learn their step too; 32-bit kernels are not
  quantized; a signed 1-bit input (``sign(x) * span / 2``) keeps its fixed span.
- **Distillation** from the FP32 model (the task's own, read only): the loss is ``(1 - distill) *
  cross-entropy + distill * T**2 * KL(teacher || student)`` at temperature ``T``.
- **SGD** with momentum and a cosine schedule to zero over all the steps; weight decay on the
  convolution and linear weights only.
- Pruned kernels stay exactly zero, and so do their bias and BatchNorm scale and shift.
  BatchNorm trains in train mode (batch statistics), as in the literature.
- **Per-epoch checkpoints** (``checkpoint_dir``): each epoch's end writes ``epoch-NNN.pt`` (the
  weights, steps, optimizer, schedule, data-order generator and history); a run started again
  with the same policy and settings continues after the last one, with the same numbers as an
  uninterrupted run. Held-out and test top-1 are measured after every epoch (``history``).

The user's model is never written: training happens on the working copy of a
``CompressedModel``, which goes back to FP32 afterwards. ``recipe="ste"`` is the previous,
cheaper recipe (Adam at ``lr``, cross-entropy only, fixed scales and activation ranges).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from jpq_env import validation as check
from jpq_env.core.policy import Policy
from jpq_env.core.quant import FULL_PRECISION, ActRange, quantize_activation, quantize_weight
from jpq_env.errors import ArgumentError
from jpq_env.proxy.data import top1
from jpq_env.proxy.evaluator import LocalEvaluator

__all__ = ["FinetuneResult", "FinetuneSettings", "finetune", "quantization_aware"]

RECIPES = ("lsq", "ste")
OPTIONS = ("distill", "temperature", "momentum", "weight_decay")  # finetune's **options


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient."""
    return x + (torch.round(x) - x).detach()


def _sign_ste(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` forward, identity gradient."""
    return x + (torch.sign(x) - x).detach()


def _grad_scaled(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``x`` forward (exactly), its gradient multiplied by ``scale`` (LSQ's gradient scale)."""
    scaled = x * scale
    return x.detach() + (scaled - scaled.detach())


class _LSQWeight(nn.Module):
    """Parametrization: the weight quantized per kernel on learned steps (LSQ)."""

    qmax: torch.Tensor
    keep: torch.Tensor
    binary: torch.Tensor
    full: torch.Tensor
    gscale: torch.Tensor
    initial: torch.Tensor

    def __init__(self, weight: torch.Tensor, bits: torch.Tensor, steps: torch.Tensor) -> None:
        super().__init__()
        view = (-1,) + (1,) * (weight.dim() - 1)
        b = bits.long()
        qmax = torch.where(b >= 2, 2.0 ** (b - 1).clamp(max=30) - 1, torch.ones_like(b).float())
        self.register_buffer("qmax", qmax.float().reshape(view))
        self.register_buffer("keep", (b > 0).float().reshape(view))
        self.register_buffer("binary", (b == 1).reshape(view))
        self.register_buffer("full", (b >= FULL_PRECISION).reshape(view))
        per_kernel = weight[0].numel() if weight.dim() > 1 else 1
        self.register_buffer("gscale", 1.0 / torch.sqrt(per_kernel * qmax.float()).reshape(view))
        initial = steps.detach().float().reshape(view).clamp(min=1e-12)  # an all-zero kernel's 0
        self.register_buffer("initial", initial.clone())
        self.log_step = nn.Parameter(torch.zeros_like(initial))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """The quantized weight (pruned kernels zero, 32-bit kernels as they are)."""
        s = self.initial * torch.exp(_grad_scaled(self.log_step, self.gscale))
        q = _round_ste(torch.maximum(torch.minimum(w / s, self.qmax), -self.qmax)) * s
        q = torch.where(self.binary, _sign_ste(w) * s, q)
        return torch.where(self.full, w, q) * self.keep


class _STEWeight(nn.Module):
    """Parametrization: the weight quantized at the proxy's fixed scales, identity gradient."""

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


class _ActQuant(nn.Module):
    """A layer input's quantizer: a learned step (LSQ) or the calibrated range (STE)."""

    def __init__(self, bits: int, rng: ActRange, learn: bool) -> None:
        super().__init__()
        self.bits, self.rng = bits, rng
        signed = rng.signed
        self.qp = 2.0 ** (bits - 1) - 1 if signed else 2.0**bits - 1
        self.qn = self.qp if signed else 0.0
        span = max(abs(rng.lo), abs(rng.hi)) if signed else rng.hi
        # LSQ where the grid is uniform with a zero level: not signed 1-bit, not a zero range
        self.learn = learn and span > 0.0 and not (signed and bits == 1)
        self.initial = span / self.qp if self.learn else 1.0
        self.log_step = nn.Parameter(torch.tensor(0.0))
        self.gscale: float | None = None  # LSQ's gradient scale, from the first input's size

    @property
    def step(self) -> float:
        """The step now (``initial * exp(log_step)``)."""
        return self.initial * math.exp(float(self.log_step.detach()))

    def hook(self, _: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """The forward pre-hook: the layer reads its quantized input."""
        x = args[0]
        if not self.learn:
            return (x + (quantize_activation(x, self.bits, self.rng) - x).detach(), *args[1:])
        if self.gscale is None:
            self.gscale = 1.0 / math.sqrt(max(x[0].numel(), 1) * self.qp)
        s = self.initial * torch.exp(_grad_scaled(self.log_step, self.gscale))
        q = _round_ste(torch.clamp(x / s, -self.qn, self.qp)) * s
        return (q, *args[1:])


@dataclass(frozen=True)
class FinetuneSettings:
    """How a fine-tune runs (the defaults are the recipe's; a checkpoint records them).

    Attributes:
        epochs: Passes over the training split.
        lr: Learning rate (SGD's peak, cosine to zero; Adam's with ``recipe="ste"``).
        batch_size: Training batch size.
        seed: Seed of the data order.
        recipe: ``"lsq"`` (learned steps, distillation, SGD, cosine) or ``"ste"``.
        distill: Weight of the distillation term (0: cross-entropy only).
        temperature: Distillation temperature.
        momentum: SGD momentum (Nesterov).
        weight_decay: On the convolution and linear weights (not steps, biases, BatchNorm).
    """

    epochs: int = 3
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    recipe: str = "lsq"
    distill: float = 0.5
    temperature: float = 2.0
    momentum: float = 0.9
    weight_decay: float = 5e-5

    def checked(self) -> FinetuneSettings:
        """The settings, each checked (an ``ArgumentError`` names the first bad one)."""
        check.integer("epochs", self.epochs, low=1)
        check.number("lr", self.lr, low=0.0, low_open=True)
        check.integer("batch_size", self.batch_size, low=1)
        check.seed("seed", self.seed)
        check.choice("recipe", self.recipe, RECIPES)
        check.number("distill", self.distill, low=0.0, high=1.0)
        check.number("temperature", self.temperature, low=0.0, low_open=True)
        check.number("momentum", self.momentum, low=0.0, high=1.0)
        check.number("weight_decay", self.weight_decay, low=0.0)
        return self


@dataclass(frozen=True)
class FinetuneResult:
    """Accuracy before and after fine-tuning, the per-epoch history and the fine-tuned tensors.

    Attributes:
        accuracy_before: Test top-1 of the compressed model (BN re-calibrated, not fine-tuned).
        accuracy_after: Test top-1 after the last epoch (same widths, masks, activation widths).
        state_dict: The fine-tuned model's tensors, weights already quantized (on the learned
            steps).
        history: One entry per epoch: ``epoch``, ``loss`` (mean training loss), ``val`` and
            ``test`` (top-1 on the held-out and test splits), ``seconds``.
        act_steps: The learned activation step of each layer (layer name -> step; layers with a
            fixed quantizer or 32-bit inputs are absent).
        resumed: Epochs read from a checkpoint instead of trained (0: none).
    """

    accuracy_before: float
    accuracy_after: float
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    act_steps: dict[str, float] = field(default_factory=dict)
    resumed: int = 0


def finetune(
    evaluator: LocalEvaluator,
    policy: Policy,
    epochs: int = 3,
    lr: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
    recipe: str = "lsq",
    checkpoint_dir: str | Path | None = None,
    **options: Any,
) -> FinetuneResult:
    """Fine-tune the model compressed by ``policy`` on the task's training split.

    Args:
        evaluator: The task's evaluator (its working copy is where training happens).
        policy: The compression policy (widths and masks stay fixed).
        epochs: Passes over the training split.
        lr: The learning rate (None: 0.01 for ``"lsq"``, 1e-3 for ``"ste"``).
        batch_size: Training batch size.
        seed: Seed of the data order.
        recipe: ``"lsq"`` or ``"ste"`` (see the module docstring).
        progress: Show a progress bar over the training batches (the loss on it).
        checkpoint_dir: Where per-epoch checkpoints go (None: none); a run with the same policy
            and settings continues after the last checkpoint there.
        **options: Further ``FinetuneSettings`` fields (``distill``, ``temperature``,
            ``momentum``, ``weight_decay``).

    Returns:
        Test accuracy before (as ``LocalEvaluator.test_accuracy`` reports it) and after, the
        per-epoch history and the tensors.

    Raises:
        ArgumentError: On a bad setting, or a checkpoint of another policy or settings.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ArgumentError(f"unknown fine-tuning options {unknown}: use {', '.join(OPTIONS)}")
    if lr is None:
        lr = 0.01 if recipe == "lsq" else 1e-3
    settings = FinetuneSettings(
        epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, recipe=recipe, **options
    ).checked()
    before = evaluator.test_accuracy(policy)
    with quantization_aware(evaluator, policy, settings.recipe == "lsq") as (module, acts):
        history, resumed = _train(
            evaluator, policy, module, acts, settings, checkpoint_dir, progress
        )
        tuned = {k: v.detach().clone() for k, v in _unparametrized(module).state_dict().items()}
    steps = {name: a.step for name, a in acts.items() if a.learn}
    after = history[-1]["test"] if history else before
    return FinetuneResult(before, after, tuned, history, steps, resumed)


@contextmanager
def quantization_aware(
    evaluator: LocalEvaluator, policy: Policy, learn: bool = True
) -> Iterator[tuple[nn.Module, dict[str, _ActQuant]]]:
    """The evaluator's working copy of ``policy`` with trainable quantizers, for the block.

    Yields the module and its activation quantizers (layer name -> quantizer). With ``learn``
    the steps are LSQ parameters initialised from the proxy's quantizers (the module computes
    the compressed model's logits until it is trained), else fixed (straight-through). On exit,
    whatever happened, the hooks and parametrizations are removed and the working copy goes
    back to FP32.
    """
    module = evaluator.prepare(policy)
    cm = evaluator.compressed
    cm.set_activation_bits([FULL_PRECISION] * len(evaluator.graph))  # the quantizers below
    hooks: list[Any] = []
    try:
        acts, hooks = _quantize(evaluator, policy, learn)
        yield module, acts
    finally:
        for h in hooks:
            h.remove()
        _unparametrized(module)
        cm.restore()


def _quantize(
    evaluator: LocalEvaluator, policy: Policy, learn: bool
) -> tuple[dict[str, _ActQuant], list[Any]]:
    """Put the quantizers on the working copy: weight parametrizations and input hooks."""
    cm, graph = evaluator.compressed, evaluator.graph
    live = graph.liveness(policy.kept())
    acts: dict[str, _ActQuant] = {}
    hooks = []
    for info, lp, layer, quantizer in zip(
        graph.layers, policy.layers, cm.layers, cm.quantizers, strict=True
    ):
        alive = torch.from_numpy(live.alive_out[info.index].copy())
        bits = torch.from_numpy(np.where(alive.numpy(), lp.bits, 0))
        if learn:
            _, steps = quantizer.codes(bits)
            weight: nn.Module = _LSQWeight(layer.weight, bits, steps)
        else:
            weight = _STEWeight(bits, cm.weight_method)
        parametrize.register_parametrization(layer, "weight", weight.to(layer.weight.device))
        if layer.bias is not None:
            bias_mask = _Mask(alive.float().to(layer.bias.device))
            parametrize.register_parametrization(layer, "bias", bias_mask)
        if lp.act_bits < FULL_PRECISION and cm.act_ranges is not None:
            act = _ActQuant(lp.act_bits, cm.act_ranges[info.index], learn).to(evaluator.device)
            acts[info.name] = act
            hooks.append(layer.register_forward_pre_hook(act.hook))
    for name, mask in live.bn_alive.items():
        bn = cm.module.get_submodule(name)
        for attr in ("weight", "bias"):
            if getattr(bn, attr, None) is not None:
                parametrize.register_parametrization(
                    bn, attr, _Mask(torch.from_numpy(mask.copy()).float().to(evaluator.device))
                )
    return acts, hooks


def _optimizer(
    module: nn.Module,
    layers: list[nn.Module],
    acts: dict[str, _ActQuant],
    settings: FinetuneSettings,
) -> torch.optim.Optimizer:
    """SGD (weight decay on the layers' float weights only), or Adam for the ``ste`` recipe."""
    steps = [a.log_step for a in acts.values() if a.learn]
    if settings.recipe == "ste":
        return torch.optim.Adam(list(module.parameters()), lr=settings.lr)
    # the conv and linear weights only (not BatchNorm, steps, biases)
    decayed = [layer.get_parameter("parametrizations.weight.original") for layer in layers]
    ids = {id(p) for p in decayed}
    rest = [p for p in module.parameters() if id(p) not in ids] + steps
    return torch.optim.SGD(
        [
            {"params": decayed, "weight_decay": settings.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.momentum > 0,
    )


def _loss(settings: FinetuneSettings, teacher: nn.Module) -> Callable[..., torch.Tensor]:
    """Cross-entropy, plus distillation from ``teacher`` (the FP32 model) for ``lsq``."""
    t, a = settings.temperature, settings.distill if settings.recipe == "lsq" else 0.0
    device = next(iter(teacher.parameters()), torch.empty(0)).device

    def loss(x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = nn.functional.cross_entropy(logits, y)
        if a == 0.0:
            return ce
        with torch.no_grad():
            teacher_logits = teacher(x.to(device)).to(logits.device)  # the model's own device
            target = nn.functional.softmax(teacher_logits / t, dim=1)
        kl = nn.functional.kl_div(
            nn.functional.log_softmax(logits / t, dim=1), target, reduction="batchmean"
        )
        return (1 - a) * ce + a * t * t * kl

    return loss


def _batches(
    train: Any, order: torch.Tensor, size: int, device: Any
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(order), size):
        idx = order[start : start + size].tolist()
        x = torch.stack([train[i][0] for i in idx]).to(device)
        yield x, torch.as_tensor([int(train[i][1]) for i in idx], device=device)


def _train(
    evaluator: LocalEvaluator,
    policy: Policy,
    module: nn.Module,
    acts: dict[str, _ActQuant],
    settings: FinetuneSettings,
    checkpoint_dir: str | Path | None,
    progress: bool,
) -> tuple[list[dict[str, float]], int]:
    """The epochs, from the last checkpoint on: the history, and the epochs read from it."""
    import time

    from tqdm import tqdm

    train, task = evaluator.task.train, evaluator.task
    per_epoch = -(-len(train) // settings.batch_size)  # type: ignore[arg-type]
    optimizer = _optimizer(module, list(evaluator.compressed.layers), acts, settings)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=settings.epochs * per_epoch
    )
    generator = torch.Generator().manual_seed(settings.seed)
    teacher = task.model.eval()
    loss_fn = _loss(settings, teacher)
    history: list[dict[str, float]] = []
    store = _Checkpoints(checkpoint_dir, policy, settings) if checkpoint_dir is not None else None
    if store is not None:
        history = store.resume(module, acts, optimizer, schedule, generator)
    resumed = len(history)
    bar = tqdm(
        total=(settings.epochs - len(history)) * per_epoch,
        desc="fine-tuning",
        unit="batch",
        disable=not progress,
    )
    try:
        for epoch in range(len(history) + 1, settings.epochs + 1):
            start, total, n = time.perf_counter(), 0.0, 0
            module.train()
            order = torch.randperm(len(train), generator=generator)  # type: ignore[arg-type]
            for x, y in _batches(train, order, settings.batch_size, evaluator.device):
                loss = loss_fn(x, module(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total, n = total + float(loss.detach()) * len(y), n + len(y)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.3f}", refresh=False)
            module.eval()
            size, device = evaluator.batch_size, evaluator.device
            history.append(
                {
                    "epoch": epoch,
                    "loss": total / max(n, 1),
                    "val": top1(module, task.val, size, device),
                    "test": top1(module, task.test, size, device),
                    "seconds": time.perf_counter() - start,
                }
            )
            if store is not None:
                store.save(epoch, module, acts, optimizer, schedule, generator, history)
    finally:
        bar.close()
    return history, resumed


def _unparametrized(module: nn.Module) -> nn.Module:
    """``module`` with its parametrizations removed, the parametrized values kept."""
    for m in module.modules():
        for attr in ("weight", "bias"):
            if parametrize.is_parametrized(m, attr):
                parametrize.remove_parametrizations(m, attr, leave_parametrized=True)
    return module


class _Checkpoints:
    """``epoch-NNN.pt`` files of one fine-tune: written after each epoch, read to resume."""

    def __init__(self, folder: str | Path, policy: Policy, settings: FinetuneSettings) -> None:
        self.folder = Path(folder)
        self.key = {"policy": policy.key(), **asdict(settings)}

    def _files(self) -> list[Path]:
        def epoch(path: Path) -> int:
            number = path.stem.removeprefix("epoch-")
            return int(number) if number.isdigit() else -1

        return sorted((p for p in self.folder.glob("epoch-*.pt") if epoch(p) > 0), key=epoch)

    def save(
        self,
        epoch: int,
        module: nn.Module,
        acts: dict[str, _ActQuant],
        optimizer: torch.optim.Optimizer,
        schedule: Any,
        generator: torch.Generator,
        history: list[dict[str, float]],
    ) -> Path:
        from jpq_env.atomic import save_atomic

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"epoch-{epoch:03d}.pt"
        save_atomic(
            {
                "key": self.key,
                "model": module.state_dict(),
                "acts": {name: a.log_step.detach().clone() for name, a in acts.items()},
                "act_gscale": {name: a.gscale for name, a in acts.items()},
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "generator": generator.get_state(),
                "history": history,
            },
            path,
        )
        return path

    def resume(
        self,
        module: nn.Module,
        acts: dict[str, _ActQuant],
        optimizer: torch.optim.Optimizer,
        schedule: Any,
        generator: torch.Generator,
    ) -> list[dict[str, float]]:
        """Load the last checkpoint (if any) into the run; its history (empty: none)."""
        files = self._files()
        if not files:
            return []
        state = torch.load(files[-1], map_location="cpu", weights_only=True)
        differ = sorted(k for k in self.key if state["key"].get(k) != self.key[k])
        if differ:
            what = ", ".join(
                f"{k} {state['key'].get(k)!r} there, {self.key[k]!r} here"
                for k in differ
                if k != "policy"
            )
            what = "; ".join(x for x in (what, "another policy" * ("policy" in differ)) if x)
            raise ArgumentError(
                f"'{files[-1]}' is a checkpoint of another fine-tune ({what}): use another "
                "checkpoint folder, or the same settings to continue it (the cosine schedule "
                "spans all the epochs, so more epochs are a new fine-tune)"
            )
        module.load_state_dict(state["model"])
        with torch.no_grad():
            for name, a in acts.items():
                a.log_step.copy_(state["acts"][name])
                a.gscale = state["act_gscale"][name]
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        return list(state["history"])
