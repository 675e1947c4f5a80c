"""How each weight tensor is stored in the packed artifact, and per-layer accounting.

Per weight tensor the cheapest of three encodings is chosen:

* dense: every value at ``bits`` bits;
* bitmask: one bit per position, plus the nonzero values;
* relative index: each nonzero value carries the number of zeros skipped before it in ``i`` bits;
  a longer run of zeros inserts a filler zero entry (Han, Mao, Dally, "Deep Compression",
  ICLR 2016, section 2); ``i`` in 1..8 is chosen per tensor.

Quantized tensors store integer codes plus one float16 scale per output channel (uniform) or
codebook indices plus the float16 codebook (weight sharing); unquantized
ones store float32 values. A quantized layer's bias is stored in float16 (the evaluated model
rounds it too); other biases, normalisation parameters and buffers count at their dtype's width. ``artifact.pack`` writes exactly these encodings; the size objective is the byte length
of its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress import compress
from autocompress.compress import Factorized, FakeQuant, SharedWeights, Site, Tucker2, leaf_layers
from autocompress.plan import FULL_PRECISION_BITS

MAX_INDEX_BITS = 8


@dataclass
class WeightCodes:
    """The stored form of one weight tensor."""

    values: torch.Tensor  # integer codes when quantized, float values otherwise
    bits: int  # width of one stored value
    channels_with_scale: int  # output channels carrying a float16 scale (0 when unquantized)
    scale: torch.Tensor | None = None  # float16 per-channel scales, when quantized
    codebook: torch.Tensor | None = None  # float16 shared values (code i > 0 is codebook[i - 1]), when shared


def weight_codes(leaf: Site) -> WeightCodes:
    """Recover the stored codes of a layer's weight from its parametrizations."""
    if not parametrize.is_parametrized(leaf, "weight"):
        return WeightCodes(leaf.weight.detach(), FULL_PRECISION_BITS, 0)
    steps: Any = cast(Any, leaf).parametrizations.weight  # a ParametrizationList: an iterable with .original
    weight = steps.original.detach()
    for step in steps:
        if isinstance(step, FakeQuant):
            with torch.no_grad():
                x = step_input(leaf, step)
                scale = step.scale(x)
                return WeightCodes(step.codes(x, scale), step.bits, weight.shape[0], scale.reshape(-1).half())
        if isinstance(step, SharedWeights):
            with torch.no_grad():
                return WeightCodes(step.assign.clone(), step.bits, 0, codebook=step.table()[1:].half())
    return WeightCodes(leaf.weight.detach(), FULL_PRECISION_BITS, 0)


def step_input(leaf: nn.Module, target: nn.Module) -> torch.Tensor:
    """The tensor a parametrization step receives: the original passed through earlier steps."""
    steps: Any = cast(Any, leaf).parametrizations.weight  # a ParametrizationList: an iterable with .original
    x = steps.original.detach()
    for step in steps:
        if step is target:
            return x
        x = step(x)
    raise ValueError("step is not a parametrization of this weight")


def encoded_bits(values: torch.Tensor, value_bits: int) -> tuple[int, str]:
    """Bits of the cheapest encoding of ``values`` and its name."""
    flat = values.reshape(-1)
    n = flat.numel()
    positions = torch.nonzero(flat, as_tuple=False).reshape(-1)
    nnz = positions.numel()
    if nnz == n and n:
        return n * value_bits, "dense"  # no zero to skip: every other encoding adds index bits
    best = (n * value_bits, "dense")
    best = min(best, (n + nnz * value_bits, "bitmask"))
    if nnz:
        zeros_before = torch.diff(positions, prepend=torch.tensor([-1])) - 1
        for index_bits in range(1, MAX_INDEX_BITS + 1):
            fillers = int((zeros_before // (2**index_bits)).sum())
            best = min(best, ((nnz + fillers) * (value_bits + index_bits), f"relative-index-{index_bits}"))
    else:
        best = min(best, (0, "empty"))
    return best


def layer_rows(model: nn.Module, codes: dict[int, WeightCodes] | None = None, encodings: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Per compressed layer: type, rank, bits, params, nonzeros, sparsity and chosen encoding.

    Works on the model as evaluated (masks and quantizers still attached); ``codes`` and
    ``encodings`` (by ``id`` of each leaf layer) are the packer's, computed once. The packer
    adds the bytes each layer takes.
    """
    codes, encodings = codes or {}, encodings or {}
    rows = []
    for name, layer in compress.layer_map(model).items():
        params = nonzeros = 0
        bits = FULL_PRECISION_BITS
        chosen = []
        leaves = leaf_layers(layer)
        for leaf in leaves:
            wc = codes.get(id(leaf)) or weight_codes(leaf)
            bits = wc.bits
            chosen.append(encodings.get(id(leaf)) or encoded_bits(wc.values, wc.bits)[1])
            params += wc.values.numel()
            nonzeros += int(torch.count_nonzero(wc.values))
            bias = getattr(leaf, "bias", None)  # an Embedding has none
            if bias is not None:
                params += bias.numel()
                nonzeros += int(torch.count_nonzero(bias))
        rows.append(
            {
                "layer": name,
                "type": type(leaves[0]).__name__,
                "weight_shape": list(leaves[-1].weight.shape),
                "rank": layer.second.weight.shape[1] if isinstance(layer, Factorized) else None,
                "rank_in": layer.first.weight.shape[0] if isinstance(layer, Tucker2) else None,
                "bits": bits,
                "params": params,
                "nonzeros": nonzeros,
                "sparsity": round(1.0 - nonzeros / max(1, params), 4),
                "encoding": "+".join(chosen),
            }
        )
    return rows
