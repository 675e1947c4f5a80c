"""Structured (channel) pruning: removes output channels for real.

The least important output channels of a layer (by the plan's ``importance``: the L1 norm of
their weights unless it says otherwise, see ``importance.py``) are removed with Torch-Pruning's
dependency graph, which shrinks every layer that consumes them (the next
conv's or linear's inputs, BatchNorm, residual adds, concatenations) so the network stays
consistent. The removed indices are recorded so a packed artifact can replay the same surgery.
"""

from __future__ import annotations

import torch
from torch import nn

from autocompress.compress._base import TECHNIQUES, ApplyContext, Technique
from autocompress.compress.dependency import out_layer, output_layers, remove_channels
from autocompress.compress.importance import channel_scores
from autocompress.errors import SpaceError
from autocompress.plan import LayerPlan


@TECHNIQUES.register("channel")
class ChannelPrune(Technique):
    order = 15

    def applies(self, plan: LayerPlan) -> bool:
        return plan.structured and plan.sparsity > 0.0

    def apply(self, layer: nn.Module, plan: LayerPlan, name: str, ctx: ApplyContext) -> nn.Module:
        if ctx.example is None:
            raise SpaceError(f"layer '{name}': channel pruning needs an example input to trace the model")
        target = out_layer(layer)
        if ctx.output_layers is None:  # one trace for all layers: pruning never changes which one it is
            ctx.output_layers = output_layers(ctx.model, ctx.example)
        if target in ctx.output_layers:
            raise SpaceError(
                f"layer '{name}' produces the model's output; removing its channels would drop classes: use sparsity_mode: unstructured for it"
            )
        n_out = target.weight.shape[0]
        n_remove = min(n_out - 1, round(plan.sparsity * n_out))
        if n_remove <= 0:
            return layer
        scores, graph = channel_scores(ctx, target, plan.importance, name)
        idxs = sorted(torch.argsort(scores, stable=True)[:n_remove].tolist())
        remove_channels(ctx.model, target, idxs, ctx.example, graph)  # scoring traced the model already, or not
        ctx.channels_removed[name] = idxs
        return layer
