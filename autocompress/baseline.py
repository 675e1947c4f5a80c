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

from autocompress.errors import ConfigError
from autocompress.plan import TOP1, MetricInfo, Result
from autocompress.stats import above_chance

SIZE_OBJECTIVES = ("packed", "deployed")  # pareto.size


def objective_bytes(packed: int, onnx_bytes: int | None, size: str = "packed") -> int:
    """The size objective's bytes (``pareto.size``): the packed artifact, or the file the deploy
    target ran (an ONNX runtime's; for torch, the packed artifact is the deployed file)."""
    return int(onnx_bytes) if size == "deployed" and onnx_bytes else int(packed)


@dataclass(frozen=True)
class Relative:
    """A trial's numbers against the baseline."""

    accuracy_drop: float  # how much worse, in the metric's direction and units (accuracy: points; negative: better)
    compression_ratio: float  # baseline bytes / trial bytes
    speedup: float  # baseline latency / trial latency


@dataclass(frozen=True)
class Baseline:
    accuracy: float  # the metric on the validation split of the deployed form (top-1: a fraction)
    size_bytes: int  # the fp32 artifact from the same packer as the trials'
    latency_ms: float  # on the deploy target
    test_accuracy: float | None = None
    deploy: str | None = None  # what the latency was measured on, in words
    chance_accuracy: float | None = None  # the most common validation class's share
    val_count: int | None = None  # validation images
    metric: MetricInfo = TOP1  # what ``accuracy`` measures, its direction and a drop's units
    chance_score: float | None = None  # a protocol task's best constant prediction on val, when known
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
            metric=MetricInfo.of(baseline.get("metric")),
            chance_score=baseline.get("chance_score"),
            attrs=dict(baseline),
        )

    def accuracy_drop(self, accuracy: float) -> float:
        """How much worse than the baseline's validation score, in the metric's direction and
        units (top-1: points lost)."""
        return self.metric.drop(self.accuracy, accuracy)

    def test_accuracy_drop(self, test_accuracy: float) -> float | None:
        """The same against the baseline's test score; None when it was never measured."""
        return None if self.test_accuracy is None else self.metric.drop(self.test_accuracy, test_accuracy)

    @property
    def max_drop(self) -> float | None:
        """The feasibility limit stored with the baseline (metric units), when it was resolved
        there (``pareto.max_drop``); None when not stored (see :func:`resolve_max_drop`)."""
        value = self.attrs.get("max_drop")
        return float(value) if isinstance(value, (int, float)) else None

    def at_chance(self, accuracy: float) -> bool:
        """Whether a validation score is no better than chance: for top-1 on in-memory data,
        always answering the most common class, beyond luck (an exact binomial test); for a
        protocol task's built-in metric, the best constant prediction (a mean, a median, the
        most common class); False where no chance level was recorded."""
        if self.chance_score is not None:  # a protocol task: no better than a constant prediction
            return self.metric.drop(self.chance_score, accuracy) >= 0.0
        if self.chance_accuracy is None or self.val_count is None:
            return False
        return not above_chance(accuracy, self.val_count, self.chance_accuracy)

    def chance_text(self) -> str:
        """What chance level this baseline was compared with, in words."""
        if self.chance_score is not None:
            return f"the best constant prediction scores {self.metric.format(self.chance_score)}"
        if self.chance_accuracy is not None and self.val_count is not None:
            return (
                f"always answering the most common class scores {self.metric.format(self.chance_accuracy)} "
                f"(an exact binomial test on {self.val_count} validation samples)"
            )
        return "no chance level is known"

    def compression_ratio(self, size_bytes: float) -> float:
        """Baseline bytes over a trial's bytes."""
        return self.size_bytes / size_bytes

    def latency_at(self, ratio: float) -> float:
        """A trial's latency objective: the baseline's stored latency times the paired ratio
        measured in the trial's own slot (one reference for every trial)."""
        return self.latency_ms * ratio

    def relative(self, accuracy: float, size_bytes: float, latency_ms: float) -> Relative:
        return Relative(
            accuracy_drop=self.accuracy_drop(accuracy),
            compression_ratio=self.compression_ratio(size_bytes),
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
            "latency_rounds",
            "latency_seconds",
            "latency_others_cores",
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
    # The size objective as the study chose it (recorded with its baseline); both files' bytes kept.
    metrics["packed_bytes"] = result.size_bytes
    metrics["deployed_bytes"] = objective_bytes(result.size_bytes, result.onnx_bytes, "deployed")
    metrics["size_bytes"] = objective_bytes(result.size_bytes, result.onnx_bytes, (baseline or {}).get("size_objective", "packed"))
    if baseline:
        base = Baseline.of(baseline)
        metrics["latency_ms"] = base.latency_at(result.latency_ratio)
        relative = base.relative(result.accuracy, metrics["size_bytes"], metrics["latency_ms"])
        metrics["accuracy_drop"] = relative.accuracy_drop
        metrics["compression_ratio"] = relative.compression_ratio
        metrics["speedup"] = relative.speedup
    return metrics


def resolve_max_drop(max_drop: str | float | None, max_accuracy_drop: float | None, metric: MetricInfo, baseline_value: float) -> float | None:
    """The feasibility limit in the metric's units: ``pareto.max_drop`` (a number in those units,
    or ``"2%"``, a share of the baseline's score), else for point metrics (top-1, top-k)
    ``pareto.max_accuracy_drop``, its classification spelling; else 1% of the baseline's score."""
    if max_drop is None:
        if metric.scale == 100.0:
            return max_accuracy_drop
        max_drop = "1%"
    if isinstance(max_drop, str):
        text = max_drop.strip()
        try:
            share = float(text[:-1]) / 100.0 if text.endswith("%") else float("nan")
        except ValueError:
            share = float("nan")
        if not share >= 0.0:
            raise ConfigError(f"pareto.max_drop is {max_drop!r}: give a number in the metric's units or a share of the baseline such as '2%'")
        return share * abs(baseline_value) * metric.scale
    return float(max_drop)
