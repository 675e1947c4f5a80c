"""Unstructured pruning, kept during fine-tuning as a weight parametrization.

The mask is computed once by ``torch.nn.utils.prune.L1Unstructured`` over the plan's importance
scores (the weights' magnitudes unless it says ``taylor``: see ``importance.py``) and applied on
every forward pass, so fine-tuning never revives a pruned weight.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from autocompress.compress._base import TECHNIQUES, ApplyContext, Technique, leaf_layers
from autocompress.compress.importance import weight_scores
from autocompress.plan import LayerPlan


class Mask(nn.Module):
    """Parametrization ``w -> w * mask`` with a fixed 0/1 mask."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """0/1 mask that zeroes ``round(sparsity * numel)`` smallest-magnitude entries (of a weight,
    or of any score of the same shape)."""
    method = torch_prune.L1Unstructured(amount=float(sparsity))
    return method.compute_mask(weight.detach(), default_mask=torch.ones_like(weight))


@TECHNIQUES.register("prune")
class MagnitudePrune(Technique):
    order = 20

    def applies(self, plan: LayerPlan) -> bool:
        return plan.sparsity > 0.0 and not plan.structured

    def apply(self, layer: nn.Module, plan: LayerPlan, name: str, ctx: ApplyContext) -> nn.Module:
        for leaf in leaf_layers(layer):
            mask = magnitude_mask(weight_scores(ctx, leaf, plan.importance, name), plan.sparsity)
            parametrize.register_parametrization(leaf, "weight", Mask(mask))
        return layer
