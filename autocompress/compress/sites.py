"""The canonical form of a model: every weight a compression site as a layer the model calls.

Some models hold weights outside a Linear they call: ``nn.MultiheadAttention`` keeps q, k and v
in one fused ``in_proj_weight`` (a quarter of ViT-B's weights) and reads its output projection's
weight directly; a GPT-2 style ``Conv1D`` stores its weight transposed ([in, out]). ``canonical``
rewrites them, in place and with the same outputs, as plain ``nn.Linear`` layers the model calls:

* ``nn.MultiheadAttention`` -> :class:`Attention`: ``q_proj``, ``k_proj``, ``v_proj`` and
  ``out_proj`` Linears, the same call signature and masks; whole heads are its structured unit
  (:meth:`Attention.remove_heads` keeps the projections and ``num_heads`` consistent);
* ``Conv1D`` -> ``nn.Linear`` holding the weight transposed.

Then every technique, the packer, the loader and the exporters see one kind of site. The plan
names layers of the canonical form; the user's baseline is measured as they built it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.compress._base import set_submodule
from autocompress.compress.lowrank import Factorized

_CANONICAL_ATTR = "_autocompress_canonical"


class Attention(nn.Module):
    """``nn.MultiheadAttention`` with its four projections as Linears it calls (same forward)."""

    # What torch's own transformer layers read to choose their fused fast path, which needs the
    # fused weight: these decline it, so the layers call this module.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, kdim: int, vdim: int, bias: bool, dropout: float, batch_first: bool) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, batch_first
        self.head_dim = embed_dim // num_heads  # what heads are removed in: it never changes
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def of(cls, mha: nn.MultiheadAttention) -> Attention:
        """The same attention, its weights copied (on their device: a meta model stays meta)."""
        ref = mha.out_proj.weight
        with torch.device(ref.device):
            att = cls(mha.embed_dim, mha.num_heads, mha.kdim, mha.vdim, mha.in_proj_bias is not None, mha.dropout, mha.batch_first)
        att.to(ref.dtype)
        e = mha.embed_dim
        if mha.in_proj_weight is not None:
            weights = list(mha.in_proj_weight.detach().split(e))
            trainable = mha.in_proj_weight.requires_grad
        else:
            weights = [mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach()]
            trainable = mha.q_proj_weight.requires_grad
        biases = list(mha.in_proj_bias.detach().split(e)) if mha.in_proj_bias is not None else [None] * 3
        pairs = [(weights[i], biases[i]) for i in range(3)]
        pairs.append((mha.out_proj.weight.detach(), None if mha.out_proj.bias is None else mha.out_proj.bias.detach()))
        with torch.no_grad():
            for proj, (w, b) in zip((att.q_proj, att.k_proj, att.v_proj, att.out_proj), pairs, strict=True):
                proj.weight.copy_(w)
                proj.weight.requires_grad_(trainable if proj is not att.out_proj else mha.out_proj.weight.requires_grad)
                if b is not None and proj.bias is not None:
                    proj.bias.copy_(b)
        return att.train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, source, heads = query.shape[0], query.shape[1], key.shape[1], self.num_heads
        q = self.q_proj(query).reshape(n, length, heads, -1).transpose(1, 2)
        k = self.k_proj(key).reshape(n, source, heads, -1).transpose(1, 2)
        v = self.v_proj(value).reshape(n, source, heads, -1).transpose(1, 2)
        mask = _additive_mask(attn_mask, key_padding_mask, n, heads, q.dtype)
        causal = is_causal and mask is None  # with a mask given, the mask is the causal one (as in torch)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            if causal:
                scores = scores.masked_fill(torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p) @ v
            weights = weights.mean(dim=1) if average_attn_weights else weights
            weights = weights.squeeze(0) if unbatched else weights
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, -1))
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def remove_heads(self, heads: list[int]) -> None:
        """Remove whole heads: their rows of q, k and v and their columns of the output projection."""
        gone = set(heads)
        keep = [h for h in range(self.num_heads) if h not in gone]
        if not keep:
            raise ValueError("an attention keeps at least one head")
        rows = head_rows(keep, self.head_dim)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            _keep_rows(out_linear(proj), rows)
        _keep_columns(in_linear(self.out_proj), rows)
        self.num_heads = len(keep)


def head_rows(heads: list[int], head_dim: int) -> list[int]:
    """The output channels of a projection that belong to ``heads``."""
    return [h * head_dim + i for h in heads for i in range(head_dim)]


def out_linear(layer: nn.Module) -> nn.Linear:
    """The Linear whose output channels are the layer's (the second factor when factorized)."""
    found = layer.second if isinstance(layer, Factorized) else layer
    assert isinstance(found, nn.Linear)
    return found


def in_linear(layer: nn.Module) -> nn.Linear:
    """The Linear whose input channels are the layer's (the first factor when factorized)."""
    found = layer.first if isinstance(layer, Factorized) else layer
    assert isinstance(found, nn.Linear)
    return found


def _keep_rows(linear: nn.Linear, rows: list[int]) -> None:
    index = torch.tensor(rows, dtype=torch.long, device=linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.detach().index_select(0, index).clone(), requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach().index_select(0, index).clone(), requires_grad=linear.bias.requires_grad)
    linear.out_features = len(rows)


def _keep_columns(linear: nn.Linear, columns: list[int]) -> None:
    index = torch.tensor(columns, dtype=torch.long, device=linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.detach().index_select(1, index).clone(), requires_grad=linear.weight.requires_grad)
    linear.in_features = len(columns)


def _additive_mask(
    attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, n: int, heads: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s masks (True or a float added: masked) as one float mask that
    broadcasts over (batch, heads, queries, keys)."""

    def additive(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        return mask.to(dtype)

    merged = None
    if attn_mask is not None:
        merged = additive(attn_mask)
        if merged.dim() == 3:  # (batch * heads, queries, keys)
            merged = merged.reshape(n, heads, merged.shape[-2], merged.shape[-1])
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).reshape(n, 1, 1, key_padding_mask.shape[-1])
        merged = padding if merged is None else merged + padding
    return merged


def attention_of(model: nn.Module, name: str) -> tuple[Attention, str] | None:
    """The :class:`Attention` a layer ``name`` projects for, and which projection it is."""
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    return (owner, child) if isinstance(owner, Attention) and child in ("q_proj", "k_proj", "v_proj", "out_proj") else None


def _canonical_attention(mha: nn.MultiheadAttention) -> str | None:
    """Why an attention keeps its own form (extra key/value biases), or None."""
    if mha.bias_k is not None or mha.add_zero_attn:
        return "nn.MultiheadAttention with add_bias_kv or add_zero_attn: not a compression site yet"
    return None


def _is_conv1d(module: nn.Module) -> bool:
    """A GPT-2 style Conv1D: x @ weight + bias, the weight [in, out] (``nf`` outputs)."""
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and getattr(module, "nf", None) == weight.shape[1]
        and (bias is None or tuple(bias.shape) == (weight.shape[1],))
        and not any(True for _ in module.children())
    )


def _linear_of(conv1d: nn.Module) -> nn.Linear:
    weight: torch.Tensor = conv1d.weight  # type: ignore[assignment]
    bias: Any = conv1d.bias
    with torch.device(weight.device):
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None)
    linear.to(weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.detach().t())
        if bias is not None:
            linear.bias.copy_(bias.detach())
    linear.weight.requires_grad_(weight.requires_grad)
    return linear.train(conv1d.training)


def canonical(model: nn.Module) -> nn.Module:
    """Rewrite ``model`` in place into its canonical form (see the module's doc); idempotent."""
    if hasattr(model, _CANONICAL_ATTR):
        return model
    replace: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention) and _canonical_attention(module) is None:
            replace.append((name, Attention.of(module)))
        elif _is_conv1d(module):
            replace.append((name, _linear_of(module)))
        elif isinstance(module, nn.TransformerEncoder):
            # Its nested-tensor path hands the attention nested tensors; the plain path gives
            # the same values at every token that is not padding.
            module.use_nested_tensor = False
    rewritten = []
    for name, module in replace:
        if not name:  # the model is itself the layer: nothing holds it to swap
            continue
        set_submodule(model, name, module)
        rewritten.append(name)
    setattr(model, _CANONICAL_ATTR, rewritten)
    return model


def is_canonical(model: nn.Module) -> bool:
    """Whether ``canonical`` rewrote a layer of ``model`` (a file of it says so: its reader rewrites the same)."""
    return bool(getattr(model, _CANONICAL_ATTR, None))


def kept_reason(module: nn.Module) -> str | None:
    """Why ``canonical`` leaves a module of a site kind as it is, or None."""
    if isinstance(module, nn.MultiheadAttention):
        return _canonical_attention(module)
    return None
