"""Latency and MAC counts of the deployable model.

Latency uses ``torch.utils.benchmark.Timer.adaptive_autorange``: it warms up, then repeats
blocks of runs until the spread (IQR / median) of the block times drops under the threshold or
the time cap is reached, with a fixed thread count. We report the median and the coefficient
of variation of the blocks.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field

import torch
from torch import nn

# torch.utils.benchmark imports cpp_extension, which warns about a missing CUDA toolkit on every
# CPU-only machine; that says nothing about latency, so keep it off the user's terminal.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

from autocompress.compress import COMPRESSIBLE_TYPES


@dataclass(frozen=True)
class LatencyConfig:
    batch_size: int = field(default=32, metadata={"min": 1})  # inputs per timed forward pass
    threads: int = field(default=1, metadata={"min": 1})  # intra-op threads; fixed so runs compare
    threshold: float = field(default=0.05, metadata={"min": 0.001})  # stop at IQR/median below this
    max_seconds: float = field(default=1.0, metadata={"min": 0.01})  # time cap per measurement


def measure_latency(model: nn.Module, example: torch.Tensor, config: LatencyConfig) -> tuple[float, float]:
    """Median milliseconds of one forward pass on ``example`` and the blocks' CV."""
    model.eval()
    with torch.inference_mode():
        model(example)  # warm-up outside the timer: first-call allocation and dispatch
        timer = benchmark.Timer(
            stmt="model(example)",
            globals={"model": model, "example": example},
            num_threads=config.threads,
        )
        m = timer.adaptive_autorange(threshold=config.threshold, min_run_time=0.01, max_run_time=config.max_seconds)
    times = m.times
    cv = statistics.pstdev(times) / statistics.mean(times) if len(times) > 1 else 0.0
    return m.median * 1e3, cv


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one sample through every Linear/Conv2d (dense count)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        per_sample_outputs = output[0].numel()
        if isinstance(module, nn.Linear):
            total += per_sample_outputs * module.in_features
        else:
            kh, kw = module.kernel_size
            total += per_sample_outputs * (module.in_channels // module.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, COMPRESSIBLE_TYPES)]
    try:
        with torch.inference_mode():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return total
