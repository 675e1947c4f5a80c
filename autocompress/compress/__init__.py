"""Compression: ``apply(model, plan)`` runs every registered technique on every planned layer.

Order is fixed by each technique's ``order``: low-rank factorization, BatchNorm folding (for
quantized convs), channel pruning, unstructured pruning, then quantization, so pruning masks the
factors and quantization sees the folded, masked weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.compress import channel, fold, lowrank, prune, quantize, share  # noqa: F401  (register techniques)
from autocompress.compress._base import COMPRESSIBLE_TYPES, TECHNIQUES, ApplyContext, Site, Technique, leaf_layers, set_submodule
from autocompress.compress.dependency import out_layer, remove_channels
from autocompress.compress.lowrank import Factorized, Tucker2, factorize, full_rank
from autocompress.compress.prune import Mask
from autocompress.compress.quantize import FakeQuant
from autocompress.compress.share import SharedWeights
from autocompress.compress.sites import Attention, canonical, is_canonical
from autocompress.errors import SpaceError, did_you_mean
from autocompress.plan import LOWRANK_MODES, QUANT_MODES, TERNARY_BITS, CompressionPlan, LayerPlan

__all__ = [
    "COMPRESSIBLE_TYPES",
    "TECHNIQUES",
    "ApplyContext",
    "Attention",
    "Factorized",
    "FakeQuant",
    "Mask",
    "SharedWeights",
    "Site",
    "Technique",
    "Tucker2",
    "apply",
    "apply_structure",
    "bake",
    "canonical",
    "compressible_layers",
    "factorize",
    "full_rank",
    "is_canonical",
    "layer_map",
    "leaf_layers",
    "structure",
]

_STRUCTURE_ATTR = "_autocompress_structure"


def compressible_layers(model: nn.Module) -> dict[str, Site]:
    """Every Linear, Conv2d and Embedding of ``model`` by qualified name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, COMPRESSIBLE_TYPES)}


def layer_map(model: nn.Module) -> dict[str, nn.Module]:
    """The plan's view of a (possibly compressed) model: a factorized pair is one layer under
    its original name; parametrization internals are not layers."""
    factorized = {name: m for name, m in model.named_modules() if isinstance(m, Factorized)}
    layers: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if name in factorized or (isinstance(m, COMPRESSIBLE_TYPES) and not any(name.startswith(f"{f}.") for f in factorized)):
            layers[name] = m
    return layers


def apply(
    model: nn.Module,
    plan: CompressionPlan,
    example: torch.Tensor | None = None,
    calibration: tuple[torch.Tensor, torch.Tensor] | Callable[[nn.Module], torch.Tensor] | None = None,
) -> nn.Module:
    """Compress ``model`` in place following ``plan`` and return it.

    Args:
        example: a small input batch; needed when the plan removes channels (to trace the model).
        calibration: a labelled batch (inputs, labels), or the task's loss as a function of the
            model; needed by gradient-based importance.
    """
    canonical(model)
    available = compressible_layers(model)
    for name in plan.layers:
        if name not in available:
            raise SpaceError(f"plan names layer '{name}', which is not a Linear or Conv2d of the model")
    for name, lp in plan.layers.items():
        check_modes(name, lp)
    ctx = ApplyContext(model=model, example=example, calibration=calibration)
    for technique in sorted((TECHNIQUES.get(n)() for n in TECHNIQUES), key=lambda t: t.order):
        layers = layer_map(model)
        for name, layer_plan in plan.layers.items():
            if technique.applies(layer_plan):
                set_submodule(model, name, technique.apply(layers[name], layer_plan, name, ctx))
    setattr(model, _STRUCTURE_ATTR, {"channels_removed": ctx.channels_removed, "bn_folded": ctx.bn_folded})
    model.zero_grad(set_to_none=True)  # importance's gradients are not the fine-tuning's
    return model


def check_modes(name: str, lp: LayerPlan) -> None:
    """A plan's mode names, checked before any technique runs: a typo fails, never no-ops."""
    from autocompress.compress.importance import IMPORTANCE

    for key, value, known in (("quant_mode", lp.quant_mode, QUANT_MODES), ("lowrank_mode", lp.lowrank_mode, LOWRANK_MODES)):
        if value not in known:
            raise SpaceError(f"layer '{name}': {key} '{value}' is unknown{did_you_mean(value, known)}: use {' or '.join(known)}")
    if lp.quant_mode == "ternary" and lp.bits != TERNARY_BITS:
        raise SpaceError(f"layer '{name}': quant_mode ternary stores 2-bit codes, not {lp.bits}-bit: set bits 2 for it")
    if lp.importance not in IMPORTANCE:
        raise SpaceError(
            f"layer '{name}': importance '{lp.importance}' is unknown{did_you_mean(lp.importance, IMPORTANCE.names())}: use {', '.join(IMPORTANCE.names())}"
        )


def structure(model: nn.Module) -> dict[str, dict]:
    """What ``apply`` changed beyond the plan's ranks: ``channels_removed`` (layer -> output
    channel indices) and ``bn_folded`` (BatchNorm name -> layer); empty for a plain model."""
    found = getattr(model, _STRUCTURE_ATTR, {})
    return {"channels_removed": dict(found.get("channels_removed", {})), "bn_folded": dict(found.get("bn_folded", {}))}


def apply_structure(model: nn.Module, plan: CompressionPlan, changes: dict[str, dict], example: torch.Tensor) -> nn.Module:
    """Rebuild the shapes of a compressed model (factorized layers, folded BatchNorms, removed
    channels), weights aside, in the order ``apply`` made them."""
    for name, layer_plan in plan.layers.items():
        if layer_plan.rank is not None:
            set_submodule(model, name, factorize(model.get_submodule(name), layer_plan.rank, name, layer_plan.lowrank_mode, layer_plan.rank_in))
    layers = layer_map(model)
    for bn_name, name in changes.get("bn_folded", {}).items():
        fold.replay(model, out_layer(layers[name]), bn_name)
    for name, idxs in changes.get("channels_removed", {}).items():
        remove_channels(model, out_layer(layers[name]), list(idxs), example)
    return model


def bake(model: nn.Module) -> nn.Module:
    """Fold masks and quantizers into plain weights, in place: the form that ships and runs.

    In place on purpose: a deep copy of a parametrized module shares its generated class, and
    removing the parametrization from the copy would strip the original's weight property.
    """
    # Collect first: removing a parametrization changes the module tree being walked.
    for module in [m for m in model.modules() if parametrize.is_parametrized(m)]:
        for tensor in list(cast(Any, module).parametrizations):
            parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
    return model.eval()
