"""Plain-data compression plans and results: keyed by layer names, JSON round-trip.

Plans are what the driver stores on each trial and sends to workers; results are what workers
send back. Neither holds a module, a tensor or an open connection.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

FULL_PRECISION_BITS = 32  # "not quantized": weights stay float32
QUANT_MODES = ("uniform", "kmeans", "ternary")  # integer codes x a scale; a per-layer codebook; two learned values and zero
LOWRANK_MODES = ("svd", "tucker")  # two factors; Tucker-2 of a conv (1x1, kxk, 1x1)
TERNARY_BITS = 2  # a ternary weight's code width (three symbols: zero, negative, positive)
INT8_KERNEL_BITS = 8
ACT_BITS = (
    8,
    16,
    32,
)  # activation widths a space may name; which run depends on the deploy target  # uniform codes this narrow run integer kernels on int8 deploy targets


@dataclass(frozen=True)
class LayerPlan:
    """How to compress one layer.

    Args:
        sparsity: share of the layer's weights set to zero (0 keeps all).
        structured: remove whole output channels instead of single weights.
        bits: weight bit-width; 32 means not quantized.
        rank: rank of the low-rank factorization; None means not factorized. For Tucker-2 it
            is the output-side rank; ``rank_in`` is the input side's.
        quant_mode: ``uniform`` (integer codes times a per-channel scale), ``kmeans`` (codes
            index a per-layer codebook of 2^bits - 1 shared values plus an exact zero) or
            ``ternary`` (a learned negative and positive value plus zero, at ``bits`` 2).
        lowrank_mode: ``svd`` (two factors) or ``tucker`` (Tucker-2 of a conv: 1x1, kxk, 1x1).
        importance: what ranks the weights or channels that pruning removes (``l1``, ``l2``,
            ``taylor``, ``fpgm``; see ``compress.importance``).
        rank_in: Tucker-2's input-side rank; None otherwise.
        act_bits: activation width: 8 runs the layer's integer kernels on an int8 deploy target
            (its activations simulated at 8 bits in fine-tuning), 32 keeps it float there; None:
            as the target runs it (int8 targets: 8 for uniform codes of at most 8 bits).
    """

    sparsity: float = 0.0
    structured: bool = False
    bits: int = FULL_PRECISION_BITS
    rank: int | None = None
    quant_mode: str = "uniform"
    lowrank_mode: str = "svd"
    importance: str = "l1"
    rank_in: int | None = None
    act_bits: int | None = None

    @property
    def integer_codes(self) -> bool:
        """Whether an int8 runtime runs this layer's integer kernels: uniform codes (a codebook's
        values are not on a grid) of at most 8 bits, activations not kept float."""
        return self.bits <= INT8_KERNEL_BITS and self.quant_mode == "uniform" and self.act_bits != 32


# Fields added after plans were first stored: left out of a plan's dict at their default, so
# plans, trial attributes and artifact headers written before them read and compare the same.
_OPTIONAL_FIELDS = {"quant_mode": "uniform", "lowrank_mode": "svd", "importance": "l1", "rank_in": None, "act_bits": None}


def layer_dict(lp: LayerPlan) -> dict[str, Any]:
    return {k: v for k, v in asdict(lp).items() if k not in _OPTIONAL_FIELDS or v != _OPTIONAL_FIELDS[k]}


@dataclass
class CompressionPlan:
    """Per-layer plans keyed by the module's qualified name (``features.0``, ``fc1``...)."""

    layers: dict[str, LayerPlan] = field(default_factory=dict)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: layer_dict(lp) for name, lp in self.layers.items()}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> CompressionPlan:
        return cls({name: LayerPlan(**lp) for name, lp in data.items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CompressionPlan:
        return cls.from_dict(json.loads(text))


@dataclass
class Result:
    """What evaluating one plan measured.

    Args:
        accuracy: the task metric's value on the validation split (top-1 accuracy, a fraction,
            unless the task names another metric; its direction is the task's).
        size_bytes: bytes of the packed representation (codes, sparse index, scales, the rest).
        latency_ms: median forward time of one batch on the deploy target, in milliseconds, as
            measured in this trial's timing slot (the driver's objective scales the stored
            baseline latency by ``latency_ratio`` instead, so load that differs between slots
            cannot move it).
        latency_ratio: median over paired rounds of this model's time / the baseline's, timed
            alternately in the same slot (1.0 for the baseline itself).
        params: parameters of the deployable model (after factorization).
        nonzeros: nonzero weights of the deployable model.
        macs: multiply-accumulates of one sample through the deployable model (dense count).
        per_layer: one row per compressed layer (name, params, nonzeros, bits, rank, bytes).
        finetune_log: training loss every few fine-tuning steps.
        latency_cv: robust coefficient of variation (1.4826 MAD / median) of the paired ratios
            (of the block times, alone).
        latency_capped: the time cap ended the measurement before the CV reached the threshold.
        latency_rounds: timed rounds in the slot; latency_seconds: the slot's length.
        latency_others_cores: CPU cores other processes kept busy on average during the slot
            (measured from /proc/stat); None where it could not be read.
        latency_backend: what ran: runtime, precision, device, integer kernels.
        latency_node: the Ray node that timed it when that is not the worker's (deploy.resource).
        onnx_bytes: length of the ONNX file deployed (ONNX-based runtimes), else None.
        windows: wall-clock windows of the timing slot and of this worker's shared turns.
        val_correct: which validation images it got right (``stats.pack_correct``).
        val_scores: a protocol task's per-sample metric rows on the validation split
            (``stats.pack_rows``): paired against the baseline's for a drop's interval.
        test_score: a protocol task's metric on the test split (taken on the worker, where its
            data opens), read by the re-check of the front; None for in-memory tasks.
        test_scores: its rows, as ``val_scores``.
        chance_score: for the baseline of a protocol task with a built-in metric, what the best
            constant prediction scores on the validation split (a trial no better is never
            feasible); None when unknown (a metric of the user's own).
        finetune_steps: fine-tuning steps taken.
        rungs: validation accuracy at each rung reached (multi-fidelity trials).
        pruned_at: the rung where the driver stopped the trial; its accuracy is that rung's,
            size and latency were measured before fine-tuning; None when it ran to the end.
        error: why the evaluation failed; None when it succeeded.
        worker: where it ran (host, pid, Ray node id when on Ray).
        artifact: the packed model (``size_bytes`` is its length); not stored as an attribute.
    """

    accuracy: float = float("nan")
    size_bytes: int = 0
    latency_ms: float = float("nan")
    params: int = 0
    nonzeros: int = 0
    macs: int = 0
    per_layer: list[dict[str, Any]] = field(default_factory=list)
    finetune_log: list[float] = field(default_factory=list)
    latency_ratio: float = 1.0
    latency_cv: float = 0.0
    latency_capped: bool = False
    latency_rounds: int = 0
    latency_seconds: float = 0.0
    latency_others_cores: float | None = None
    latency_backend: str = "torch fp32 cpu"
    val_correct: str = ""
    val_scores: str = ""
    test_score: float | None = None
    test_scores: str = ""
    chance_score: float | None = None  # the best constant prediction's score on val (baseline only)
    latency_node: str = ""
    onnx_bytes: int | None = None
    windows: dict[str, Any] = field(default_factory=dict)
    eval_seconds: float = 0.0
    error: str | None = None
    worker: dict[str, Any] = field(default_factory=dict)
    finetune_steps: int = 0  # optimizer steps taken (fewer than finetune.steps when pruned)
    rungs: list[dict[str, Any]] = field(default_factory=list)  # fidelity.Rung as dicts, in step order
    pruned_at: int | None = None  # the rung step where the driver stopped it; None: ran to the end
    artifact: bytes = b""
    onnx: bytes = b""  # the ONNX file deployed, when the runtime loads one; not an attribute

    @property
    def ok(self) -> bool:
        finite = all(math.isfinite(v) for v in (self.accuracy, self.latency_ms))
        return self.error is None and finite and self.size_bytes > 0

    @property
    def values(self) -> list[float]:
        """Objective values in the study's order: accuracy, size_bytes, latency_ms."""
        return [self.accuracy, float(self.size_bytes), self.latency_ms]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        return cls(**data)

    @classmethod
    def failure(cls, error: str, **kwargs: Any) -> Result:
        return cls(error=error, **kwargs)


@dataclass(frozen=True)
class MetricInfo:
    """A stored metric's description without its functions (what the reports need)."""

    name: str = "accuracy"
    higher_is_better: bool = True
    scale: float = 100.0
    unit: str = "points"
    corpus: bool = False

    @classmethod
    def of(cls, data: Any) -> MetricInfo:
        """From a study's stored ``metric`` mapping; a study stored before metrics were named
        scored top-1 accuracy."""
        if not isinstance(data, dict):
            return cls()
        return cls(
            name=str(data.get("name", "accuracy")),
            higher_is_better=bool(data.get("higher_is_better", True)),
            scale=float(data.get("scale", 1.0)),
            unit=str(data.get("unit", "")),
            corpus=bool(data.get("corpus", False)),
        )

    def drop(self, baseline: float, value: float) -> float:
        sign = 1.0 if self.higher_is_better else -1.0
        return self.scale * sign * (baseline - value)

    @property
    def is_accuracy(self) -> bool:
        """Top-1 accuracy, the classification spelling (``accuracy``, ``accuracy_drop`` columns)."""
        return self.name == "accuracy"

    @property
    def better(self) -> str:
        """``higher`` or ``lower``: which way the metric improves, as messages say it."""
        return "higher" if self.higher_is_better else "lower"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as stored with a study's baseline (:meth:`of` reads it back)."""
        return {"name": self.name, "higher_is_better": self.higher_is_better, "scale": self.scale, "unit": self.unit, "corpus": self.corpus}

    def format(self, value: float) -> str:
        """A value as people read it: a fraction in percent for point metrics."""
        return f"{100 * value:.2f}%" if self.scale == 100.0 else f"{value:.4g}"

    def drop_unit(self) -> str:
        return "points" if self.scale == 100.0 else (self.unit or f"{self.name} units")


TOP1 = MetricInfo()  # what a study stored before metrics were named: top-1 accuracy, in points
