from __future__ import annotations

from abc import ABC, abstractmethod

from torch import nn

from autocompress.plan import LayerPlan
from autocompress.registry import Registry

# Layer types a plan can name. Factorized layers become a Factorized pair of these.
COMPRESSIBLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


class Technique(ABC):
    """One compression technique, applied to one layer at a time.

    ``compress.apply`` calls, for every layer in the plan and every registered technique in
    ascending ``order``: :meth:`applies`, then :meth:`apply` when it said yes. ``apply`` may
    replace the layer (low-rank does) by returning a new module, or change it in place and
    return it. Techniques that keep state during fine-tuning use ``torch.nn.utils.parametrize``
    on the weights, so later techniques see the effective weight.
    """

    order: int = 0  # position in the fixed application order (low-rank, pruning, quantization)

    @abstractmethod
    def applies(self, plan: LayerPlan) -> bool:
        """Whether this layer plan asks for this technique."""

    @abstractmethod
    def apply(self, layer: nn.Module, plan: LayerPlan, name: str) -> nn.Module:
        """Compress ``layer`` (named ``name`` in the model) and return the module to use."""


TECHNIQUES: Registry[type[Technique]] = Registry("technique")


def leaf_layers(layer: nn.Module) -> list[nn.Module]:
    """The weight-bearing Linear/Conv2d modules of a compressible layer (two when factorized)."""
    if isinstance(layer, COMPRESSIBLE_TYPES):
        return [layer]
    return [m for m in layer.modules() if isinstance(m, COMPRESSIBLE_TYPES)]
