"""A model surveyed once: what the search space needs to know of each compressible layer (its
type and kind, weight shape, ranks, whether its weights are frozen, whether it produces the
model's output) and which layers can lose output channels consistently. Resolving a space is
then plain data over the survey (``SpaceSpec.resolve_survey``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autocompress.compress import compressible_layers, full_rank
from autocompress.compress.dependency import channel_prunable, output_layers
from autocompress.compress.lowrank import tucker_applies, tucker_limits


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


@dataclass(frozen=True)
class ModelSurvey:
    """Every compressible layer in model order, and what Torch-Pruning's graph allows."""

    layers: dict[str, LayerFacts]
    channel_prunable: frozenset[str] | None = None  # None: the graph was not traced
    channel_error: str | None = None  # why the graph could not follow the model, when it could not


def survey(model: nn.Module, example: torch.Tensor | None = None, trace_channels: bool = False) -> ModelSurvey:
    """One look at ``model``: its layers' facts, with an ``example`` input the layers producing its
    output (one forward pass), and with ``trace_channels`` the dependency graph (one trace)."""
    outputs = output_layers(model, example) if example is not None else set()
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
        )
        for name, module in compressible_layers(model).items()
    }
    if example is None or not trace_channels:
        return ModelSurvey(layers)
    try:
        return ModelSurvey(layers, frozenset(channel_prunable(model, example)))
    except Exception as exc:  # noqa: BLE001  (Torch-Pruning raises many kinds on structures it cannot follow)
        return ModelSurvey(layers, channel_error=f"{type(exc).__name__}: {exc}")


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "Conv2d-depthwise"
        kh, kw = module.kernel_size
        return f"Conv2d-{kh}x{kw}" + ("-grouped" if module.groups > 1 else "")
    return type(module).__name__
