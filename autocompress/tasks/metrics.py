"""The task's metric: what the first objective measures, in which direction, and in what units.

A metric scores a model batch by batch and gives, per sample, a row of numbers:

* a **per-sample** metric gives one score per sample (top-1's 0/1, a squared error); the split's
  value is their mean;
* a **corpus-level** metric (mIoU, macro F1) gives per-sample sufficient statistics (a row of
  counts) and a ``reduce`` that turns the rows of a whole split into one number, so the paired
  bootstrap can recompute it on every resample.

Its ``name`` and ``higher_is_better`` are declared, never assumed. A drop is measured in the
metric's direction (positive = worse) and its units: ``scale`` 100 makes a fraction's drop
points (top-1, top-k), 1 keeps the metric's own units (MSE, mIoU).

Built-ins (``METRICS``) take batches of ``(inputs, targets, ...)`` and call ``model(inputs)``.
A user's metric is ``metric(model, batch)`` on batches of any structure; see
:mod:`autocompress.tasks.protocol`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.errors import TaskError
from autocompress.plan import TOP1, MetricInfo
from autocompress.registry import Registry
from autocompress.stats import accuracy

__all__ = ["METRICS", "TOP1", "Metric", "MetricInfo", "builtin_metric", "call_model", "score_rows", "split_batch", "user_metric"]

# (model, batch) -> (N,) scores or (N, k) statistics, on any device
Scorer = Callable[[Any, Any], Any]
Reduce = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class Metric:
    """A named metric with its direction. ``score`` runs on a batch; ``reduce`` (corpus-level
    metrics only) turns a split's stacked rows into the metric's value."""

    name: str
    higher_is_better: bool
    score: Scorer
    reduce: Reduce | None = None  # None: the mean of per-sample scores
    scale: float = 1.0  # a drop's units: 100 turns a fraction into points
    unit: str = ""  # "points" for scale 100
    # What the best constant prediction scores on a split's targets (chance level); None: unknown
    constant: Callable[[list[torch.Tensor]], float] | None = None

    @property
    def corpus(self) -> bool:
        return self.reduce is not None

    def value(self, rows: np.ndarray) -> float:
        """The metric over a split's rows (per-sample scores, or statistics for ``reduce``)."""
        if self.reduce is not None:
            return float(self.reduce(rows))
        return float(np.mean(rows)) if len(rows) else float("nan")

    def drop(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline``, in the metric's direction and units."""
        return self.info().drop(baseline, value)

    def info(self) -> MetricInfo:
        """The metric's description without its functions (what a study stores and reports read)."""
        return MetricInfo(name=self.name, higher_is_better=self.higher_is_better, scale=self.scale, unit=self.unit, corpus=self.corpus)


METRICS: Registry[Callable[[dict[str, Any]], Metric]] = Registry("metric")  # (options) -> Metric


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a built-in metric's or loss's batch: a tuple or list whose first
    two items are those, or a mapping with ``inputs`` and ``targets``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and "inputs" in batch and "targets" in batch:
        return batch["inputs"], batch["targets"]
    raise TaskError(
        f"a built-in metric or loss takes batches of (inputs, targets) or {{'inputs': ..., 'targets': ...}}, got {type(batch).__name__}: "
        "reshape the batches, or give the task its own 'loss' and 'metric' functions"
    )


def call_model(model: Any, inputs: Any) -> Any:
    """``model(inputs)``; a tuple of inputs is passed as positional arguments, a mapping as keywords."""
    if isinstance(inputs, tuple):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def _output_tensor(out: Any, name: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and isinstance(out.get("out"), torch.Tensor):  # torchvision segmentation models
        return out["out"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TaskError(
        f"metric '{name}' needs the model's output as a tensor (or a mapping with 'out'), got {type(out).__name__}: give the task its own metric"
    )


def _outputs_targets(model: Any, batch: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = split_batch(batch)
    out = _output_tensor(call_model(model, inputs), name)
    return out.float(), torch.as_tensor(targets).to(out.device)


def _topk(k: int) -> Scorer:
    def score(model: Any, batch: Any) -> torch.Tensor:
        out, y = _outputs_targets(model, batch, "accuracy" if k == 1 else f"top{k}")
        if k == 1:
            return (out.argmax(dim=1) == y).float()
        return (out.topk(min(k, out.shape[1]), dim=1).indices == y.unsqueeze(1)).any(dim=1).float()

    return score


def _regression(power: int) -> Scorer:
    def score(model: Any, batch: Any) -> torch.Tensor:
        out, y = _outputs_targets(model, batch, "mse" if power == 2 else "mae")
        diff = (out.reshape(out.shape[0], -1) - y.float().reshape(y.shape[0], -1)).abs()
        return (diff**power).mean(dim=1)

    return score


def _confusion_rows(pred: torch.Tensor, target: torch.Tensor, classes: int, ignore_index: int | None) -> torch.Tensor:
    """Per sample, per class: intersection and union pixel counts (mIoU's statistics)."""
    n = pred.shape[0]
    pred, target = pred.reshape(n, -1), target.reshape(n, -1).long()
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    rows = torch.zeros(n, 2 * classes, device=pred.device)
    for c in range(classes):
        p, t = (pred == c) & valid, (target == c) & valid
        rows[:, c] = (p & t).sum(dim=1).float()
        rows[:, classes + c] = (p | t).sum(dim=1).float()
    return rows


def _flat(targets: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([torch.as_tensor(t).reshape(-1).cpu() for t in targets])


def _constant_topk(k: int) -> Callable[[list[torch.Tensor]], float]:
    """Always answering the k most common classes."""

    def constant(targets: list[torch.Tensor]) -> float:
        counts = torch.bincount(_flat(targets).long())
        return float(counts.topk(min(k, len(counts))).values.sum() / counts.sum())

    return constant


def _constant_regression(power: int) -> Callable[[list[torch.Tensor]], float]:
    """Always answering the targets' mean (MSE) or median (MAE): the best constant."""

    def constant(targets: list[torch.Tensor]) -> float:
        rows = torch.cat([torch.as_tensor(t).float().reshape(len(t), -1).cpu() for t in targets])
        center = rows.mean(dim=0) if power == 2 else rows.median(dim=0).values
        return float(((rows - center).abs() ** power).mean())

    return constant


@METRICS.register("accuracy")
def _accuracy(options: dict[str, Any]) -> Metric:
    return Metric("accuracy", True, _topk(1), scale=100.0, unit="points", constant=_constant_topk(1))


@METRICS.register("topk")
def _topk_metric(options: dict[str, Any]) -> Metric:
    k = int(options.get("k", 5))
    return Metric(f"top{k}", True, _topk(k), scale=100.0, unit="points", constant=_constant_topk(k))


@METRICS.register("mse")
def _mse(options: dict[str, Any]) -> Metric:
    return Metric("mse", False, _regression(2), constant=_constant_regression(2))


@METRICS.register("mae")
def _mae(options: dict[str, Any]) -> Metric:
    return Metric("mae", False, _regression(1), constant=_constant_regression(1))


@METRICS.register("miou")
def _miou(options: dict[str, Any]) -> Metric:
    classes = options.get("num_classes")
    if not isinstance(classes, int) or classes < 2:
        raise TaskError("metric 'miou' needs the number of classes: return 'num_classes' from the task function")
    ignore = options.get("ignore_index")

    def score(model: Any, batch: Any) -> torch.Tensor:
        out, y = _outputs_targets(model, batch, "miou")
        return _confusion_rows(out.argmax(dim=1), y, classes, ignore)

    def reduce(rows: np.ndarray) -> float:
        inter, union = rows[:, :classes].sum(axis=0), rows[:, classes:].sum(axis=0)
        present = union > 0  # a class absent from both prediction and truth is left out, as usual
        return float(np.mean(inter[present] / union[present])) if present.any() else float("nan")

    def constant(targets: list[torch.Tensor]) -> float:  # every pixel the most common class
        flat = _flat(targets).long()
        kept = flat[flat != ignore] if ignore is not None else flat
        common = int(torch.bincount(kept).argmax())
        rows = torch.cat([_confusion_rows(torch.full_like(torch.as_tensor(t), common), torch.as_tensor(t), classes, ignore) for t in targets])
        return reduce(rows.numpy())

    return Metric("miou", True, score, reduce=reduce, constant=constant)


@METRICS.register("macro_f1")
def _macro_f1(options: dict[str, Any]) -> Metric:
    classes = options.get("num_classes")
    if not isinstance(classes, int) or classes < 2:
        raise TaskError("metric 'macro_f1' needs the number of classes: return 'num_classes' from the task function")

    def score(model: Any, batch: Any) -> torch.Tensor:
        out, y = _outputs_targets(model, batch, "macro_f1")
        return torch.stack([out.argmax(dim=1).float(), y.float()], dim=1)  # (prediction, truth) per sample

    def reduce(rows: np.ndarray) -> float:
        pred, truth = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
        scores = []
        for c in range(classes):
            tp = np.sum((pred == c) & (truth == c))
            fp, fn = np.sum((pred == c) & (truth != c)), np.sum((pred != c) & (truth == c))
            if tp + fp + fn:  # a class never predicted nor present counts for nothing
                scores.append(2 * tp / (2 * tp + fp + fn))
        return float(np.mean(scores)) if scores else float("nan")

    def constant(targets: list[torch.Tensor]) -> float:  # every sample the most common class
        truth = _flat(targets).float()
        common = float(torch.bincount(truth.long()).argmax())
        return reduce(torch.stack([torch.full_like(truth, common), truth], dim=1).numpy())

    return Metric("macro_f1", True, score, reduce=reduce, constant=constant)


def builtin_metric(name: str, options: dict[str, Any] | None = None) -> Metric:
    """A registered metric by name (``accuracy``, ``topk``/``top5``, ``mse``, ``mae``, ``miou``, ``macro_f1``)."""
    options = dict(options or {})
    if name.startswith("top") and name[3:].isdigit():
        name, options["k"] = ("accuracy", 1) if name == "top1" else ("topk", int(name[3:]))
    try:
        factory = METRICS.get(name)
    except Exception as exc:  # noqa: BLE001  (a RegistryError: re-homed as the task's mistake)
        raise TaskError(f"{exc} (the task's 'metric'), or give a function metric(model, batch) with 'metric_name' and 'higher_is_better'") from None
    return factory(options)


def user_metric(score: Scorer, name: Any, higher_is_better: Any, reduce: Reduce | None = None, where: str = "the task") -> Metric:
    """A user's ``metric(model, batch)`` with its declared name and direction."""
    if not isinstance(name, str) or not name:
        raise TaskError(f"{where} gives a metric function but no 'metric_name': name it, e.g. 'metric_name': 'rmse'")
    if not isinstance(higher_is_better, bool):
        raise TaskError(
            f"{where} gives metric '{name}' without a direction: set 'higher_is_better' to True or False "
            "(a direction is never assumed: an error metric is better when lower)"
        )
    if reduce is not None and not callable(reduce):
        raise TaskError(f"{where}'s 'metric_reduce' is {type(reduce).__name__}: give a function of the split's stacked rows")
    return Metric(name, higher_is_better, score, reduce=reduce)


def score_rows(metric: Metric, model: Any, batch: Any, where: str) -> np.ndarray:
    """One batch's rows as float64 numpy: (N,) scores or (N, k) statistics."""
    got = metric.score(model, batch)
    try:
        rows = torch.as_tensor(got).detach().float().cpu().numpy().astype(np.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TaskError(
            f"metric '{metric.name}' returned {type(got).__name__} on {where} ({exc}): return a 1-D tensor of per-sample scores"
        ) from None
    if rows.ndim == 0 or (rows.ndim > 1 and not metric.corpus) or rows.ndim > 2:
        shape = tuple(rows.shape)
        raise TaskError(
            f"metric '{metric.name}' returned shape {shape} on {where}: a per-sample metric returns one score per sample (1-D); "
            "a corpus-level one returns (N, k) rows and gives 'metric_reduce'"
        )
    return rows


@torch.inference_mode()
def correct_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Which of ``(x, y)`` ``model`` gets right (top-1), one bool per input."""
    model.eval()
    right = [model(x[i : i + batch_size]).argmax(dim=1) == y[i : i + batch_size] for i in range(0, len(x), batch_size)]
    return torch.cat(right) if right else torch.zeros(0, dtype=torch.bool)


def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    return accuracy(correct_of(model, x, y, batch_size))
