"""What makes a model compressible correctly: the checks ``LayerGraph.from_module`` runs on it.

jpq-env compresses a layer by writing quantized values into a private copy of its weight and
masking pruned channels in the BatchNorm that follows. That is only right if the weight is the
layer's own, is what the layer computes with, and holds numbers. Each check below refuses, with the
names involved and the fix, a model on which compressing would give a wrong result without a word:

- **NaN or inf** in a parameter or buffer: every output is NaN and every policy scores alike; and
  whatever else makes the FP32 outputs non-finite (an overflow, a division by zero in forward):
  the example input's outputs are checked when the graph is built (``check_outputs``), and the
  proxy checks the FP32 model's outputs on every held-out image.
- **Meta tensors**: a model on the meta device has shapes but no values.
- **Shared tensors**: a compressible layer's (or its BatchNorm's) weight, bias or buffer that is
  also another module's (``b.weight = a.weight``, tied weights) or read directly in ``forward``
  (``F.linear(x, self.fc.weight)``): compressing one would change the other, as a module called
  twice would (refused by the graph builder).
- **Recomputed weights**: a parametrization (``torch.nn.utils.parametrize``, e.g.
  ``parametrizations.weight_norm``) or an old-style ``weight_norm``/``spectral_norm`` hook
  recomputes ``weight`` from other tensors on every call, so a compressed weight would never be
  used. These are refused, not folded silently: folding changes the model the user trained
  (spectral norm's power iteration, say) and the fix is one line the user should choose to run
  (``torch.nn.utils.parametrize.remove_parametrizations(module, "weight")``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from jpq_env.errors import GraphError

__all__ = ["GraphError", "check_model", "check_outputs", "check_written_modules", "non_finite"]


def _module_expr(name: str) -> str:
    """How a user writes the submodule ``name`` of ``model`` in Python."""
    parts = name.split(".")
    if all(p.isidentifier() for p in parts):
        return f"model.{name}"
    return f"model.get_submodule({name!r})"


def _list(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_model(model: nn.Module) -> None:
    """Checks on the user's model itself, before it is copied or traced.

    Raises:
        GraphError: Tensors on the meta device (no values), NaN or inf in a parameter or buffer
            (named, with counts), or an old-style ``weight_norm``/``spectral_norm`` hook (named,
            with the call that removes it).
    """
    bad = []
    tensors = [*model.named_parameters(), *model.named_buffers()]
    meta = [name for name, t in tensors if t.device.type == "meta"]
    if meta:
        raise GraphError(
            f"the model's tensors are on the meta device (shapes without values): "
            f"{_list(meta)}. Materialize and load the trained weights first "
            "(model.to_empty(device='cpu'), then model.load_state_dict(...))"
        )
    for name, t in tensors:
        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            continue
        t = t.detach()
        # One reduction is enough almost always: NaN or inf anywhere makes the sum non-finite.
        if bool(torch.isfinite(t.sum())):
            continue
        finite = torch.isfinite(t)
        if bool(finite.all()):  # only an overflowing sum of finite values
            continue
        nans = int(torch.isnan(t).sum())
        infs = int((~finite).sum()) - nans
        what = " and ".join(f"{n} {w}" for n, w in ((nans, "NaN"), (infs, "inf")) if n)
        bad.append(f"'{name}' ({what} of {t.numel()})")
    if bad:
        raise GraphError(
            f"the model holds NaN or inf in {len(bad)} tensor{'s' if len(bad) > 1 else ''}: "
            f"{_list(bad)}. Every output would be NaN or inf and every policy would score alike: "
            "load the trained weights again (or fix these tensors) before compressing"
        )
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            kind = type(hook).__name__
            if kind in ("WeightNorm", "SpectralNorm"):
                fix = "remove_weight_norm" if kind == "WeightNorm" else "remove_spectral_norm"
                raise GraphError(
                    f"module '{name}' has an old-style torch.nn.utils.{fix[7:]} hook: its "
                    f"'{getattr(hook, 'name', 'weight')}' is recomputed on every call, so a "
                    "compressed weight would never be used. "
                    f"Fold it into a plain weight first: torch.nn.utils.{fix}({_module_expr(name)})"
                )


def non_finite(output: object) -> tuple[int, int]:
    """``(non-finite values, values)`` over every floating tensor in ``output`` (nested)."""
    if isinstance(output, torch.Tensor):
        if not output.is_floating_point():
            return 0, 0
        return int((~torch.isfinite(output.detach())).sum()), output.numel()
    if isinstance(output, (list, tuple)):
        counts = [non_finite(o) for o in output]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)
    if isinstance(output, dict):
        return non_finite(list(output.values()))
    return 0, 0


def check_outputs(output: object, what: str) -> None:
    """Refuse a model whose FP32 outputs on ``what`` hold NaN or inf, whatever the cause.

    Raises:
        GraphError: Naming how many values are not finite.
    """
    bad, total = non_finite(output)
    if bad:
        raise GraphError(
            f"the model's FP32 outputs on {what} hold {bad} NaN or inf values (of {total}): "
            "every policy would score alike. Check the model's forward() and its inputs "
            "(an overflow, a division by zero, a log of a negative number) before compressing"
        )


def _extent(t: torch.Tensor) -> tuple[tuple[str, int], int, int]:
    """The storage a tensor lives in and the byte range it spans there."""
    size = t.element_size()
    start = int(t.storage_offset())
    end = start + sum(int(n - 1) * int(s) for n, s in zip(t.shape, t.stride(), strict=True)) + 1
    key = (str(t.device), t.untyped_storage().data_ptr())
    return key, start * size, end * size


def _own_tensors(module: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    for name, t in [*module._parameters.items(), *module._buffers.items()]:
        if t is not None and t.numel() > 0 and t.device.type != "meta":
            yield name, t


def check_written_modules(
    model: nn.Module, gm: fx.GraphModule, layers: Sequence[str], batchnorms: Sequence[str]
) -> None:
    """Checks on the modules the compressed view writes: the layers and their BatchNorms.

    Args:
        model: The model (the private copy that was traced; copying keeps shared tensors shared).
        gm: Its traced graph module.
        layers: Names of the compressible layers.
        batchnorms: Names of the BatchNorm modules whose channels follow a layer.

    Raises:
        GraphError: A parametrized or hook-computed weight, or a tensor of one of these modules
            shared with another module or read directly in ``forward``.
    """
    for name in layers:
        module = model.get_submodule(name)
        if parametrize.is_parametrized(module):
            attrs = sorted(getattr(module, "parametrizations", {}).keys())
            kinds = sorted(
                {type(p).__name__ for a in attrs for p in module.parametrizations[a]}  # type: ignore[index]
            )
            attr = attrs[0] if attrs else "weight"
            raise GraphError(
                f"layer '{name}' has a parametrization on {', '.join(map(repr, attrs))} "
                f"({', '.join(kinds)}, torch.nn.utils.parametrize): it recomputes the tensor on "
                "every call, so a compressed weight would never be used. Fold it into a plain "
                "parameter first: torch.nn.utils.parametrize.remove_parametrizations("
                f"{_module_expr(name)}, {attr!r})"
            )
        if not isinstance(module._parameters.get("weight"), nn.Parameter):
            raise GraphError(
                f"layer '{name}' has no weight parameter of its own (it is computed elsewhere, "
                "by a hook or an attribute): jpq-env compresses a layer by writing its weight "
                "parameter. Make 'weight' a torch.nn.Parameter of the module"
            )
    for name in batchnorms:
        if parametrize.is_parametrized(model.get_submodule(name)):
            raise GraphError(
                f"BatchNorm '{name}' has a parametrization: the compressed view masks the "
                "channels of pruned kernels in it, which a parametrization would undo. Remove it "
                "first: torch.nn.utils.parametrize.remove_parametrizations("
                f"{_module_expr(name)}, 'weight')"
            )
    _check_shared(model, gm, [*layers, *batchnorms])


def _check_shared(model: nn.Module, gm: fx.GraphModule, written: Sequence[str]) -> None:
    owners: dict[tuple[str, int], list[tuple[int, int, int, str]]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for tname, t in _own_tensors(module):
            key, start, end = _extent(t)
            full = f"{mname}.{tname}" if mname else tname
            owners.setdefault(key, []).append((id(module), start, end, full))
    for name in written:
        module = model.get_submodule(name)
        for tname, t in _own_tensors(module):
            key, start, end = _extent(t)
            others = sorted(
                {
                    full
                    for owner, s, e, full in owners[key]
                    if owner != id(module) and s < end and start < e
                }
            )
            if others:
                own = f"{_module_expr(name)}.{tname}"
                copy = f"{own}.detach().clone()"
                if tname in module._parameters:
                    copy = f"torch.nn.Parameter({copy})"
                raise GraphError(
                    f"the {tname} of layer '{name}' is the same tensor as {_list(others)} (tied "
                    "or shared weights): compressing one would change the other, as for a module "
                    f"called twice. Give it its own copy before compressing: {own} = {copy}"
                )
    prefixes = tuple(f"{name}." for name in written)
    for node in gm.graph.nodes:
        if node.op == "get_attr" and str(node.target).startswith(prefixes):
            raise GraphError(
                f"'{node.target}' is read directly in forward() besides its module's own call "
                f"(F.linear(x, self.fc.weight), say): the compressed layer would be used there "
                "uncounted. Use a separate parameter there, or call the module itself"
            )
