"""Low-rank factorization by truncated SVD.

Linear(in, out) becomes Linear(in, r) -> Linear(r, out). Conv2d(in, out, k) becomes a k x k conv
to r channels followed by a 1x1 conv to ``out`` channels, from the SVD of the weight reshaped to
``out x (in*k*k)``. The rank is the knob; the split keeps stride, padding and dilation on the
first conv so the output shape is unchanged.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from autocompress.compress._base import TECHNIQUES, ApplyContext, Technique
from autocompress.errors import SpaceError
from autocompress.plan import LayerPlan


class Factorized(nn.Module):
    """``second(first(x))``: the two factors of a low-rank layer."""

    first: nn.Linear | nn.Conv2d
    second: nn.Linear | nn.Conv2d

    def __init__(self, first: nn.Linear | nn.Conv2d, second: nn.Linear | nn.Conv2d) -> None:
        super().__init__()
        self.first = first
        self.second = second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def full_rank(layer: nn.Module) -> int | None:
    """The rank of the layer's weight matrix; None where factorization does not apply."""
    if isinstance(layer, nn.Linear):
        return min(layer.in_features, layer.out_features)
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        kh, kw = layer.kernel_size
        return min(layer.out_channels, layer.in_channels * kh * kw)
    return None


def _split(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (A, B) with B @ A the best rank-``rank`` approximation of ``weight`` (out x in)."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    first = (root[:, None] * vh[:rank]).float()
    second = (u[:, :rank] * root[None, :]).float()
    return first, second


def factorize(layer: nn.Module, rank: int, name: str = "") -> Factorized:
    """Split a Linear or Conv2d into two factors of the given rank."""
    limit = full_rank(layer)
    if limit is None:
        raise SpaceError(f"layer '{name}': {type(layer).__name__} cannot be factorized; remove its rank knob")
    if not 1 <= rank <= limit:
        raise SpaceError(f"layer '{name}': rank {rank} is outside 1..{limit} (its full rank)")
    bias = layer.bias is not None
    first: nn.Linear | nn.Conv2d
    second: nn.Linear | nn.Conv2d
    if isinstance(layer, nn.Linear):
        a, b = _split(layer.weight, rank)
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=bias)
    else:
        assert isinstance(layer, nn.Conv2d)
        out_ch, in_ch, kh, kw = layer.weight.shape
        a, b = _split(layer.weight.reshape(out_ch, -1), rank)
        a = a.reshape(rank, in_ch, kh, kw)
        b = b.reshape(out_ch, rank, 1, 1)
        first = nn.Conv2d(
            in_ch,
            rank,
            cast(tuple[int, int], layer.kernel_size),
            cast(tuple[int, int], layer.stride),
            cast("str | tuple[int, int]", layer.padding),
            cast(tuple[int, int], layer.dilation),
            bias=False,
            padding_mode=layer.padding_mode,
        )
        second = nn.Conv2d(rank, out_ch, 1, bias=bias)
    with torch.no_grad():
        first.weight.copy_(a)
        second.weight.copy_(b)
        if second.bias is not None and isinstance(layer.bias, torch.Tensor):
            second.bias.copy_(layer.bias)
    return Factorized(first, second).to(layer.weight.device)


@TECHNIQUES.register("lowrank")
class LowRank(Technique):
    order = 10

    def applies(self, plan: LayerPlan) -> bool:
        return plan.rank is not None

    def apply(self, layer: nn.Module, plan: LayerPlan, name: str, ctx: ApplyContext) -> nn.Module:
        assert plan.rank is not None
        return factorize(layer, plan.rank, name)
