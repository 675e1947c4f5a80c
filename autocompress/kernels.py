"""PyTorch's int8 kernels for the torch runtime, and MAC counts of the deployable model.

Latency itself is measured by ``deploy.timing`` on the deployed form (``deploy.runtimes``).
``int8_model`` swaps every Linear of a layer planned at 8 bits or fewer for PyTorch's dynamically
quantized int8 kernel (``quantize_dynamic``, the fbgemm/x86 CPU kernels); convolutions stay fp32
(dynamic quantization has no conv kernel): the torch runtime's ``precision: int8``.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from autocompress.compress import COMPRESSIBLE_TYPES, layer_map, leaf_layers
from autocompress.compress.sites import Attention, out_linear
from autocompress.plan import CompressionPlan
from autocompress.tasks.metrics import call_model


def int8_model(model: nn.Module, plan: CompressionPlan) -> tuple[nn.Module, list[str]]:
    """A copy whose Linears in layers planned at <= 8 bits run PyTorch's int8 dynamic kernels."""
    layers = layer_map(model)
    chosen = [name for name, lp in plan.layers.items() if lp.integer_codes and name in layers]
    names = {
        qualified
        for qualified, module in model.named_modules()
        for name in chosen
        if _swappable(module) and any(module is leaf for leaf in leaf_layers(layers[name]))
    }
    linear_layers = sorted({n for n in chosen if any(_swappable(leaf) for leaf in leaf_layers(layers[n]))})
    if not names:
        return model, []
    with warnings.catch_warnings():  # eager-mode quantization is deprecated upstream, still shipped
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), names, dtype=torch.qint8)
    return quantized, linear_layers


def _swappable(module: nn.Module) -> bool:
    """A Linear that PyTorch's dynamic int8 module can replace: not one whose weight its parent
    reads directly (``nn.MultiheadAttention``'s output projection is a
    ``NonDynamicallyQuantizableLinear`` for that reason: swapped, the attention fails)."""
    return isinstance(module, nn.Linear) and not isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear)


def count_macs(model: nn.Module, example: Any) -> int:
    """Multiply-accumulates of one sample through every Linear/Conv2d and every
    ``nn.MultiheadAttention`` (its projections and both attention products: it calls no module,
    so no Linear hook sees them; a quarter of ViT-B's count) (dense count); ``example``
    is a batch tensor, or a protocol task's example input (a tuple or mapping: one sample's
    share of its outputs is counted)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        nonlocal total
        if isinstance(module, nn.MultiheadAttention):
            total += _attention_macs(module, inputs, output[0])
            return
        if isinstance(module, Attention):  # its projections are Linears the hooks see; the two products are not
            query, keys = _tokens(module.batch_first, inputs, output[0])
            total += 2 * query * keys * out_linear(module.q_proj).weight.shape[0]
            return
        per_sample_outputs = output[0].numel()
        if isinstance(module, nn.Linear):
            total += per_sample_outputs * module.in_features
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += per_sample_outputs * (module.in_channels // module.groups) * kh * kw

    counted = (*COMPRESSIBLE_TYPES, nn.MultiheadAttention, Attention)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    try:
        with torch.inference_mode():
            if isinstance(example, torch.Tensor):
                model(example[:1])
            else:
                call_model(model, example)
    finally:
        for h in handles:
            h.remove()
    return total


def _tokens(batch_first: bool, inputs: tuple[Any, ...], output: torch.Tensor) -> tuple[int, int]:
    """Query and key token counts of an attention call (keys passed by keyword: the query's)."""
    tokens = 1 if batch_first else 0  # the token axis of (batch, tokens, dim) or (tokens, batch, dim)
    if output.dim() < 3:  # an unbatched call: (tokens, dim)
        tokens = 0
    query = output.shape[tokens]
    keys = inputs[1].shape[tokens] if len(inputs) > 1 and isinstance(inputs[1], torch.Tensor) and inputs[1].dim() == output.dim() else query
    return query, keys


def _attention_macs(attention: nn.MultiheadAttention, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    """One sample's MACs through an attention module: q/k/v and output projections, Q K^T and
    the weighted sum of V (from its inputs' token counts; keys and values passed by keyword
    are taken to be the query)."""
    query, keys = _tokens(attention.batch_first, inputs, output)
    dim = attention.embed_dim
    projections = query * dim * dim + keys * dim * (attention.kdim + attention.vdim) + query * dim * dim
    return int(projections + 2 * query * keys * dim)
