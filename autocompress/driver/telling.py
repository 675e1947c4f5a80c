"""Telling: the one write path of a search's results. A trial's attributes, values and state
go in together; its packed model (and deployed file) into the study's artifact store; the
front kept up to date and its snapshot written next to Optuna's tables."""

from __future__ import annotations

import collections
import logging
import math
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from autocompress import _optuna, pareto, tables
from autocompress.artifact_store import store_artifact, write_artifact
from autocompress.baseline import Baseline, trial_metrics
from autocompress.driver.leases import Lease
from autocompress.driver.timings import Timings
from autocompress.errors import StorageError
from autocompress.plan import MetricInfo, Result
from autocompress.stats import bootstrap_drop, unpack_rows
from autocompress.tasks import Task
from autocompress.tasks.metrics import METRICS

log = logging.getLogger(__name__)

ONNX_MIMETYPE = "application/onnx"
ACZ_MIMETYPE = "application/x-autocompress"
# A pruned trial's constraint value is how many points its last rung missed the accuracy limit
# by, plus this: it is never feasible.
PRUNED_VIOLATION = 0.01


class Teller:
    """Stores one study's results, trial by trial, and keeps its front."""

    def __init__(
        self, study: optuna.Study, engine: sa.engine.Engine, study_id: int, lease: Lease, artifact_dir: str, task: Task, timings: Timings
    ) -> None:
        self.study, self._engine, self._study_id = study, engine, study_id
        self._lease, self.artifact_dir, self._task, self._timings = lease, artifact_dir, task, timings
        self.failures: collections.Counter[str] = collections.Counter()  # reason -> count, this run
        self.pruned = 0  # trials stopped at a rung, this run
        self.last_prune_reason = ""
        self.analysis: pareto.Analysis | None = None  # after the last COMPLETE trial
        self._front: pareto.FrontState | None = None  # the analysis, kept up to date trial by trial
        self._baseline: dict[str, Any] | None = None  # the stored baseline, read once
        self._max_drop: tuple[float | None] | None = None  # the study's drop limit, once read

    def store_baseline(self, baseline: dict[str, Any], result: Result) -> None:
        """The baseline's numbers and its files, stored once before the first trial."""
        baseline["artifact_id"] = store_artifact(self.study, result.artifact, self.artifact_dir, "baseline.acz", ACZ_MIMETYPE)
        if result.onnx:
            baseline["onnx_artifact_id"] = store_artifact(self.study, result.onnx, self.artifact_dir, "baseline.onnx", ONNX_MIMETYPE)
        self.study.set_user_attr("baseline", baseline)

    def add_seconds(self, key: str, seconds: float) -> None:
        """Wall seconds of a phase of the search, added to what earlier runs recorded (the report
        sets the warm start's cost beside the trials')."""
        before = self.study.user_attrs.get(key)
        self.study.set_user_attr(key, round(seconds + (before if isinstance(before, (int, float)) else 0.0), 2))

    @property
    def metric(self) -> MetricInfo:
        """What the first objective measures (from the stored baseline, else the task)."""
        if self._baseline:
            return Baseline.of(self._baseline).metric
        return self._task.metric_info

    def limit(self) -> float | None:
        """The study's drop limit in its metric's units, read once (``pareto.study_constraint``)."""
        if self._max_drop is None:
            self._max_drop = (pareto.study_constraint(self.study),)
        return self._max_drop[0]

    def tell(self, trial: optuna.Trial, result: Result, plan: dict[str, Any], prune_reason: str | None) -> TrialState:
        """Store one result; the state the trial ends in. ``prune_reason``: why a trial the
        pruner stopped was stopped."""
        # The trial's attributes go in one transaction, before its state: a crash leaves the
        # trial RUNNING without them (the next driver fails and re-queues it), never half-described.
        attrs: dict[str, Any] = {"worker": result.worker}
        if result.worker.get("node_id"):
            attrs["node_id"] = result.worker["node_id"]
        if result.error is None and result.pruned_at is not None:
            return self._pruned(trial, result, attrs, prune_reason or "stopped by the pruner")
        if not result.ok:
            reason = result.error or "invalid measurement"
            self.failures[reason] += 1
            _optuna.set_trial_attrs(trial, {**attrs, "fail_reason": reason})
            self.study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, reason)
            return TrialState.FAIL
        return self._complete(trial, result, attrs, plan)

    def _pruned(self, trial: optuna.Trial, result: Result, attrs: dict[str, Any], reason: str) -> TrialState:
        """A trial stopped at a rung: PRUNED, with what it reached (the rungs' accuracies as
        intermediate values, size and latency when measured before fine-tuning, the reason)."""
        self.last_prune_reason = reason
        baseline = self._baseline or self.study.user_attrs.get("baseline", {})
        attrs.update(pruned_at=result.pruned_at, prune_reason=reason, rungs=result.rungs, finetune_steps=result.finetune_steps)
        drop = None
        if baseline:
            base = Baseline.of(baseline)
            drop = base.accuracy_drop(result.accuracy)
            attrs["drop_points"] = round(drop, 3)  # at the rung it reached
            if result.size_bytes:
                attrs["size_bytes"] = result.size_bytes
                attrs["compression_ratio"] = round(base.compression_ratio(result.size_bytes), 2)
            if math.isfinite(result.latency_ms):
                attrs["latency_ms"] = base.latency_at(result.latency_ratio)
        # Never feasible (its model was never finished): TPE then ranks it among the infeasible
        # trials by how far it missed, where it would rank pruned trials by their intermediate
        # values through a single direction, which a three-objective study does not have.
        missed = max(0.0, (drop or 0.0) - (self.limit() or 0.0))
        system = _optuna.constraint_attrs("max_accuracy_drop", missed + PRUNED_VIOLATION)
        _optuna.set_trial_attrs(trial, attrs, system)
        self.study.tell(trial, state=TrialState.PRUNED)
        self.pruned += 1
        return TrialState.PRUNED

    def _complete(self, trial: optuna.Trial, result: Result, attrs: dict[str, Any], plan: dict[str, Any]) -> TrialState:
        if not self._baseline:  # set once, before the first trial: read it once
            self._baseline = self.study.user_attrs.get("baseline", {})
        baseline = self._baseline
        metrics = trial_metrics(result, baseline)
        attrs.update(metrics=metrics, per_layer=result.per_layer, finetune_log=result.finetune_log, windows=result.windows)
        attrs["finetune_steps"] = result.finetune_steps
        if result.rungs:
            attrs["rungs"] = result.rungs
        if result.val_scores:  # a protocol task: per-sample rows on both splits, and the test score
            attrs.update(val_scores=result.val_scores, test_scores=result.test_scores, test_score=result.test_score)
            attrs.update(self._worker_intervals(result, baseline))
        else:
            attrs["val_correct"] = result.val_correct
        if "accuracy_drop" in metrics:  # flat, so optuna-dashboard's trial table shows them as columns
            if self.metric.scale == 100.0:
                attrs["drop_points"] = round(metrics["accuracy_drop"], 3)
            else:  # in the metric's units and direction (positive: worse)
                attrs[f"{self.metric.name}_drop"] = round(metrics["accuracy_drop"], 6)
            attrs["compression_ratio"] = round(metrics["compression_ratio"], 2)
            attrs["speedup"] = round(metrics["speedup"], 3)
        if baseline.get("deploy"):  # optuna-dashboard's trial table shows what each latency came from
            attrs["deploy"] = f"{baseline['deploy']} [{result.latency_backend}]"
        system = self._files(trial, result, attrs)
        max_drop = self.limit()
        if max_drop is not None and baseline:
            system.update(_optuna.constraint_attrs("max_accuracy_drop", metrics["accuracy_drop"] - max_drop))
        values = [result.accuracy, float(metrics["size_bytes"]), metrics["latency_ms"]]
        _optuna.complete_trial(self.study, trial, values, attrs, system)
        with self._lease.ask_lock():  # drivers sharing a study write their snapshots one at a time
            with self._timings.part("analysis"):
                if self._front is None:  # built once from the stored trials (a resumed study's included)
                    self._front = pareto.FrontState(baseline, self.limit())
                self._front.add_values(trial.number, values)
                # Other drivers' trials: one COUNT says whether any completed since; only then
                # are the study's trials listed, and only the unseen ones analysed.
                if _optuna.count_trials(self.study, (TrialState.COMPLETE,)) != len(self._front.points):
                    self._front.add(_optuna.trial_rows(self.study, (TrialState.COMPLETE,)))
                self.analysis = analysis = self._front.analysis()
            with self._timings.part("tables"):
                tables.record_trial(self._engine, self._study_id, trial.number, result.per_layer, plan, analysis)
        return TrialState.COMPLETE

    def _files(self, trial: optuna.Trial, result: Result, attrs: dict[str, Any]) -> dict[str, Any]:
        """The trial's packed model and deployed file in the artifact store; their listing for
        the trial's system attributes. A file that cannot be stored fails the trial, with the reason."""
        system: dict[str, Any] = {}
        try:
            with self._timings.part("artifacts"):
                meta = write_artifact(result.artifact, self.artifact_dir, f"trial-{trial.number}.acz", ACZ_MIMETYPE)
                attrs["artifact_id"] = meta.artifact_id
                system.update(_optuna.artifact_listing(meta))
                if result.onnx:  # the very file whose accuracy and latency were measured
                    meta = write_artifact(result.onnx, self.artifact_dir, f"trial-{trial.number}.onnx", ONNX_MIMETYPE)
                    attrs["onnx_artifact_id"] = meta.artifact_id
                    system.update(_optuna.artifact_listing(meta))
        except StorageError as exc:
            # The database stays consistent: this trial is failed with the reason, never left RUNNING.
            attrs.pop("artifact_id", None)
            _optuna.set_trial_attrs(trial, {**attrs, "fail_reason": f"artifact not stored: {exc}"}, system)
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        return system

    def _worker_intervals(self, result: Result, baseline: dict[str, Any]) -> dict[str, Any]:
        """A corpus-level metric of the user's own: its reduce lives in the user's code, which the
        driver holds (it called the task function) but the analyser never imports, so the
        drop's paired bootstrap is computed here and stored with the trial."""
        protocol = self._task.protocol
        if protocol is None or not protocol.metric.corpus or protocol.metric.name in METRICS:
            return {}
        out: dict[str, Any] = {}
        for split in ("val", "test"):
            base, other = unpack_rows(baseline.get(f"{split}_scores")), unpack_rows(getattr(result, f"{split}_scores"))
            if base is not None and other is not None and base.shape == other.shape and len(base):
                out[f"{split}_interval"] = bootstrap_drop(base, other, protocol.metric.value, protocol.metric.drop).to_dict()
        return out
