"""Per-output-channel symmetric k-bit weight quantization with a straight-through estimator.

Codes are integers in ``[-(2^(k-1)-1), 2^(k-1)-1]`` (at most 2^k - 1 levels per channel, zero
exact, so pruned weights stay pruned); the scale of each output channel is ``max|w| / qmax``
rounded to float16, the precision the packed format stores it in, so the evaluated model is the
shipped one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.compress._base import TECHNIQUES, ApplyContext, Technique, leaf_layers
from autocompress.plan import FULL_PRECISION_BITS, LayerPlan

_MIN_SCALE = 2.0**-14  # smallest normal float16: keeps scales representable and nonzero


class FakeQuant(nn.Module):
    """Parametrization ``w -> scale * round(w / scale)``; gradients pass straight through."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.qmax = 2 ** (bits - 1) - 1

    def scale(self, weight: torch.Tensor) -> torch.Tensor:
        amax = weight.detach().abs().flatten(1).amax(dim=1)
        scale = (amax / self.qmax).clamp_min(_MIN_SCALE).half().float()
        return scale.reshape(-1, *([1] * (weight.dim() - 1)))

    def codes(self, weight: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        scale = self.scale(weight) if scale is None else scale
        return torch.round(weight / scale).clamp(-self.qmax, self.qmax)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = self.scale(weight)
        quantized = self.codes(weight, scale) * scale
        if not self.training:
            # Exactly codes * scale: what the packed artifact reloads to, bit for bit.
            # (The straight-through form below can differ from it in the last bit.)
            return quantized
        return weight + (quantized - weight).detach()


class HalfBias(nn.Module):
    """Parametrization ``b -> float16(b)``: a quantized layer's bias ships in float16 (half the
    bytes of float32, next to codes of a few bits it is a large share of a small file), so the
    evaluated model rounds it too; gradients pass straight through."""

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        rounded = bias.detach().half().float()
        return rounded if not self.training else bias + (rounded - bias.detach())


def round_biases(layer: nn.Module) -> None:
    """Attach ``HalfBias`` to every bias of a quantized layer's leaves."""
    for leaf in leaf_layers(layer):
        if getattr(leaf, "bias", None) is not None and not parametrize.is_parametrized(leaf, "bias"):
            parametrize.register_parametrization(leaf, "bias", HalfBias())


@TECHNIQUES.register("quantize")
class Quantize(Technique):
    order = 30

    def applies(self, plan: LayerPlan) -> bool:
        return plan.bits < FULL_PRECISION_BITS and plan.quant_mode == "uniform"

    def apply(self, layer: nn.Module, plan: LayerPlan, name: str, ctx: ApplyContext) -> nn.Module:
        for leaf in leaf_layers(layer):
            parametrize.register_parametrization(leaf, "weight", FakeQuant(plan.bits))
        round_biases(layer)
        return layer
