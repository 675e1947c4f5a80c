"""Structured (channel) pruning: removes output channels for real.

The least important output channels of a layer (by the plan's ``importance``: the L1 norm of
their weights unless it says otherwise, see ``importance.py``) are removed with Torch-Pruning's
dependency graph, which shrinks every layer that consumes them (the next
conv's or linear's inputs, BatchNorm, residual adds, concatenations) so the network stays
consistent. An attention loses whole heads instead, planned on its q projection
(``compress.sites.Attention``). The removed indices are recorded so a packed artifact can replay
the same surgery.
"""

from __future__ import annotations

import torch
from torch import nn

from autocompress.compress._base import TECHNIQUES, ApplyContext, Technique, leaf_layers
from autocompress.compress.dependency import EMBEDDING_CHANNELS, out_layer, output_layers, remove_channels
from autocompress.compress.importance import channel_scores, head_scores
from autocompress.compress.sites import Attention, attention_of, head_rows
from autocompress.errors import SpaceError
from autocompress.plan import LayerPlan

# Channels a layer keeps, at least: a width of 1 reads as broadcasting to Torch-Pruning's graph,
# which then fails to trace the model (a ViT whose embedding width was halved nine times did).
MIN_CHANNELS = 2


@TECHNIQUES.register("channel")
class ChannelPrune(Technique):
    order = 15

    def applies(self, plan: LayerPlan) -> bool:
        return plan.structured and plan.sparsity > 0.0

    def apply(self, layer: nn.Module, plan: LayerPlan, name: str, ctx: ApplyContext) -> nn.Module:
        if ctx.example is None:
            raise SpaceError(f"layer '{name}': channel pruning needs an example input to trace the model")
        if any(isinstance(leaf, nn.Embedding) for leaf in leaf_layers(layer)):
            raise SpaceError(f"layer '{name}': {EMBEDDING_CHANNELS}: use sparsity_mode: unstructured for it")
        target = out_layer(layer)
        found = attention_of(ctx.model, name)
        if found is not None and found[1] != "out_proj":
            return self._heads(layer, plan, name, ctx, *found)
        if ctx.output_layers is None:  # one trace for all layers: pruning never changes which one it is
            ctx.output_layers = output_layers(ctx.model, ctx.example)
        if target in ctx.output_layers:
            raise SpaceError(
                f"layer '{name}' produces the model's output; removing its channels would drop classes: use sparsity_mode: unstructured for it"
            )
        n_out = target.weight.shape[0]
        n_remove = min(n_out - MIN_CHANNELS, round(plan.sparsity * n_out))
        if n_remove <= 0:
            return layer
        scores, graph = channel_scores(ctx, target, plan.importance, name)
        idxs = sorted(torch.argsort(scores, stable=True)[:n_remove].tolist())
        remove_channels(ctx.model, target, idxs, ctx.example, graph)  # scoring traced the model already, or not
        ctx.channels_removed[name] = idxs
        return layer

    @staticmethod
    def _heads(layer: nn.Module, plan: LayerPlan, name: str, ctx: ApplyContext, attention: Attention, role: str) -> nn.Module:
        """An attention's q projection loses whole heads (the least important by the plan's
        criterion over each head's q, k, v and output weights); its channels are recorded."""
        if role != "q_proj":
            raise SpaceError(
                f"layer '{name}': an attention loses channels in whole heads, planned on its q_proj; use sparsity_mode: unstructured for {role}"
            )
        n_remove = min(attention.num_heads - 1, round(plan.sparsity * attention.num_heads))
        if n_remove <= 0:
            return layer
        scores = head_scores(ctx, attention, plan.importance, name)
        heads = sorted(torch.argsort(scores, stable=True)[:n_remove].tolist())
        attention.remove_heads(heads)
        ctx.channels_removed[name] = head_rows(heads, attention.head_dim)
        return layer
