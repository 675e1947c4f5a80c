"""Low-rank factorization: truncated SVD, or Tucker-2 for convolutions.

SVD (``lowrank_mode: svd``): Linear(in, out) becomes Linear(in, r) -> Linear(r, out). Conv2d(in,
out, k) becomes a k x k conv to r channels followed by a 1x1 conv to ``out`` channels, from the
SVD of the weight reshaped to ``out x (in*k*k)``. The split keeps stride, padding and dilation on
the first conv so the output shape is unchanged. Embedding(n, d) becomes Embedding(n, r) -> Linear(r,
d): a narrower table and the map back to the model's width.

Tucker-2 (``lowrank_mode: tucker``, Kim et al., ICLR 2016): the conv's 4-way weight is
decomposed along its output and input channel modes by tensorly's ``partial_tucker`` into a
core (r_out x r_in x k x k) and two factor matrices, run as a 1x1 conv to r_in channels, the k x k
core conv (stride, padding, dilation) and a 1x1 conv to ``out`` channels with the bias.
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

    first: nn.Linear | nn.Conv2d | nn.Embedding
    second: nn.Linear | nn.Conv2d

    def __init__(self, first: nn.Linear | nn.Conv2d | nn.Embedding, second: nn.Linear | nn.Conv2d) -> None:
        super().__init__()
        self.first = first
        self.second = second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class Tucker2(Factorized):
    """``second(core(first(x)))``: 1x1 to r_in, the k x k core to r_out, 1x1 to the output."""

    core: nn.Conv2d

    def __init__(self, first: nn.Conv2d, core: nn.Conv2d, second: nn.Conv2d) -> None:
        nn.Module.__init__(self)
        self.first = first  # registration order is execution order: leaf_layers lists them so
        self.core = core
        self.second = second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.core(self.first(x)))


def tucker_applies(layer: nn.Module) -> bool:
    """Tucker-2 needs an ungrouped conv (a Linear's Tucker-2 is its SVD)."""
    return isinstance(layer, nn.Conv2d) and layer.groups == 1


def tucker_limits(layer: nn.Conv2d) -> tuple[int, int]:
    """The largest useful (output, input) Tucker-2 ranks: each mode's unfolding rank."""
    out_ch, in_ch, kh, kw = layer.weight.shape
    return min(out_ch, in_ch * kh * kw), min(in_ch, out_ch * kh * kw)


def full_rank(layer: nn.Module) -> int | None:
    """The rank of the layer's weight matrix; None where factorization does not apply."""
    if isinstance(layer, nn.Linear):
        return min(layer.in_features, layer.out_features)
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        kh, kw = layer.kernel_size
        return min(layer.out_channels, layer.in_channels * kh * kw)
    if isinstance(layer, nn.Embedding) and layer.max_norm is None:  # max_norm renormalizes rows: no factor keeps that
        return min(layer.num_embeddings, layer.embedding_dim)
    return None


def _split(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (A, B) with B @ A the best rank-``rank`` approximation of ``weight`` (out x in)."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    first = (root[:, None] * vh[:rank]).float()
    second = (u[:, :rank] * root[None, :]).float()
    return first, second


def _spatial_like(layer: nn.Conv2d, in_ch: int, out_ch: int) -> nn.Conv2d:
    """A bias-free conv with ``layer``'s kernel, stride, padding and dilation: the factor that
    keeps the output's spatial shape."""
    return nn.Conv2d(
        in_ch,
        out_ch,
        cast(tuple[int, int], layer.kernel_size),
        cast(tuple[int, int], layer.stride),
        cast("str | tuple[int, int]", layer.padding),
        cast(tuple[int, int], layer.dilation),
        bias=False,
        padding_mode=layer.padding_mode,
    )


def factorize(layer: nn.Module, rank: int, name: str = "", mode: str = "svd", rank_in: int | None = None) -> Factorized:
    """Split a Linear or Conv2d into two factors of the given rank (``mode`` svd), or a conv
    into Tucker-2's three (``mode`` tucker: ``rank`` output-side, ``rank_in`` input-side)."""
    if mode == "tucker":
        return tucker2(layer, rank, rank_in, name)
    limit = full_rank(layer)
    if limit is None:
        raise SpaceError(f"layer '{name}': {type(layer).__name__} cannot be factorized; remove its rank knob")
    if not 1 <= rank <= limit:
        raise SpaceError(f"layer '{name}': rank {rank} is outside 1..{limit} (its full rank)")
    bias = getattr(layer, "bias", None) is not None
    first: nn.Linear | nn.Conv2d | nn.Embedding
    second: nn.Linear | nn.Conv2d
    if isinstance(layer, nn.Embedding):  # rows of the table: a narrower table, then a Linear back to the width
        a, b = _split(layer.weight, rank)
        first = nn.Embedding(
            layer.num_embeddings, rank, padding_idx=layer.padding_idx, scale_grad_by_freq=layer.scale_grad_by_freq, sparse=layer.sparse
        )
        second = nn.Linear(rank, layer.embedding_dim, bias=False)
        a, b = b, a.t()
    elif isinstance(layer, nn.Linear):
        a, b = _split(layer.weight, rank)
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=bias)
    else:
        assert isinstance(layer, nn.Conv2d)
        out_ch, in_ch, kh, kw = layer.weight.shape
        a, b = _split(layer.weight.reshape(out_ch, -1), rank)
        a = a.reshape(rank, in_ch, kh, kw)
        b = b.reshape(out_ch, rank, 1, 1)
        first = _spatial_like(layer, in_ch, rank)
        second = nn.Conv2d(rank, out_ch, 1, bias=bias)
    with torch.no_grad():
        first.weight.copy_(a)
        second.weight.copy_(b)
        if second.bias is not None and isinstance(layer.bias, torch.Tensor):
            second.bias.copy_(layer.bias)
    return Factorized(first, second).to(layer.weight.device)


def tucker2(layer: nn.Module, rank_out: int, rank_in: int | None, name: str = "") -> Tucker2:
    """Tucker-2 of an ungrouped Conv2d's weight along its channel modes (tensorly)."""
    from tensorly.decomposition import partial_tucker

    if not tucker_applies(layer):
        raise SpaceError(f"layer '{name}': Tucker-2 needs an ungrouped Conv2d, not {type(layer).__name__}: use lowrank_mode svd for it")
    assert isinstance(layer, nn.Conv2d)
    out_ch, in_ch = layer.weight.shape[:2]
    for side, r, limit in zip(("output", "input"), (rank_out, rank_in), tucker_limits(layer), strict=True):
        if r is None or not 1 <= r <= limit:
            raise SpaceError(
                f"layer '{name}': Tucker {side} rank {r} is outside 1..{limit} (the rank of its {side} unfolding); use a rank fraction in (0, 1]"
            )
    assert rank_in is not None
    weight = layer.weight.detach().double().cpu().numpy()
    (core, (u_out, u_in)), _ = partial_tucker(weight, rank=[rank_out, rank_in], modes=[0, 1], init="svd", n_iter_max=50, random_state=0)
    first = nn.Conv2d(in_ch, rank_in, 1, bias=False)
    core_conv = _spatial_like(layer, rank_in, rank_out)
    second = nn.Conv2d(rank_out, out_ch, 1, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(u_in.T.copy()).float().reshape(rank_in, in_ch, 1, 1))
        core_conv.weight.copy_(torch.from_numpy(core.copy()).float())
        second.weight.copy_(torch.from_numpy(u_out.copy()).float().reshape(out_ch, rank_out, 1, 1))
        if second.bias is not None and isinstance(layer.bias, torch.Tensor):
            second.bias.copy_(layer.bias)
    return Tucker2(first, core_conv, second).to(layer.weight.device)


@TECHNIQUES.register("lowrank")
class LowRank(Technique):
    order = 10

    def applies(self, plan: LayerPlan) -> bool:
        return plan.rank is not None and plan.lowrank_mode == "svd"

    def apply(self, layer: nn.Module, plan: LayerPlan, name: str, ctx: ApplyContext) -> nn.Module:
        assert plan.rank is not None
        return factorize(layer, plan.rank, name)


@TECHNIQUES.register("tucker")
class Tucker(Technique):
    order = 10

    def applies(self, plan: LayerPlan) -> bool:
        return plan.rank is not None and plan.lowrank_mode == "tucker"

    def apply(self, layer: nn.Module, plan: LayerPlan, name: str, ctx: ApplyContext) -> nn.Module:
        assert plan.rank is not None
        return tucker2(layer, plan.rank, plan.rank_in, name)
