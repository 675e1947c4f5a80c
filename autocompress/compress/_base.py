from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from autocompress.plan import LayerPlan
from autocompress.registry import Registry

# Layer types a plan can name (after ``compress.sites.canonical``: attention projections and
# GPT-2's Conv1D are Linears by then). Factorized layers become a Factorized pair of these.
COMPRESSIBLE_TYPES = (nn.Linear, nn.Conv2d, nn.Embedding)
Site = nn.Linear | nn.Conv2d | nn.Embedding  # one of COMPRESSIBLE_TYPES


@dataclass
class ApplyContext:
    """What a technique may need beyond its layer: the whole model, an input to trace it with."""

    model: nn.Module
    example: torch.Tensor | None = None  # a small input batch (structured pruning traces it)
    channels_removed: dict[str, list[int]] = field(default_factory=dict)  # layer -> channel indices
    output_layers: set[nn.Module] | None = None  # the layers whose output is the model's (traced once)
    bn_folded: dict[str, str] = field(default_factory=dict)  # BatchNorm name -> layer it was folded into
    batchnorms: dict[nn.Conv2d, str] | None = None  # conv -> the BatchNorm after it (traced once)
    # labelled batch, or a task's loss as a function of the model: gradient-based importance
    calibration: tuple[torch.Tensor, torch.Tensor] | Callable[[nn.Module], torch.Tensor] | None = None
    gradients_ready: bool = False  # the loss's gradients are on the weights (taylor importance)


class Technique(ABC):
    """One compression technique, applied to every planned layer in turn.

    ``compress.apply`` calls, for every registered technique in ascending ``order`` and then
    every layer in the plan: :meth:`applies`, then :meth:`apply` when it said yes. Running one
    technique over all layers before the next means structural changes (factorization, channel
    removal) are done before any mask or quantizer is attached. ``apply`` may replace the layer
    (low-rank does) by returning a new module, or change it in place and return it. Techniques
    that keep state during fine-tuning use ``torch.nn.utils.parametrize`` on the weights, so
    later techniques see the effective weight.
    """

    order: int = 0  # position in the fixed order: low-rank, channel pruning, pruning, quantization

    @abstractmethod
    def applies(self, plan: LayerPlan) -> bool:
        """Whether this layer plan asks for this technique."""

    @abstractmethod
    def apply(self, layer: nn.Module, plan: LayerPlan, name: str, ctx: ApplyContext) -> nn.Module:
        """Compress ``layer`` (named ``name`` in the model) and return the module to use."""


TECHNIQUES: Registry[type[Technique]] = Registry("technique")


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified ``name`` inside ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def leaf_layers(layer: nn.Module) -> list[Site]:
    """The weight-bearing modules of a compressible layer (two or three when factorized)."""
    if isinstance(layer, COMPRESSIBLE_TYPES):
        return [layer]
    return [m for m in layer.modules() if isinstance(m, COMPRESSIBLE_TYPES)]
