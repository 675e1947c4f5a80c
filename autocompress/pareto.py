"""Pareto analysis over the study's objectives (the task's metric in its direction, size and
latency down). The first objective is top-1 accuracy unless the task names another metric;
"accuracy" below stands for that metric, and a drop is measured in its direction and units.

Everything is computed in a baseline-relative minimization space, so the units compare:

    loss      = drop / scale                        (top-1: fraction, 0.01 is one point;
                                                     other metrics: their own units)
    size      = size_bytes / baseline size_bytes   (1.0 is no compression)
    latency   = latency_ms / baseline latency_ms   (1.0 is no speedup)

Hypervolume is measured in that space against the reference point
``(reference_drop / 100, 1.0, reference_latency)``: a trial counts only where it is within
``reference_drop`` points of the baseline's accuracy, no larger than the baseline and at most
``reference_latency`` times slower. ``reference_drop`` is ``max_accuracy_drop`` when that
constraint is set, else 10 points. The knee is the front point closest (Euclidean) to the
ideal point after scaling each objective to [0, 1] over the front.

With ``max_accuracy_drop`` set (1 point by default), trials losing more accuracy are
infeasible, and so is, constraint or not, a trial no better than always answering the most
common class (a one-sided exact binomial test on the validation split): the front is built from
feasible trials only; infeasible trials stay listed and marked. When no trial is feasible, the
analysis names the closest ones (least accuracy lost) instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import optuna
from optuna.trial import TrialState

from autocompress import _optuna
from autocompress._optuna import compute_hypervolume
from autocompress.baseline import Baseline
from autocompress.plan import MetricInfo

OBJECTIVES = ("accuracy", "size_bytes", "latency_ms")
DIRECTIONS: tuple[Literal["maximize", "minimize"], ...] = ("maximize", "minimize", "minimize")


def objectives(metric: MetricInfo) -> list[str]:
    """The study's metric names: the task's metric, then size and latency."""
    return [metric.name, *OBJECTIVES[1:]]


def directions(metric: MetricInfo) -> list[optuna.study.StudyDirection]:
    """The study's directions: the metric's own, then size and latency down."""
    first = optuna.study.StudyDirection.MAXIMIZE if metric.higher_is_better else optuna.study.StudyDirection.MINIMIZE
    return [first, optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MINIMIZE]


DEFAULT_REFERENCE_DROP = 10.0  # points of accuracy, when no constraint is set
DEFAULT_REFERENCE_SHARE = 0.1  # other metrics: a tenth of the baseline's score, when no constraint is set
DEFAULT_REFERENCE_LATENCY = 2.0  # times the baseline latency


class Scored(Protocol):
    """What the analysis reads of a trial: a ``FrozenTrial`` or a light ``_optuna.TrialRow``."""

    @property
    def number(self) -> int: ...
    @property
    def state(self) -> TrialState: ...
    @property
    def values(self) -> list[float] | None: ...
    @property
    def datetime_complete(self) -> Any: ...


PROJECTIONS = {"accuracy-size": (0, 1), "accuracy-latency": (0, 2)}


def dominates(a: list[float], b: list[float], directions: tuple[str, ...] = DIRECTIONS) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and strictly better somewhere."""
    sign = [1.0 if d == "minimize" else -1.0 for d in directions]
    return dominates_loss([s * v for s, v in zip(sign, a, strict=True)], [s * v for s, v in zip(sign, b, strict=True)])


def dominates_loss(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> bool:
    """Whether loss vector ``a`` (all minimized) dominates ``b``."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def non_dominated(losses: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``losses`` (all minimized) that no other row dominates.

    A sweep in lexicographic order: a row can be dominated only by one before it, and never
    dominates a kept one before it, so each row is compared with the front so far alone
    (O(n x front) time and O(front) memory, where the pairwise matrix took O(n^2) of both).
    Equal rows dominate neither each other: both are kept."""
    n = len(losses)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    order = np.lexsort(losses.T[::-1])
    front = np.empty((0, losses.shape[1]))
    for i in order:
        row = losses[i]
        if len(front) and ((front <= row).all(axis=1) & (front < row).any(axis=1)).any():
            continue
        keep[i] = True
        front = np.vstack([front, row])
    return keep


def hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by ``losses`` and bounded by ``reference`` (all objectives minimized)."""
    inside = losses[(losses < reference).all(axis=1)] if len(losses) else losses
    if len(inside) == 0:
        return 0.0
    front = inside[non_dominated(inside)]
    return float(compute_hypervolume(front, reference, assume_pareto=True))


def knee_index(losses: np.ndarray) -> int | None:
    """Index of the front point closest to the ideal point, objectives scaled to [0, 1]."""
    if len(losses) == 0:
        return None
    low, high = losses.min(axis=0), losses.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    scaled = (losses - low) / span
    return int(np.argmin(np.linalg.norm(scaled, axis=1)))


@dataclass
class Point:
    """One COMPLETE trial in baseline-relative terms."""

    trial: int
    accuracy: float
    size_bytes: int
    latency_ms: float
    accuracy_drop: float  # in the metric's direction and units (top-1: points)
    compression_ratio: float
    speedup: float
    feasible: bool
    at_chance: bool = False  # no better than the most common class: never feasible
    scale: float = 100.0  # the metric's: drop / scale is the loss coordinate

    @property
    def loss(self) -> list[float]:
        return [self.accuracy_drop / self.scale, 1.0 / self.compression_ratio, 1.0 / self.speedup]


@dataclass
class Analysis:
    points: list[Point]
    front: list[int] = field(default_factory=list)  # trial numbers, smallest first
    knee: int | None = None
    hypervolume: float = 0.0
    reference: list[float] = field(default_factory=list)
    max_accuracy_drop: float | None = None
    closest: list[int] = field(default_factory=list)  # when nothing is feasible
    projections: dict[str, list[int]] = field(default_factory=dict)

    @property
    def feasible_count(self) -> int:
        return sum(p.feasible for p in self.points)

    def point(self, trial: int) -> Point:
        if len(self._index) != len(self.points):
            self._index = {p.trial: p for p in self.points}
        return self._index[trial]

    _index: dict[int, Point] = field(default_factory=dict, repr=False, compare=False)


def to_point(number: int, values: list[float], base: Baseline, max_accuracy_drop: float | None) -> Point:
    """One COMPLETE trial's values (accuracy, size_bytes, latency_ms) as a point."""
    accuracy, size_bytes, latency_ms = values
    relative = base.relative(accuracy, size_bytes, latency_ms)
    at_chance = base.at_chance(accuracy)
    return Point(
        trial=number,
        accuracy=accuracy,
        size_bytes=int(size_bytes),
        latency_ms=latency_ms,
        accuracy_drop=relative.accuracy_drop,
        compression_ratio=relative.compression_ratio,
        speedup=relative.speedup,
        feasible=not at_chance and (max_accuracy_drop is None or relative.accuracy_drop <= max_accuracy_drop + 1e-9),
        at_chance=at_chance,
        scale=base.metric.scale,
    )


def to_points(trials: Iterable[Scored], baseline: Baseline | Mapping[str, Any], max_accuracy_drop: float | None) -> list[Point]:
    base = Baseline.of(baseline)
    return [to_point(t.number, t.values, base, max_accuracy_drop) for t in trials if t.state == TrialState.COMPLETE and t.values is not None]


def reference_point(max_accuracy_drop: float | None, baseline: Baseline | Mapping[str, Any] | None = None) -> np.ndarray:
    base = Baseline.of(baseline) if baseline else None
    metric = base.metric if base is not None else MetricInfo()
    if max_accuracy_drop is not None:
        drop = max(max_accuracy_drop, 1e-6)
    elif metric.scale == 100.0 or base is None:
        drop = DEFAULT_REFERENCE_DROP
    else:
        drop = max(DEFAULT_REFERENCE_SHARE * abs(base.accuracy) * metric.scale, 1e-6)
    return np.array([drop / metric.scale, 1.0, DEFAULT_REFERENCE_LATENCY])


def analyse(trials: Iterable[Scored], baseline: Baseline | Mapping[str, Any], max_accuracy_drop: float | None = None) -> Analysis:
    """The front, its hypervolume and knee, projections, and feasibility of every trial."""
    points = to_points(trials, baseline, max_accuracy_drop)
    reference = reference_point(max_accuracy_drop, baseline)
    analysis = Analysis(points=points, reference=reference.tolist(), max_accuracy_drop=max_accuracy_drop)
    feasible = [p for p in points if p.feasible]
    if not feasible:
        analysis.closest = [p.trial for p in sorted(points, key=lambda p: p.accuracy_drop)[:3]]
        return analysis
    losses = np.array([p.loss for p in feasible])
    mask = non_dominated(losses)
    front = [p for p, keep in zip(feasible, mask, strict=True) if keep]
    front_losses = losses[mask]
    analysis.front = [p.trial for p in sorted(front, key=lambda p: (p.size_bytes, p.accuracy_drop, p.trial))]
    knee = knee_index(front_losses)
    analysis.knee = front[knee].trial if knee is not None else None
    analysis.hypervolume = hypervolume(losses, reference)
    for name, (i, j) in PROJECTIONS.items():
        sub = losses[:, [i, j]]
        analysis.projections[name] = sorted(p.trial for p, keep in zip(feasible, non_dominated(sub), strict=True) if keep)
    return analysis


def hypervolume_history(
    trials: Iterable[Scored], baseline: Baseline | Mapping[str, Any], max_accuracy_drop: float | None = None
) -> list[tuple[int, float]]:
    """(complete trials so far, hypervolume) after each COMPLETE trial, in completion order."""
    done = sorted(
        (t for t in trials if t.datetime_complete is not None and t.state == TrialState.COMPLETE and t.values is not None),
        key=lambda t: (t.datetime_complete, t.number),
    )
    state = FrontState(baseline, max_accuracy_drop)
    history: list[tuple[int, float]] = []
    for t in done:
        state.add([t])  # the hypervolume is recomputed only when the front changed
        history.append((len(history) + 1, state.hypervolume))
    return history


class FrontState:
    """The analysis kept up to date one trial at a time: what the driver needs after every tell
    (front, hypervolume, knee, feasibility counts) at a cost that grows with the front, not with
    the study.

    A new point is compared with the current front only (a point the front does not dominate
    joins it and evicts the members it dominates); the hypervolume and the knee are recomputed
    from the front alone, and only when the front changed. Trials are taken by number, once
    each, so it can be fed every COMPLETE trial of a study repeatedly (other drivers' included)
    and equals :func:`analyse` of the same trials, projections aside.
    """

    def __init__(self, baseline: Baseline | Mapping[str, Any], max_accuracy_drop: float | None = None) -> None:
        self.baseline = Baseline.of(baseline)
        self.max_accuracy_drop = max_accuracy_drop
        self.reference = reference_point(max_accuracy_drop, self.baseline)
        self.points: dict[int, Point] = {}
        self.front: dict[int, Point] = {}  # trial -> point, feasible and non-dominated
        self.feasible_count = 0
        self.hypervolume = 0.0
        self.knee: int | None = None

    def add(self, trials: Iterable[Scored]) -> bool:
        """Take the COMPLETE trials not seen before; whether the front changed."""
        return self._take(
            (t.number, t.values) for t in trials if t.number not in self.points and t.state == TrialState.COMPLETE and t.values is not None
        )

    def add_values(self, number: int, values: list[float]) -> bool:
        """Take one trial just told, from its values (no read of the study); whether the front changed."""
        return self._take([] if number in self.points else [(number, values)])

    def _take(self, taken: Iterable[tuple[int, list[float]]]) -> bool:
        changed = False
        for number, values in taken:
            p = self.points[number] = to_point(number, values, self.baseline, self.max_accuracy_drop)
            if p.feasible:
                self.feasible_count += 1
                changed |= self._offer(p)
        if changed:
            self._refresh()
        return changed

    def _offer(self, p: Point) -> bool:
        loss = p.loss
        if any(dominates_loss(q.loss, loss) for q in self.front.values()):
            return False
        for number in [n for n, q in self.front.items() if dominates_loss(loss, q.loss)]:
            del self.front[number]
        self.front[p.trial] = p
        return True

    def _refresh(self) -> None:
        members = sorted(self.front)  # trial order, as analyse() sees them: the same knee on ties
        losses = np.array([self.front[n].loss for n in members])
        self.hypervolume = hypervolume(losses, self.reference)
        knee = knee_index(losses)
        self.knee = members[knee] if knee is not None else None

    def analysis(self) -> Analysis:
        """An :class:`Analysis` of what was taken (without the 2-D projections)."""
        points = [self.points[n] for n in sorted(self.points)]
        analysis = Analysis(
            points=points,
            reference=self.reference.tolist(),
            max_accuracy_drop=self.max_accuracy_drop,
            front=[p.trial for p in sorted(self.front.values(), key=lambda p: (p.size_bytes, p.accuracy_drop, p.trial))],
            knee=self.knee,
            hypervolume=self.hypervolume,
        )
        if not self.front:
            analysis.closest = [p.trial for p in sorted(points, key=lambda p: p.accuracy_drop)[:3]]
        return analysis


def study_constraint(study: optuna.Study) -> float | None:
    """The drop limit recorded with the study: resolved in the metric's units with its baseline
    (``pareto.max_drop``), else its config's ``max_accuracy_drop`` (studies from before)."""
    baseline = study.user_attrs.get("baseline")
    if isinstance(baseline, dict) and "max_drop" in baseline:
        value = baseline["max_drop"]
        return None if value is None else float(value)
    value = (study.user_attrs.get("config", {}).get("pareto") or {}).get("max_accuracy_drop")
    return None if value is None else float(value)


def study_analysis(study: optuna.Study) -> Analysis:
    """Analyse a study with the constraint recorded in its config."""
    return analyse(_optuna.trial_rows(study), study.user_attrs["baseline"], study_constraint(study))
