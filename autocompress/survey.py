"""A model surveyed once: what the search space needs to know of each compressible layer (its
type and kind, weight shape, ranks, whether its weights are frozen, whether it produces the
model's output) and which layers can lose output channels consistently. Resolving a space is
then plain data over the survey (``SpaceSpec.resolve_survey``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autocompress.compress import COMPRESSIBLE_TYPES, canonical, compressible_layers, full_rank
from autocompress.compress.dependency import channel_prunable, forward_facts
from autocompress.compress.lowrank import tucker_applies, tucker_limits
from autocompress.compress.sites import attention_of, kept_reason


@dataclass(frozen=True)
class LayerFacts:
    """One compressible layer as the space sees it."""

    name: str
    type: str  # Linear or Conv2d
    kind: str  # Linear, Conv2d-3x3, Conv2d-1x1, Conv2d-depthwise... (group_by: type)
    weight_shape: tuple[int, ...]
    full_rank: int | None  # None: factorization does not apply (a depthwise or grouped conv)
    tucker_limits: tuple[int, int] | None  # largest (output, input) Tucker-2 ranks; None: no Tucker
    frozen: bool  # requires_grad False: no gradient ranks its weights
    output: bool  # produces the model's output (known only with an example input)
    called: bool = True  # the model calls it as a module (False: it reads the weight directly)
    channel_unit: str | None = None  # what its channels go in when not one by one (an attention's heads)


@dataclass(frozen=True)
class ModelSurvey:
    """Every compressible layer in model order, and what Torch-Pruning's graph allows."""

    layers: dict[str, LayerFacts]
    channel_prunable: frozenset[str] | None = None  # None: the graph was not traced
    channel_error: str | None = None  # why the graph could not follow the model, when it could not
    channel_refused: dict[str, str] = field(default_factory=dict)  # layer -> why its channels stay


def survey(model: nn.Module, example: torch.Tensor | None = None, trace_channels: bool = False) -> ModelSurvey:
    """One look at ``model``: its layers' facts, with an ``example`` input the layers producing its
    output (one forward pass), and with ``trace_channels`` the dependency graph (one trace).
    Rewrites ``model`` into its canonical form first (``compress.sites``): its layers are those."""
    canonical(model)
    outputs, called = forward_facts(model, example) if example is not None else (set(), None)
    layers = {
        name: LayerFacts(
            name=name,
            type=type(module).__name__,
            kind=layer_kind(module),
            weight_shape=tuple(module.weight.shape),
            full_rank=full_rank(module),
            tucker_limits=tucker_limits(module) if isinstance(module, nn.Conv2d) and tucker_applies(module) else None,
            frozen=not module.weight.requires_grad,
            output=module in outputs,
            called=called is None or module in called,
            channel_unit=_channel_unit(model, name),
        )
        for name, module in compressible_layers(model).items()
    }
    if example is None or not trace_channels:
        return ModelSurvey(layers)
    try:
        prunable, refused = channel_prunable(model, example)
        return ModelSurvey(layers, frozenset(prunable), channel_refused=refused)
    except Exception as exc:  # noqa: BLE001  (Torch-Pruning raises many kinds on structures it cannot follow)
        return ModelSurvey(layers, channel_error=f"{type(exc).__name__}: {exc}")


def _channel_unit(model: nn.Module, name: str) -> str | None:
    found = attention_of(model, name)
    if found is None or found[1] != "q_proj":
        return None
    return f"channels go in whole heads ({found[0].num_heads} of {found[0].head_dim})"


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "Conv2d-depthwise"
        kh, kw = module.kernel_size
        return f"Conv2d-{kh}x{kw}" + ("-grouped" if module.groups > 1 else "")
    return type(module).__name__


# Why a module's own parameters are not compressed, by type (``layers`` names them, never skips).
_KEPT = {
    "norm": "normalization: kept in float (a few values per channel)",
}


def _kept_reason(module: nn.Module) -> str:
    kind = type(module).__name__
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)) or "Norm" in kind:
        return _KEPT["norm"]
    if kind in _KEPT:
        return _KEPT[kind]
    if (reason := kept_reason(module)) is not None:
        return reason
    if isinstance(module, COMPRESSIBLE_TYPES):
        return "left out by the search space (its layers or exclude)"
    if any(True for _ in module.children()):  # a container's own tensors: ViT's class token, position embeddings
        return f"parameters of the {kind} itself (tokens, position embeddings, scales): kept in float"
    return f"a {kind}: not a compression site yet (Linear, Conv2d, Embedding and attention projections are)"


def weight_coverage(model: nn.Module, listed: set[str]) -> dict[str, Any]:
    """What share of the model's parameters the listed layers' weights hold, and the rest by
    module type with the reason each is left uncompressed."""
    total = sum(p.numel() for p in model.parameters())
    covered = 0
    left: dict[tuple[str, str], dict[str, Any]] = {}
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if name in listed and pname == "weight":
                covered += param.numel()
                continue
            key = ("bias", "kept in float with its layer") if name in listed else (type(module).__name__, _kept_reason(module))
            entry = left.setdefault(
                key, {"type": key[0], "reason": key[1], "tensors": 0, "params": 0, "example": f"{name}.{pname}" if name else pname}
            )
            entry["tensors"] += 1
            entry["params"] += param.numel()
    rest = sorted(left.values(), key=lambda e: -e["params"])
    return {"layers": len(listed), "params": total, "covered": covered, "share": covered / total if total else 0.0, "not_compressed": rest}


def coverage_line(coverage: dict[str, Any]) -> str:
    """``4 layers hold 98.9% of the model's weights; not compressed: ...``"""
    parts = [
        f"{e['type']} x{e['tensors']} ({100 * e['params'] / max(1, coverage['params']):.1f}%: {e['reason']})" for e in coverage["not_compressed"]
    ]
    return f"{coverage['layers']} layers hold {100 * coverage['share']:.1f}% of the model's weights" + (
        f"; not compressed: {'; '.join(parts)}" if parts else ""
    )
