"""Rungs: what the workers report while they fine-tune, stored as intermediate values
(optuna-dashboard plots them) and judged by the study's trial pruner (``search.pruner``)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from autocompress import _faults, _optuna, fidelity, pareto
from autocompress.config import StudyConfig
from autocompress.driver.timings import Timings

log = logging.getLogger(__name__)


def reporting(config: StudyConfig) -> fidelity.Reporting:
    """What a search's trials report: nothing without a pruner."""
    search, steps = config.search, config.finetune.steps
    if search.pruner == "none":
        return fidelity.NO_REPORTING
    rungs = fidelity.rungs_of(search.rungs, steps, search.pruner)
    probe = fidelity.make_pruner(search.pruner, {}, None, rungs, steps)
    return fidelity.Reporting(rungs, probe.needs_size_and_latency)


class Rungs:
    """The referee of a study's reports: each one stored, then judged; the trials it stopped."""

    def __init__(
        self,
        study: optuna.Study,
        config: StudyConfig,
        rungs: tuple[int, ...],
        in_flight: dict[int, optuna.Trial],
        analysis: Callable[[], pareto.Analysis | None],
        timings: Timings,
    ) -> None:
        """``in_flight``: the driver's trials handed to workers (read, never changed);
        ``analysis``: the front as it stands."""
        self._in_flight, self._analysis, self._timings = in_flight, analysis, timings
        baseline = study.user_attrs.get("baseline", {})
        self._pruner = fidelity.make_pruner(config.search.pruner, baseline, pareto.study_constraint(study), rungs, config.finetune.steps)
        self._reported: defaultdict[int, dict[int, float]] = defaultdict(dict)  # in flight: step -> accuracy
        self._reasons: dict[int, str] = {}  # stopped, result not yet in: why
        # Taught by the study's finished trials (a resumed study's included).
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        values = _optuna.intermediate_values(study, states)
        rows = _optuna.trial_rows(study, states)
        self._pruner.start((r.number, r.state, values.get(r.number, {}), r.values[0] if r.values else None) for r in rows)

    def judge(self, number: int, rung: fidelity.Rung) -> bool:
        """A worker's report at a rung: stored as the trial's intermediate value, then judged;
        True stops the trial. Runs in the driver's thread."""
        trial = self._in_flight.get(number)
        if trial is None or number in self._reasons:
            return number in self._reasons
        with self._timings.part("rungs"):
            trial.study._storage.set_trial_intermediate_value(trial._trial_id, rung.step, rung.accuracy)
            self._reported[number][rung.step] = rung.accuracy
            _faults.checkpoint("rung-reported")  # not in _faults.STAGES: tests/test_fidelity.py kills here
            analysis = self._analysis()
            front = []
            if analysis is not None:
                front = [fidelity.FrontPoint(n, p.accuracy, p.size_bytes, p.latency_ms) for n in analysis.front for p in (analysis.point(n),)]
            reason = self._pruner.decide(number, rung, front)
        if reason is None:
            return False
        self._reasons[number] = reason
        log.info("trial %d: pruned %s", number, reason)
        return True

    def reason(self, number: int) -> str | None:
        """Why a trial was stopped, if it was."""
        return self._reasons.get(number)

    def finished(self, number: int, state: TrialState, final: float | None) -> None:
        """A trial's end, taught to the pruner; ``final``: a COMPLETE trial's score."""
        self._pruner.finished(number, state, self._reported.pop(number, {}), final)
        self._reasons.pop(number, None)
