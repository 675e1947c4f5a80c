"""Compression: ``apply(model, plan)`` runs every registered technique on every planned layer.

Order is fixed by each technique's ``order``: low-rank factorization, then pruning, then
quantization, so pruning masks the factors and quantization sees the masked weights.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from autocompress.compress import lowrank, prune, quantize  # noqa: F401  (register techniques)
from autocompress.compress._base import COMPRESSIBLE_TYPES, TECHNIQUES, Technique, leaf_layers
from autocompress.compress.lowrank import Factorized, factorize, full_rank
from autocompress.compress.prune import Mask
from autocompress.compress.quantize import FakeQuant
from autocompress.errors import SpaceError
from autocompress.plan import CompressionPlan

__all__ = [
    "COMPRESSIBLE_TYPES",
    "TECHNIQUES",
    "FakeQuant",
    "Factorized",
    "Mask",
    "Technique",
    "apply",
    "compressible_layers",
    "bake",
    "factorize",
    "full_rank",
    "leaf_layers",
]


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear and Conv2d of ``model`` by qualified name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, COMPRESSIBLE_TYPES)}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply(model: nn.Module, plan: CompressionPlan) -> nn.Module:
    """Compress ``model`` in place following ``plan`` and return it."""
    layers = compressible_layers(model)
    techniques = sorted((TECHNIQUES.get(n)() for n in TECHNIQUES), key=lambda t: t.order)
    for name, layer_plan in plan.layers.items():
        if name not in layers:
            raise SpaceError(f"plan names layer '{name}', which is not a Linear or Conv2d of the model")
        layer = layers[name]
        for technique in techniques:
            if technique.applies(layer_plan):
                layer = technique.apply(layer, layer_plan, name)
        _set_submodule(model, name, layer)
    return model


def bake(model: nn.Module) -> nn.Module:
    """Fold masks and quantizers into plain weights, in place: the form that ships and runs.

    In place on purpose: a deep copy of a parametrized module shares its generated class, and
    removing the parametrization from the copy would strip the original's weight property.
    """
    # Collect first: removing a parametrization changes the module tree being walked.
    for module in [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model.eval()
