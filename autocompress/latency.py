"""Latency and MAC counts of the deployable model.

Latency runs on the model as it would ship: baked weights, physically smaller layers after
factorization or channel pruning. It uses ``torch.utils.benchmark.Timer`` with a fixed thread
count: blocks of runs are timed until the coefficient of variation (CV) of the block times is at
most ``threshold`` or ``max_seconds`` is spent; the median and the CV are reported.

Backends: ``fp32`` times dense float32 kernels. ``int8`` swaps every Linear of a layer planned at
8 bits or fewer for PyTorch's dynamically quantized int8 kernel (``quantize_dynamic``, the
fbgemm/x86 CPU kernels); convolutions stay fp32 (dynamic quantization has no conv kernel). The
backend string stored with each trial names what ran, e.g. ``int8-dynamic[fc1,fc2]+fp32``.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from autocompress.compress import COMPRESSIBLE_TYPES, layer_map, leaf_layers
from autocompress.plan import CompressionPlan

# torch.utils.benchmark imports cpp_extension, which warns about a missing CUDA toolkit on every
# CPU-only machine; that says nothing about latency, so keep it off the user's terminal.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

BACKENDS = ("fp32", "int8")


@dataclass(frozen=True)
class LatencyConfig:
    batch_size: int = field(default=32, metadata={"min": 1})  # inputs per timed forward pass
    threads: int = field(default=1, metadata={"min": 1})  # intra-op threads; fixed so runs compare
    threshold: float = field(default=0.05, metadata={"min": 0.001})  # stop once block CV <= this
    max_seconds: float = field(default=1.0, metadata={"min": 0.01})  # time cap per measurement
    backend: str = field(default="fp32", metadata={"choices": BACKENDS})  # kernels to time


def int8_model(model: nn.Module, plan: CompressionPlan) -> tuple[nn.Module, list[str]]:
    """A copy whose Linears in layers planned at <= 8 bits run PyTorch's int8 dynamic kernels."""
    layers = layer_map(model)
    chosen = [name for name, lp in plan.layers.items() if lp.bits <= 8 and name in layers]
    names = {
        qualified
        for qualified, module in model.named_modules()
        for name in chosen
        if isinstance(module, nn.Linear) and any(module is leaf for leaf in leaf_layers(layers[name]))
    }
    linear_layers = sorted({n for n in chosen if any(isinstance(leaf, nn.Linear) for leaf in leaf_layers(layers[n]))})
    if not names:
        return model, []
    with warnings.catch_warnings():  # eager-mode quantization is deprecated upstream, still shipped
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), names, dtype=torch.qint8)
    return quantized, linear_layers


def measure_latency(
    model: nn.Module, example: torch.Tensor, config: LatencyConfig, plan: CompressionPlan | None = None
) -> tuple[float, float, str]:
    """Median milliseconds of one forward pass on ``example``, the CV of the blocks, the backend."""
    model.eval()
    backend = "fp32" if example.device.type == "cpu" else f"fp32-{example.device.type}"
    if config.backend == "int8" and plan is not None and example.device.type == "cpu":  # int8 kernels are CPU-only
        model, int8_layers = int8_model(model, plan)
        if int8_layers:
            rest = "+fp32" if any(isinstance(m, COMPRESSIBLE_TYPES) for m in model.modules()) else ""
            backend = f"int8-dynamic[{','.join(int8_layers)}]{rest}"
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(example)  # warm-up outside the timer: first-call allocation and dispatch
        timer = benchmark.Timer(stmt="model(example)", globals={"model": model, "example": example}, num_threads=config.threads)
        times: list[float] = []
        deadline = time.perf_counter() + config.max_seconds
        while True:
            times.extend(timer.blocked_autorange(min_run_time=min(0.05, config.max_seconds / 4)).times)
            cv = statistics.pstdev(times) / statistics.mean(times) if len(times) > 1 else float("inf")
            if (len(times) >= 5 and cv <= config.threshold) or time.perf_counter() >= deadline:
                break
    return statistics.median(times) * 1e3, (cv if len(times) > 1 else 0.0), backend


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
