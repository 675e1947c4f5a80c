"""Activation quantization simulated while fine-tuning (QAT), for int8 deploy targets.

An int8 ONNX export quantizes the inputs of every layer at <= 8 bits with a per-tensor range
calibrated on training batches (the largest magnitude seen). Fine-tuning with the same rounding
lets the weights adapt to it, so the accuracy measured on the integer kernels survives.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from autocompress.compress import layer_map, leaf_layers
from autocompress.plan import CompressionPlan

QMAX = 127  # symmetric int8, as the export's activations
MOMENTUM = 0.1  # running range: a moving average of each batch's largest magnitude


class _InputFakeQuant:
    """Forward pre-hook: ``x -> scale * round(x / scale)`` with a running range, straight-through."""

    def __init__(self) -> None:
        self.amax: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        batch_max = x.detach().abs().amax()
        self.amax = batch_max if self.amax is None else (1 - MOMENTUM) * self.amax + MOMENTUM * batch_max
        scale = (self.amax / QMAX).clamp_min(1e-8)
        quantized = torch.clamp(torch.round(x / scale), -QMAX, QMAX) * scale
        return (x + (quantized - x).detach(), *args[1:])


@contextmanager
def int8_activations(model: nn.Module, plan: CompressionPlan) -> Iterator[int]:
    """Simulate int8 inputs on the layers planned at <= 8 bits while the block runs; yields how
    many layers were hooked."""
    layers = layer_map(model)
    handles = [
        leaf.register_forward_pre_hook(_InputFakeQuant())
        for name, lp in plan.layers.items()
        if lp.bits <= 8 and name in layers
        for leaf in leaf_layers(layers[name])
    ]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()
