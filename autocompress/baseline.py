"""The baseline: the uncompressed model's numbers, and every number measured against them.

A study stores its baseline as a plain mapping in the ``baseline`` user attribute (what the
driver measured on a worker: accuracy, size, latency and how they were taken). ``Baseline`` is
that mapping's typed view, and :meth:`Baseline.relative` is the one place where accuracy drop,
compression ratio and speedup are computed, for the driver's trial metrics, the analyser, the
reports and the dashboard's attributes alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autocompress.plan import Result
from autocompress.stats import above_chance


@dataclass(frozen=True)
class Relative:
    """A trial's numbers against the baseline."""

    accuracy_drop: float  # points of accuracy lost (negative: gained)
    compression_ratio: float  # baseline bytes / trial bytes
    speedup: float  # baseline latency / trial latency


@dataclass(frozen=True)
class Baseline:
    accuracy: float  # validation accuracy of the deployed form, a fraction
    size_bytes: int  # the fp32 artifact from the same packer as the trials'
    latency_ms: float  # on the deploy target
    test_accuracy: float | None = None
    deploy: str | None = None  # what the latency was measured on, in words
    chance_accuracy: float | None = None  # the most common validation class's share
    val_count: int | None = None  # validation images
    attrs: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the stored mapping, whole

    @classmethod
    def of(cls, baseline: Baseline | Mapping[str, Any]) -> Baseline:
        """The typed view of a stored ``baseline`` attribute (a Baseline is returned as is)."""
        if isinstance(baseline, Baseline):
            return baseline
        test = baseline.get("test_accuracy")
        return cls(
            accuracy=float(baseline["accuracy"]),
            size_bytes=int(baseline["size_bytes"]),
            latency_ms=float(baseline["latency_ms"]),
            test_accuracy=None if test is None else float(test),
            deploy=baseline.get("deploy"),
            chance_accuracy=baseline.get("chance_accuracy"),
            val_count=baseline.get("val_count"),
            attrs=dict(baseline),
        )

    def accuracy_drop(self, accuracy: float) -> float:
        """Points lost against the baseline's validation accuracy."""
        return 100.0 * (self.accuracy - accuracy)

    def test_accuracy_drop(self, test_accuracy: float) -> float | None:
        """Points lost against the baseline's test accuracy; None when it was never measured."""
        return None if self.test_accuracy is None else 100.0 * (self.test_accuracy - test_accuracy)

    def at_chance(self, accuracy: float) -> bool:
        """Whether a validation accuracy is no better than always answering the most common
        class, beyond luck (False for a study that did not record that share)."""
        if self.chance_accuracy is None or self.val_count is None:
            return False
        return not above_chance(accuracy, self.val_count, self.chance_accuracy)

    def relative(self, accuracy: float, size_bytes: float, latency_ms: float) -> Relative:
        return Relative(
            accuracy_drop=self.accuracy_drop(accuracy),
            compression_ratio=self.size_bytes / size_bytes,
            speedup=self.latency_ms / latency_ms,
        )


def trial_metrics(result: Result, baseline: dict[str, Any]) -> dict[str, Any]:
    """A trial's stored numbers. Its latency objective is the baseline's stored latency times the
    paired ratio measured in the trial's own slot: every trial is scaled against one reference,
    and load that differs between slots moves the baseline and the candidate alike."""
    metrics: dict[str, Any] = {
        k: getattr(result, k)
        for k in (
            "accuracy",
            "size_bytes",
            "latency_ms",
            "latency_ratio",
            "latency_cv",
            "latency_capped",
            "latency_backend",
            "latency_node",
            "onnx_bytes",
            "params",
            "nonzeros",
            "macs",
            "eval_seconds",
        )
    }
    metrics["latency_ms_measured"] = result.latency_ms  # this slot's own milliseconds, for reference
    if baseline:
        base = Baseline.of(baseline)
        metrics["latency_ms"] = base.latency_ms * result.latency_ratio
        relative = base.relative(result.accuracy, result.size_bytes, metrics["latency_ms"])
        metrics["accuracy_drop"] = relative.accuracy_drop
        metrics["compression_ratio"] = relative.compression_ratio
        metrics["speedup"] = relative.speedup
    return metrics
