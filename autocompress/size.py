"""Bytes of the packed representation of a (compressed) model, everything counted.

Per weight tensor the cheapest of three encodings is chosen:

* dense: every value at ``bits`` bits;
* bitmask: one bit per position, plus the nonzero values;
* relative index: each nonzero value carries the number of zeros skipped before it in ``i`` bits;
  a longer run of zeros inserts a filler zero entry (Han, Mao, Dally, "Deep Compression",
  ICLR 2016, section 2); ``i`` in 1..8 is chosen per tensor.

Quantized tensors store integer codes plus one float16 scale per output channel; unquantized
ones store float32 values. Biases, normalisation parameters and buffers count at their dtype's
width. Each tensor also carries a fixed header (encoding, bit-width, shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.compress import FakeQuant, Factorized, compressible_layers, leaf_layers
from autocompress.plan import FULL_PRECISION_BITS

HEADER_BYTES = 16  # per tensor: encoding tag, bit-width, index width, rank and up to 4 dims
SCALE_BITS = 16  # per-channel scales are stored as float16
MAX_INDEX_BITS = 8


@dataclass
class WeightCodes:
    """The stored form of one weight tensor."""

    values: torch.Tensor  # integer codes when quantized, float values otherwise
    bits: int  # width of one stored value
    channels_with_scale: int  # output channels carrying a float16 scale (0 when unquantized)


@dataclass
class SizeReport:
    total_bytes: int
    per_layer: list[dict[str, Any]] = field(default_factory=list)


def weight_codes(leaf: nn.Module) -> WeightCodes:
    """Recover the stored codes of a Linear/Conv2d weight from its parametrizations."""
    if not parametrize.is_parametrized(leaf, "weight"):
        return WeightCodes(leaf.weight.detach(), FULL_PRECISION_BITS, 0)
    weight = leaf.parametrizations.weight.original.detach()
    for step in leaf.parametrizations.weight:
        if isinstance(step, FakeQuant):
            with torch.no_grad():
                return WeightCodes(step.codes(step_input(leaf, step)), step.bits, weight.shape[0])
    return WeightCodes(leaf.weight.detach(), FULL_PRECISION_BITS, 0)


def step_input(leaf: nn.Module, target: nn.Module) -> torch.Tensor:
    """The tensor a parametrization step receives: the original passed through earlier steps."""
    x = leaf.parametrizations.weight.original.detach()
    for step in leaf.parametrizations.weight:
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


def _tensor_bytes(bits: int) -> int:
    return HEADER_BYTES + math.ceil(bits / 8)


def packed_size(model: nn.Module) -> SizeReport:
    """Size in bytes of the packed model and a per-layer breakdown.

    Works on the compressed model as evaluated (masks and quantizers still attached).
    """
    accounted: set[int] = set()
    rows: list[dict[str, Any]] = []
    total = 0
    for name, layer in _top_compressible(model).items():
        layer_bytes = params = nonzeros = 0
        bits = FULL_PRECISION_BITS
        encodings = []
        for leaf in leaf_layers(layer):
            codes = weight_codes(leaf)
            bits = codes.bits
            weight_bits, encoding = encoded_bits(codes.values, codes.bits)
            encodings.append(encoding)
            layer_bytes += _tensor_bytes(weight_bits)
            if codes.channels_with_scale:
                layer_bytes += _tensor_bytes(codes.channels_with_scale * SCALE_BITS)
            params += codes.values.numel()
            nonzeros += int(torch.count_nonzero(codes.values))
            for tensor in _own_tensors(leaf):
                accounted.add(id(tensor))
            if leaf.bias is not None:
                layer_bytes += _tensor_bytes(leaf.bias.numel() * leaf.bias.element_size() * 8)
                params += leaf.bias.numel()
                nonzeros += int(torch.count_nonzero(leaf.bias))
        rows.append(
            {
                "layer": name,
                "type": "Linear" if isinstance(leaf_layers(layer)[0], nn.Linear) else "Conv2d",
                "rank": layer.first.weight.shape[0] if isinstance(layer, Factorized) else None,
                "bits": bits,
                "params": params,
                "nonzeros": nonzeros,
                "sparsity": round(1.0 - nonzeros / max(1, params), 4),
                "encoding": "+".join(encodings),
                "bytes": layer_bytes,
            }
        )
        total += layer_bytes
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in accounted:
            total += _tensor_bytes(tensor.numel() * tensor.element_size() * 8)
    return SizeReport(total_bytes=total, per_layer=rows)


def _top_compressible(model: nn.Module) -> dict[str, nn.Module]:
    """Compressible layers by name, with factorized pairs as one layer (their original name)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, Factorized)}
    for name, m in compressible_layers(model).items():
        if not any(name.startswith(f"{outer}.") for outer in layers) and ".parametrizations." not in name:
            layers[name] = m
    order = [name for name, _ in model.named_modules()]
    return dict(sorted(layers.items(), key=lambda item: order.index(item[0])))


def _own_tensors(leaf: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of a leaf layer, parametrization state included."""
    return list(leaf.parameters()) + list(leaf.buffers())
