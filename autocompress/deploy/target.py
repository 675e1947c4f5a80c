"""The deploy target: where and how the shipped model runs, so every trial is measured there.

Plain settings (no torch, no runtime imports) so the study config can hold them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RUNTIME_NAMES = ("torch", "onnxruntime", "openvino")  # keys of deploy.runtimes.RUNTIMES
PRECISIONS = ("fp32", "int8")
DEVICES = ("auto", "cpu", "cuda")
# Deploy keys that define what a latency means; a study resumed with others is refused.
DEPLOY_IDENTITY = ("runtime", "precision", "device", "threads", "batch_size", "resource")


@dataclass(frozen=True)
class DeployConfig:
    # What runs the shipped model. torch: the baked nn.Module; onnxruntime / openvino: the
    # trial's exported ONNX file, loaded by that runtime (accuracy and latency both come from it).
    runtime: str = field(default="torch", metadata={"choices": RUNTIME_NAMES})
    # int8: layers at <= 8 bits run integer kernels (ONNX: QDQ with calibrated activations,
    # simulated while fine-tuning; torch: dynamic int8 Linear kernels, CPU only). fp32: float kernels.
    precision: str = field(default="fp32", metadata={"choices": PRECISIONS})
    device: str = field(default="auto", metadata={"choices": DEVICES})  # auto: the search's device
    threads: int = field(default=1, metadata={"min": 1, "max": 1024})  # intra-op threads; fixed so runs compare
    batch_size: int = field(default=32, metadata={"min": 1, "max": 1 << 16})  # inputs per timed forward pass
    threshold: float = field(default=0.05, metadata={"min": 0.001, "max": 1.0})  # stop timing once the CV <= this
    max_seconds: float = field(default=1.0, metadata={"min": 0.01, "max": 3600.0})  # time cap per measurement
    # Time every trial on a Ray node that has this custom resource (hardware in the loop); None:
    # on the worker that fine-tuned it.
    resource: str | None = None
    calibration_batches: int = field(default=8, metadata={"min": 1, "max": 10_000})  # int8: activation ranges from these

    def describe(self, device: str | None = None) -> str:
        """``onnxruntime int8 cpu, 1 thread, batch 32`` (+ ``on NAME nodes``); ``device``: what
        ``auto`` resolved to."""
        where = f" on '{self.resource}' nodes" if self.resource else ""
        threads = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        return f"{self.runtime} {self.precision} {device or self.device}, {threads}, batch {self.batch_size}{where}"


# The keys of the older ``latency:`` section, read into ``deploy:`` with a deprecation line.
LEGACY_LATENCY_KEYS = ("batch_size", "threads", "threshold", "max_seconds", "backend")


def from_legacy_latency(section: dict) -> dict:
    """``latency: {backend: int8, ...}`` as ``deploy:`` keys (``backend`` -> ``precision``)."""
    out = {k: v for k, v in section.items() if k != "backend"}
    if "backend" in section:
        out["precision"] = section["backend"]
    return out
