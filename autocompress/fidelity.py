"""Multi-fidelity trials: rungs, and the pruners that stop a trial at one.

A worker reports its model's validation accuracy at each rung (a fine-tuning step; 0 is before
the first step), with the size and latency it will have (known before fine-tuning when the
front rule needs them). The driver records each report as an intermediate value and asks the
study's pruner whether to go on; a stopped trial ends at the worker's next checkpoint and is
stored PRUNED with what it reached. Pruners live in ``PRUNERS``, one per ``search.pruner``.

``front`` is the rule a multi-objective search needs: it learns, from the trials that finished,
how much accuracy fine-tuning still added after each rung, and stops a trial whose accuracy at
its rung plus the most any finished trial as low there gained would still be dominated by the
current front at the trial's size and latency, or would still break the accuracy constraint.
``median`` and ``hyperband`` are Optuna's own pruners, judging the accuracy alone.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from autocompress.baseline import Baseline
from autocompress.errors import ConfigError
from autocompress.registry import Registry

log = logging.getLogger(__name__)

# Finished trials with a rung reported before the front rule judges anyone at that rung: the
# gain it allows is the largest of theirs, which needs a few to mean anything.
MIN_HISTORY = 5
# Of those, how many must have been no better at the rung than the trial judged, within this
# much accuracy: the rule never extrapolates a recovery it has not seen.
MIN_COMPARABLE = 2
COMPARABLE_TOLERANCE = 0.005


@dataclass(frozen=True)
class Rung:
    """One checkpoint's report: validation accuracy of the model being fine-tuned (in torch, with
    its masks and quantizers) after ``step`` optimizer steps; size and latency ratio of the
    compressed model when measured before fine-tuning (else 0 and None)."""

    step: int
    accuracy: float
    size_bytes: int = 0
    latency_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rung:
        return cls(**data)


@dataclass(frozen=True)
class Reporting:
    """What a search's workers report: at these fine-tuning steps (none: they do not), with size
    and latency measured before fine-tuning when ``early_measure`` (the front rule needs them)."""

    rungs: tuple[int, ...] = ()
    early_measure: bool = False


NO_REPORTING = Reporting()


def rungs_of(rungs: tuple[int, ...] | None, steps: int, pruner: str = "front") -> tuple[int, ...]:
    """The rungs a search reports at: as configured; else 0, 1/4 and 1/2 of the fine-tuning steps,
    or for hyperband 1/27, 1/9 and 1/3 (its successive halving promotes at its smallest rung
    times powers of 3)."""
    if rungs is None:
        rungs = tuple(max(1, steps // 3**k) for k in (3, 2, 1)) if pruner == "hyperband" else (0, steps // 4, steps // 2)
    return tuple(sorted(set(rungs)))


def check_rungs(pruner: str, rungs: tuple[int, ...] | None, steps: int, where: str) -> None:
    """Refuse rungs a trial never reaches, and a pruner with nothing to judge."""
    if pruner == "none":
        return
    if steps <= 0:
        raise ConfigError(
            f"search.pruner is '{pruner}' but finetune.steps is 0 ({where}): a trial has no fine-tuning to stop; "
            "give finetune.steps, or set search.pruner: none"
        )
    for step in rungs or ():
        if step >= steps:
            raise ConfigError(
                f"key 'search.rungs' has {step}, outside the fine-tuning budget of {steps} steps ({where}): use steps from 0 to {steps - 1}"
            )


@dataclass(frozen=True)
class FrontPoint:
    """A point of the current front, as the rule compares: accuracy, bytes, milliseconds."""

    trial: int
    accuracy: float
    size_bytes: float
    latency_ms: float


class TrialPruner(ABC):
    """Decides at each rung whether a trial goes on. ``history`` is the study's finished
    trials, given once when the search starts (a resumed study's included); ``finished`` adds
    each trial as it ends."""

    needs_size_and_latency = False  # the worker measures them before fine-tuning

    def __init__(self, baseline: dict[str, Any], max_drop: float | None) -> None:
        self.baseline = baseline
        self.max_drop = max_drop

    def start(self, history: Iterable[tuple[int, TrialState, dict[int, float], float | None]]) -> None:
        """``history``: (number, state, intermediate values by step, final accuracy or None)."""
        for number, state, values, final in history:
            self.finished(number, state, values, final)

    @abstractmethod
    def decide(self, number: int, rung: Rung, front: list[FrontPoint]) -> str | None:
        """Why trial ``number`` stops at ``rung``, or None to go on."""

    def finished(self, number: int, state: TrialState, values: dict[int, float], final: float | None) -> None:  # noqa: B027
        """A trial ended: COMPLETE with its final accuracy, PRUNED or FAIL with None."""


PRUNERS: Registry[Callable[[dict[str, Any], float | None, tuple[int, ...], int], TrialPruner]] = Registry("pruner")
"""Each entry builds a pruner from the baseline's numbers, the accuracy constraint (points),
the rungs and the fine-tuning steps."""


class FrontRule(TrialPruner):
    needs_size_and_latency = True

    def __init__(self, baseline: dict[str, Any], max_drop: float | None) -> None:
        super().__init__(baseline, max_drop)
        # rung step -> (accuracy there, final accuracy) of each finished trial
        self.history: defaultdict[int, list[tuple[float, float]]] = defaultdict(list)

    def finished(self, number: int, state: TrialState, values: dict[int, float], final: float | None) -> None:
        if state == TrialState.COMPLETE and final is not None:
            for step, value in values.items():
                self.history[step].append((value, final))

    def gain(self, rung: Rung) -> float | None:
        """The most a finished trial gained from this rung to its end, among those that were no
        better here than this one (a trial that starts low may recover more than one that starts
        high: only trials that started as low say how much); None while fewer than
        ``MIN_HISTORY`` finished trials reported this rung, or fewer than ``MIN_COMPARABLE``
        of them were as low. Trials the rule lets through on that ground teach it."""
        seen = self.history.get(rung.step, [])
        if len(seen) < MIN_HISTORY:
            return None
        comparable = [final - at for at, final in seen if at <= rung.accuracy + COMPARABLE_TOLERANCE]
        return max(comparable) if len(comparable) >= MIN_COMPARABLE else None

    def bound(self, rung: Rung) -> float | None:
        """The most this trial may still reach, or None when the rule cannot tell."""
        gain = self.gain(rung)
        return None if gain is None else rung.accuracy + gain

    def decide(self, number: int, rung: Rung, front: list[FrontPoint]) -> str | None:
        bound = self.bound(rung)
        if bound is None or not self.baseline:
            return None
        base = Baseline.of(self.baseline)
        if self.max_drop is not None and base.accuracy_drop(bound) > self.max_drop:
            return (
                f"at step {rung.step} its accuracy {100 * rung.accuracy:.2f}% could reach at most {100 * bound:.2f}% "
                f"(+{100 * (bound - rung.accuracy):.2f} points, the most a finished trial as low there gained): "
                f"a drop over the {self.max_drop:g}-point limit"
            )
        if rung.latency_ratio is None or not rung.size_bytes:
            return None
        latency = base.latency_at(rung.latency_ratio)
        for point in front:
            if (
                point.accuracy >= bound
                and point.size_bytes <= rung.size_bytes
                and point.latency_ms <= latency
                and (point.accuracy > bound or point.size_bytes < rung.size_bytes or point.latency_ms < latency)
            ):
                return (
                    f"at step {rung.step} its accuracy {100 * rung.accuracy:.2f}% could reach at most {100 * bound:.2f}%: "
                    f"trial {point.trial} is more accurate, smaller and faster ({100 * point.accuracy:.2f}%, "
                    f"{point.size_bytes / 1024:.1f} KB, {point.latency_ms:.3f} ms against {rung.size_bytes / 1024:.1f} KB, {latency:.3f} ms)"
                )
        return None


class OptunaPruner(TrialPruner):
    """One of Optuna's single-objective pruners, judging validation accuracy alone. They read a
    single-objective study, so each trial is mirrored into an in-memory one (maximize accuracy)
    holding its intermediate values; the mirror is rebuilt from the stored trials on resume."""

    def __init__(self, baseline: dict[str, Any], max_drop: float | None, pruner: optuna.pruners.BasePruner) -> None:
        super().__init__(baseline, max_drop)
        self.mirror = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
        self._live: dict[int, optuna.Trial] = {}

    def finished(self, number: int, state: TrialState, values: dict[int, float], final: float | None) -> None:
        live = self._live.pop(number, None)
        if live is None:
            if state not in (TrialState.COMPLETE, TrialState.PRUNED) or not values:
                return
            # A stored trial (a resumed study's): replayed rung by rung, so the pruner keeps the
            # book it would have kept (successive halving's rungs are its own trial attributes).
            live = self.mirror.ask()
            for step in sorted(values):
                live.report(values[step], step)
                live.should_prune()
        if state == TrialState.COMPLETE:
            self.mirror.tell(live, final)
        else:
            self.mirror.tell(live, state=state)

    def decide(self, number: int, rung: Rung, front: list[FrontPoint]) -> str | None:
        live = self._live.get(number)
        if live is None:
            live = self._live[number] = self.mirror.ask()
        live.report(rung.accuracy, rung.step)
        if live.should_prune():
            return f"at step {rung.step} its accuracy {100 * rung.accuracy:.2f}% is below the {type(self.mirror.pruner).__name__}'s bar"
        return None


class NoPruner(TrialPruner):
    def decide(self, number: int, rung: Rung, front: list[FrontPoint]) -> str | None:
        return None


PRUNERS.register("none")(lambda baseline, max_drop, rungs, steps: NoPruner(baseline, max_drop))
PRUNERS.register("front")(lambda baseline, max_drop, rungs, steps: FrontRule(baseline, max_drop))
# Median: a trial below the finished trials' median at the same rung stops, once 5 finished.
PRUNERS.register("median")(
    lambda baseline, max_drop, rungs, steps: OptunaPruner(baseline, max_drop, optuna.pruners.MedianPruner(n_startup_trials=MIN_HISTORY))
)
# Hyperband over the fine-tuning steps, from the first rung past 0 (successive halving, factor 3).
PRUNERS.register("hyperband")(
    lambda baseline, max_drop, rungs, steps: OptunaPruner(
        baseline,
        max_drop,
        optuna.pruners.HyperbandPruner(min_resource=max(1, min((r for r in rungs if r > 0), default=1)), max_resource=steps, reduction_factor=3),
    )
)


def make_pruner(name: str, baseline: dict[str, Any], max_drop: float | None, rungs: tuple[int, ...], steps: int) -> TrialPruner:
    return PRUNERS.get(name)(baseline, max_drop, rungs, steps)
