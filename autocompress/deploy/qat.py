"""Activation quantization simulated while fine-tuning (QAT), for int8 deploy targets.

An int8 ONNX export quantizes the inputs of every layer at <= 8 bits to uint8 with a per-tensor
range (min..max) calibrated on training batches. Fine-tuning with the same rounding lets the
weights adapt to it, so the accuracy measured on the integer kernels survives.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from autocompress.compress import layer_map, leaf_layers
from autocompress.plan import CompressionPlan

LEVELS = 255  # uint8, asymmetric, as the export's activations
MOMENTUM = 0.1  # running range: a moving average of each batch's min and max


class _InputFakeQuant:
    """Forward pre-hook: uint8 fake quantization over a running (min, max) range (zero always
    representable, as ONNX Runtime's), gradients straight through."""

    def __init__(self) -> None:
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        low, high = x.detach().amin().clamp_max(0), x.detach().amax().clamp_min(0)
        if self.low is None or self.high is None:
            self.low, self.high = low, high
        else:
            self.low = (1 - MOMENTUM) * self.low + MOMENTUM * low
            self.high = (1 - MOMENTUM) * self.high + MOMENTUM * high
        scale = ((self.high - self.low) / LEVELS).clamp_min(1e-8)
        zero = torch.round(-self.low / scale)
        quantized = (torch.clamp(torch.round(x / scale) + zero, 0, LEVELS) - zero) * scale
        return (x + (quantized - x).detach(), *args[1:])


@contextmanager
def int8_activations(model: nn.Module, plan: CompressionPlan) -> Iterator[int]:
    """Simulate int8 inputs on the layers planned at <= 8 bits while the block runs; yields how
    many layers were hooked."""
    layers = layer_map(model)
    handles = [
        leaf.register_forward_pre_hook(_InputFakeQuant())
        for name, lp in plan.layers.items()
        if lp.integer_codes and name in layers
        for leaf in leaf_layers(layers[name])
        if not isinstance(leaf, nn.Embedding)  # its input is token ids: a table lookup, no activation to quantize
    ]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()
