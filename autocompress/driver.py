"""The driver: an Optuna study in SQL storage, ask/tell with N trials in flight on a runner.

Only the driver writes to the study storage. Workers get plans and return results. The study's
setup and checks live in ``study_setup``, the drivers' leases and stale-trial recovery in
``leases``; this module is the loop.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import optuna
from optuna.trial import TrialState

from autocompress import _faults, _optuna, fidelity, pareto, sensitivity, tables
from autocompress.artifact_files import remove_partials, store_artifact, write_artifact
from autocompress.baseline import Baseline, resolve_max_drop, trial_metrics
from autocompress.config import ParetoConfig, StudyConfig
from autocompress.deploy.target import DeployConfig
from autocompress.errors import SearchError, StorageError
from autocompress.leases import Lease
from autocompress.plan import CompressionPlan, MetricInfo, Result
from autocompress.progress import ProgressBar
from autocompress.runners import Runner, make_runner
from autocompress.space import SearchSpace
from autocompress.stats import accuracy, bootstrap_drop, chance_accuracy, pack_correct, unpack_rows
from autocompress.storage import mask_url, open_storage, retry_creation, sqlite_path
from autocompress.study_setup import DEPLOY_IDENTITY, WARM_START, WARM_START_CHANNEL, open_study, prepare, sampler_name, task_metric, warm_start_plans
from autocompress.tasks import Task, build_task, correct_of
from autocompress.tasks.custom import task_protocol
from autocompress.tasks.data import CACHE, describe_data, load_data
from autocompress.tasks.metrics import METRICS

log = logging.getLogger(__name__)

__all__ = ["WARM_START", "WARM_START_CHANNEL", "Driver", "measure_baseline", "prepare", "run_search"]

ONNX_MIMETYPE = "application/onnx"
# A pruned trial's constraint value is how many points its last rung missed the accuracy limit
# by, plus this: it is never feasible.
PRUNED_VIOLATION = 0.01
LADDER_HEADROOM = 0.98  # a ladder plan packs, before fine-tuning, within this share of its size target
ACZ_MIMETYPE = "application/x-autocompress"


def measure_baseline(task: Task, runner: Runner, deploy: DeployConfig, pareto_config: ParetoConfig | None = None) -> tuple[dict[str, Any], Result]:
    """The uncompressed model's numbers (its fp32 artifact from the same packer, its deployed
    form on the deploy target) and the result, measured by a worker: on the target the trials use.
    A protocol task's test split is scored there too (its data opens only on the workers)."""
    result = runner.baseline()
    if result.error:
        raise SearchError(f"the baseline model cannot be measured: {result.error}")
    metric = task.metric_info
    scores: dict[str, Any]
    if task.data is None:
        scores = {
            "accuracy": result.accuracy,
            "test_accuracy": result.test_score,
            # Per-sample metric rows, to pair each trial's drop with them (a paired bootstrap).
            "val_scores": result.val_scores,
            "test_scores": result.test_scores,
            "val_count": int(result.val_scores.split(":")[1]) if result.val_scores else None,
            "num_classes": task.num_classes,
            # The best constant prediction's score (a built-in metric's chance level): a trial
            # no better is never feasible. None: a metric of the user's own, no chance check.
            "chance_score": result.chance_score,
        }
    else:
        test_correct = correct_of(task.build_model(), task.data.x_test, task.data.y_test).numpy()
        scores = {
            "accuracy": result.accuracy,
            "test_accuracy": accuracy(test_correct),
            # Per-image correctness, to pair each trial's drop with it (stats.paired_drop), and the
            # most common class's share: a trial no better than it is never on the front.
            "val_correct": result.val_correct,
            "test_correct": pack_correct(test_correct),
            "val_count": len(task.data.y_val),
            "chance_accuracy": chance_accuracy(task.data.y_val.numpy()),
        }
    pareto_config = pareto_config or ParetoConfig()
    numbers = {
        **scores,
        "metric": metric.to_dict(),
        # The feasibility limit in the metric's units, resolved once against this baseline.
        "max_drop": resolve_max_drop(pareto_config.max_drop, pareto_config.max_accuracy_drop, metric, result.accuracy),
        "size_bytes": result.size_bytes,
        "latency_ms": result.latency_ms,
        "latency_cv": result.latency_cv,
        "latency_capped": result.latency_capped,
        "latency_backend": result.latency_backend,
        "latency_node": result.latency_node,
        "onnx_bytes": result.onnx_bytes,
        "deploy": deploy.describe(result.worker.get("target")),
        "params": result.params,
        "macs": result.macs,
    }
    if task.trained_by:  # trained by this search or an earlier one: where (host, device, Ray node)
        numbers["trained_by"] = task.trained_by
    return numbers, result


T = TypeVar("T")


class AskAhead(Generic[T]):
    """One trial asked and sampled ahead, in a thread, while the workers run: a freed worker
    gets its next trial without waiting on the sampler, whose ask grows with the study (TPE's
    took about 0.7 s at 10,000 trials). ``make`` claims and samples a trial, or returns None
    when the study needs no more; its errors reach the loop through ``take``."""

    def __init__(self, make: Callable[[], T | None]) -> None:
        self._make = make
        self._cond = threading.Condition()
        self._ready: T | None = None
        self._error: BaseException | None = None
        self._wanted = self._busy = self._closed = False
        self._thread = threading.Thread(target=self._run, name="autocompress-ask-ahead", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Ask one ahead, unless one is ready."""
        with self._cond:
            self._wanted = True
            self._cond.notify_all()

    def take(self) -> T | None:
        """The trial asked ahead (waiting for one being asked), or None."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            ready, self._ready = self._ready, None
            return ready

    def close(self, timeout: float = 5.0) -> T | None:
        """Stop the thread; the trial it had ready, never handed out. One still being asked
        after ``timeout`` is left RUNNING for the next driver to recover."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            ready, self._ready = self._ready, None
            return ready

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not (self._wanted and self._ready is None and self._error is None):
                    self._cond.wait()
                if self._closed:
                    return
                self._wanted, self._busy = False, True
            made: T | None = None
            error: BaseException | None = None
            try:
                made = self._make()
            except BaseException as exc:  # noqa: BLE001  (take() raises it in the loop)
                error = exc
            with self._cond:
                self._ready, self._error, self._busy = made, error, False
                self._cond.notify_all()


class Driver:
    """Runs one study to its target number of COMPLETE trials."""

    def __init__(
        self,
        config: StudyConfig,
        runner: Runner | None = None,
        progress: bool = True,
        say: Callable[[str], None] | None = None,
        ask_ahead: bool | None = None,
    ) -> None:
        """``progress`` shows the live bar; ``say`` receives a line at each step (what is read,
        trained, started and measured, then each finished trial when there is no bar).
        ``ask_ahead`` asks the next trial in a thread while workers run; by default when they
        run in other processes (in-process evaluation would share its timed CPU with it)."""
        self.config = config
        self.runner = runner or make_runner(config.search)
        self.show_progress = progress
        self.say = say or (lambda _line: None)
        self.study: optuna.Study | None = None
        self.failures: collections.Counter[str] = collections.Counter()  # reason -> count, this run
        self.driver_id = uuid.uuid4().hex[:12]  # this process's lease in autocompress_drivers
        self._analysis: pareto.Analysis | None = None  # after the last COMPLETE trial
        self._front: pareto.FrontState | None = None  # the analysis, kept up to date trial by trial
        # The driver's own seconds by component, this run: what benchmarks/driver_scale.py prints.
        self.timings: collections.defaultdict[str, float] = collections.defaultdict(float)
        self._plans: dict[int, dict[str, Any]] = {}  # trial number -> its plan, while in flight
        self.ask_ahead = ask_ahead
        self._ahead: AskAhead[tuple[optuna.Trial, CompressionPlan]] | None = None
        self._claiming = threading.Lock()
        # Seconds from a worker's result to the next trial handed out: how long a freed worker waits.
        self.handoffs: list[float] = []
        self._result_at: float | None = None
        self._baseline: dict[str, Any] | None = None
        self._task: Task | None = None  # the task this driver searches (its protocol's metric, for intervals)
        self._max_drop: tuple[float | None] | None = None  # the study's drop limit, once read
        self._in_flight: dict[int, optuna.Trial] = {}  # trial number -> its trial, handed to a worker
        self._pruner: fidelity.Pruner | None = None  # judges reports at rungs (search.pruner)
        self._reported: collections.defaultdict[int, dict[int, float]] = collections.defaultdict(dict)  # in flight: step -> accuracy
        self._prune_reasons: dict[int, str] = {}  # stopped, result not yet in: why
        self.pruned = 0  # trials stopped at a rung, this run
        self._last_prune_reason = ""

    @contextlib.contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[part] += time.perf_counter() - start

    def run(self) -> optuna.Study:
        cfg, start = self.config, time.monotonic()
        self._started = time.perf_counter()
        self.say(f"checking {cfg.source}: task {cfg.task.model}, reading its data and matching the space to its layers")
        space = self._prepare()
        self.say(f"  {len(space.layers)} layers, {space.dimensions} searched knobs ({time.monotonic() - start:.1f} s)")
        start = time.monotonic()
        where = cfg.search.ray_address or os.environ.get("RAY_ADDRESS")
        if cfg.search.workers:
            self.say(f"joining Ray at {where}" if where else f"starting a local Ray for {cfg.search.workers} workers")
        self.runner.connect(self.config.deploy)  # Ray's own checks (deploy.resource), still before storage
        if cfg.search.workers:
            self.say(f"  Ray ready ({time.monotonic() - start:.1f} s)")
        try:
            self._check_protocol_on_worker()
            return self._run(space)
        finally:
            self.runner.close()

    def _check_protocol_on_worker(self) -> None:
        """A protocol task's splits, loss and metric tried on a worker (two batches each), before
        the storage is touched: a split that fails to open, a loss or a metric that cannot take a
        batch stops the search with nothing stored. ``check-task`` also checks the direction."""
        from autocompress.check_task import quick_checks

        protocol = task_protocol(self.config.task)
        if protocol is None:
            return
        start = time.monotonic()
        checks = quick_checks(self.config, protocol, self.runner)
        self.say(f"  task checked on a worker: {', '.join(c.name for c in checks)} ({time.monotonic() - start:.1f} s)")

    def _run(self, space: SearchSpace) -> optuna.Study:
        cfg = self.config
        storage = open_storage(cfg.storage)
        study, cfg = open_study(storage, cfg, space)
        self.config = cfg  # with the name the study got (--new-study)
        retry_creation(lambda: tables.ensure_schema(storage.engine))
        self._engine, self._study_id = storage.engine, storage.get_study_id_from_name(study.study_name)
        self.lease = Lease(self._engine, self._study_id, self.driver_id)
        done = self._count_in(study, TrialState.COMPLETE)
        database = sqlite_path(cfg.storage)
        where = f" ({database.resolve()})" if database is not None and not database.is_absolute() else ""  # report/dashboard from elsewhere need it
        self.say(
            f"study '{study.study_name}' in {mask_url(cfg.storage)}{where}: "
            + (f"{done} of {cfg.search.trials} trials complete" if done else "starting")
        )
        task = build_task(cfg.task, cfg.cache_dir, say=self.say, trainer=self.runner.trainer(cfg.search.device))
        self._task = task
        self.study = study
        # One absolute folder, recorded with the study: a run resumed from another folder keeps
        # writing where export and report read.
        self.artifact_dir = str(study.user_attrs.get("artifact_dir") or Path(cfg.artifact_dir).resolve())
        if remove_partials(self.artifact_dir):
            log.warning("removed the partial artifact files of a process that stopped mid-write")
        done = self._count(TrialState.COMPLETE)
        if done >= cfg.search.trials and "baseline" in study.user_attrs:
            log.info("study '%s' already has %d complete trials", study.study_name, done)
            return study
        self.lease.start()
        try:
            self.lease.recover_stale_trials(study)
            reporting = self._fidelity()
            self.runner.start(task, cfg.finetune, cfg.deploy, cfg.search.device, reporting)
            if "baseline" not in study.user_attrs:
                start = time.monotonic()
                self.say(f"measuring the baseline on the deploy target ({cfg.deploy.runtime} {cfg.deploy.precision})")
                baseline, result = measure_baseline(task, self.runner, cfg.deploy, cfg.pareto)
                metric = task.metric_info
                limit = baseline["max_drop"]
                self.say(
                    f"  {metric.name} {metric.format(baseline['accuracy'])} ({metric.better} is better), "
                    f"{baseline['size_bytes'] / 1024:.1f} KB, {baseline['latency_ms']:.3f} ms ({time.monotonic() - start:.1f} s); "
                    + (f"feasible: a drop of at most {limit:.4g} {metric.drop_unit()}" if limit is not None else "no drop limit")
                )
                if task.protocol is not None:  # in-memory classification keeps its binomial test, said in the docs
                    chance = baseline.get("chance_score")
                    self.say(
                        f"  chance level: {metric.name} {metric.format(chance)} by the best constant prediction; a trial no better is never feasible"
                        if chance is not None
                        else f"  chance level: off (no constant prediction is known for {metric.name}, a metric of the task's own)"
                    )
                _faults.checkpoint("baseline-measured")
                baseline["artifact_id"] = store_artifact(study, result.artifact, self.artifact_dir, "baseline.acz", ACZ_MIMETYPE)
                if result.onnx:
                    baseline["onnx_artifact_id"] = store_artifact(study, result.onnx, self.artifact_dir, "baseline.onnx", ONNX_MIMETYPE)
                study.set_user_attr("baseline", baseline)
            # The ladder takes the trials the uniform warm start leaves; with none left, the
            # sensitivity would steer nothing and is not measured. A study that has run trials
            # already (made before there was a ladder) is left as it is.
            slots = cfg.search.trials - len(warm_start_plans(space, cfg.search.trials))
            fresh = "ladder" not in study.user_attrs and not _optuna.count_trials(study, (TrialState.COMPLETE, TrialState.PRUNED))
            if cfg.search.sensitivity and cfg.search.warm_start and slots > 0 and fresh:
                self._sensitivity_and_ladder(study, space, cfg.task.resolved().key(), cfg.search.ladder[:slots])
            if reporting.rungs:
                self._start_pruner(study, reporting.rungs)
            self._loop(study, space)
            self._recheck_front(study)
        finally:
            self.lease.finish()
        return study

    def _prepare(self) -> SearchSpace:
        """Every user mistake surfaces here, before storage or Ray; then what data was read."""
        space = prepare(self.config)
        protocol = task_protocol(self.config.task)
        if protocol is not None:
            metric = protocol.metric.info()
            self.say(
                f"  data: {', '.join(protocol.splits)} opened on the workers, never here; metric {metric.name} "
                f"({metric.better} is better{', corpus-level' if metric.corpus else ''}); "
                f"loss {'cross-entropy (the default)' if protocol.loss_is_default else 'the task' + chr(39) + 's own'}"
            )
        else:
            self.say(f"  data: {describe_data(self.config.task, load_data(self.config.task), CACHE.read_seconds)}")
        return space

    def _sensitivity_cache(self, space: SearchSpace, task_key: str) -> Path:
        cfg = self.config
        identity = {k: v for k, v in cfg.to_dict()["deploy"].items() if k in DEPLOY_IDENTITY}
        return Path(cfg.cache_dir) / f"sensitivity-{sensitivity.cache_key(task_key, space, identity)}.json"

    def measure_sensitivity(self) -> tuple[SearchSpace, dict[str, Any], list[sensitivity.Row]]:
        """``autocompress sensitivity``: the space's sensitivity alone (cached or measured on the
        workers), without a study."""
        cfg = self.config
        space = self._prepare()
        key = cfg.task.resolved().key()
        cached = sensitivity.read_cache(self._sensitivity_cache(space, key))
        if cached is not None:
            self.say(f"sensitivity: cached at {self._sensitivity_cache(space, key)}")
            return space, *cached
        self.runner.connect(cfg.deploy)
        try:
            task = build_task(cfg.task, cfg.cache_dir, say=self.say, trainer=self.runner.trainer(cfg.search.device))
            self.runner.start(task, cfg.finetune, cfg.deploy, cfg.search.device)
            return space, *self.sensitivity(space, key)
        finally:
            self.runner.close()

    def sensitivity(self, space: SearchSpace, task_key: str) -> tuple[dict[str, Any], list[sensitivity.Row]]:
        """The space's one-shot sensitivity: from the cache (same task, space and deploy target),
        else measured on the workers and cached."""
        path = self._sensitivity_cache(space, task_key)
        cached = sensitivity.read_cache(path)
        if cached is not None:
            self.say(f"sensitivity: cached at {path}")
            return cached
        cfg = self.config
        count, start = len(sensitivity.probes(space)), time.monotonic()
        self.say(f"sensitivity: {count} one-shot probes of {len(space.groups)} groups on {self.runner.capacity} worker(s)")
        reference, rows = sensitivity.measure(space, self.runner.one_shot, cfg.deploy.precision, task_metric(cfg))
        sensitivity.write_cache(path, reference, rows)
        self.say(f"  done ({time.monotonic() - start:.1f} s), cached at {path}")
        return reference, rows

    def _sensitivity_and_ladder(self, study: optuna.Study, space: SearchSpace, task_key: str, targets: tuple[float, ...]) -> None:
        """The sensitivity, recorded for the study, and the warm start's ladder: plans meeting each
        size target (checked by packing them, before fine-tuning) queued after the uniform ones."""
        _, rows = self.sensitivity(space, task_key)
        tables.record_sensitivity(self._engine, self._study_id, [r.to_dict() for r in rows])
        baseline_bytes = int(study.user_attrs["baseline"]["size_bytes"])
        queued = []
        for target in targets:
            # 2% below the target: fine-tuned codes compress a little differently.
            limit = baseline_bytes / target * LADDER_HEADROOM
            shrink, plan = LADDER_HEADROOM, None
            for _ in range(4):  # the sizes are estimates from knobs measured alone: check, tighten
                found = sensitivity.ladder(space, rows, baseline_bytes, [target], shrink)
                if not found:
                    break
                size = self.runner.one_shot([(space.plan_from_params(found[0].params), False)])[0]["size_bytes"]
                if size <= limit:
                    plan = {**found[0].to_dict(), "one_shot_bytes": size}
                    break
                shrink *= limit / size * LADDER_HEADROOM
            if plan is None:
                self.say(f"  ladder: no plan reaches {target:g}x smaller within the space")
                continue
            queued.append(plan)
            study.enqueue_trial(plan["params"], user_attrs={"ladder_target": target}, skip_if_exists=True)
        if queued:
            points = self._metric.scale == 100.0
            summary = ", ".join(
                f"{p['target']:g}x (one-shot drop {p['estimated_drop']:.1f} pts)"
                if points
                else f"{p['target']:g}x (one-shot drop {p['estimated_drop']:.3g} {self._metric.name})"
                for p in queued
            )
            self.say(f"  warm start: ladder plans for {summary}")
        study.set_user_attr("ladder", queued)

    def _fidelity(self) -> fidelity.Reporting:
        """What trials report (nothing without a pruner); the runner's referee set when they do."""
        search, steps = self.config.search, self.config.finetune.steps
        if search.pruner == "none":
            return fidelity.NO_REPORTING
        rungs = fidelity.rungs_of(search.rungs, steps, search.pruner)
        self.runner.referee = self._rung
        probe = fidelity.make_pruner(search.pruner, {}, None, rungs, steps)
        return fidelity.Reporting(rungs, probe.needs_size_and_latency)

    def _start_pruner(self, study: optuna.Study, rungs: tuple[int, ...]) -> None:
        """The pruner, taught by the study's finished trials (a resumed study's included)."""
        cfg = self.config
        baseline = study.user_attrs.get("baseline", {})
        self._pruner = fidelity.make_pruner(cfg.search.pruner, baseline, pareto.study_constraint(study), rungs, cfg.finetune.steps)
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        values = _optuna.intermediate_values(study, states)
        rows = _optuna.trial_rows(study, states)
        self._pruner.start((r.number, r.state, values.get(r.number, {}), r.values[0] if r.values else None) for r in rows)

    def _rung(self, number: int, rung: fidelity.Rung) -> bool:
        """A worker's report at a rung: stored as the trial's intermediate value (optuna-dashboard
        plots them), then judged; True stops the trial. Runs in the driver's thread."""
        trial = self._in_flight.get(number)
        if trial is None or self._pruner is None or number in self._prune_reasons:
            return number in self._prune_reasons
        with self._timed("rungs"):
            study = trial.study
            study._storage.set_trial_intermediate_value(trial._trial_id, rung.step, rung.accuracy)
            self._reported[number][rung.step] = rung.accuracy
            _faults.checkpoint("rung-reported")  # not in _faults.STAGES: tests/test_fidelity.py kills here
            front = []
            if self._analysis is not None:
                front = [
                    fidelity.FrontPoint(n, p.accuracy, p.size_bytes, p.latency_ms) for n in self._analysis.front for p in (self._analysis.point(n),)
                ]
            reason = self._pruner.decide(number, rung, front)
        if reason is None:
            return False
        self._prune_reasons[number] = reason
        log.info("trial %d: pruned %s", number, reason)
        return True

    def _recheck_front(self, study: optuna.Study) -> None:
        """The front's test-split accuracies, on the deploy target's form, stored once: reports
        only read them."""
        from autocompress.report import recheck

        with self.lease.ask_lock():  # drivers sharing a study merge into one attribute in turn
            done = recheck(study)
        if done:
            log.info("re-checked %d front trials on the test split", done)

    def _count(self, state: TrialState) -> int:
        assert self.study is not None
        return self._count_in(self.study, state)

    @staticmethod
    def _count_in(study: optuna.Study, state: TrialState) -> int:
        return _optuna.count_trials(study, (state,))

    def _loop(self, study: optuna.Study, space: SearchSpace) -> None:
        cfg = self.config.search
        in_flight = self._in_flight
        finished: optuna.Trial | None = None  # a result in hand, not yet told
        complete = self._count(TrialState.COMPLETE)
        failed_in_a_row = 0
        self.say(f"searching: {cfg.trials - complete} more trials, {self.runner.capacity} at a time, sampler {sampler_name(cfg.sampler, cfg.trials)}")
        self.timings["start"] = time.perf_counter() - self._started  # checks, data, storage, Ray, baseline: to the first trial
        if self.runner.runs_in_background if self.ask_ahead is None else self.ask_ahead:
            self._ahead = AskAhead(lambda: self._next_trial(study, space, ("ahead_ask", "ahead_sample")))
        with ProgressBar(self.show_progress, cfg.trials, complete) as bar:
            try:
                while True:
                    self._fill(study, space, in_flight)
                    with self._timed("heartbeat"):
                        self.lease.beat()
                    if not in_flight:
                        complete = self._count(TrialState.COMPLETE)
                        if complete >= cfg.trials:
                            break
                        if self._out_of_time():
                            self.say(
                                f"search.timeout: {cfg.timeout:g} s reached with {complete} of {cfg.trials} trials complete; run again to resume"
                            )
                            break
                        # Other drivers hold the remaining trials: wait for them, or for their
                        # leases to lapse, then take over what they leave behind.
                        time.sleep(1.0)
                        self.lease.recover_stale_trials(study)
                        continue
                    got = self.runner.next_result(timeout=1.0)
                    if got is None:
                        continue
                    number, result = got
                    self._result_at = time.perf_counter()
                    finished = in_flight.pop(number)
                    if self.runner.runs_in_background:
                        # Hand the free worker its next trial first; book-keeping overlaps with it.
                        self._fill(study, space, in_flight)
                    told, finished = finished, None
                    state = self._tell(study, told, result)
                    if state == TrialState.PRUNED:
                        failed_in_a_row = 0
                        if not self.show_progress:
                            self.say(f"trial {number}: pruned, {self._last_prune_reason}")
                    elif state == TrialState.COMPLETE:
                        complete += 1
                        failed_in_a_row = 0
                        if not self.show_progress and self._analysis is not None:
                            self.say(
                                f"trial {number}: {self._metric.name} {self._metric.format(result.accuracy)}, {result.size_bytes / 1024:.1f} KB, "
                                f"{self._analysis.point(number).latency_ms:.3f} ms [{complete}/{cfg.trials} complete, "
                                f"front {len(self._analysis.front)}]"
                            )
                    else:
                        if not self.show_progress:
                            self.say(f"trial {number}: failed ({result.error or 'invalid measurement'})")
                        failed_in_a_row += 1
                        if failed_in_a_row >= cfg.max_failures_in_a_row:
                            reason, count = self.failures.most_common(1)[0]
                            raise SearchError(
                                f"{failed_in_a_row} trials in a row failed; most common reason ({count}x): {reason}: "
                                "fix the cause, or raise search.max_failures_in_a_row"
                            )
                    if self._analysis is not None:
                        bar.update(complete, sum(self.failures.values()), len(self._analysis.front), self._analysis.hypervolume, self.pruned)
            except BaseException as exc:
                reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"search stopped: {exc}"
                ahead = self._ahead.close() if self._ahead is not None else None
                for trial in [*in_flight.values(), *([finished] if finished is not None else []), *([ahead[0]] if ahead else [])]:
                    _optuna.fail_with_reason(study, trial, reason)
                raise
            finally:
                if self._ahead is not None:
                    self._ahead.close()  # nothing is ready at the end: every claim counted toward the target
                    self._ahead = None

    def _fill(self, study: optuna.Study, space: SearchSpace, in_flight: dict[int, optuna.Trial]) -> None:
        """Start trials until every worker is busy or the study needs no more."""
        while len(in_flight) < self.runner.capacity:
            got = None
            if self._ahead is not None:
                with self._timed("wait"):  # only while the thread is mid-ask: it is never idle with work to do
                    got = self._ahead.take()
            got = got or self._next_trial(study, space)
            if got is None:
                return
            trial, plan = got
            in_flight[trial.number] = trial
            if self._result_at is not None:
                self.handoffs.append(time.perf_counter() - self._result_at)
                self._result_at = None
            self.runner.submit(trial.number, plan)
        if self._ahead is not None:
            self._ahead.request()  # the next trial, asked while the workers run

    def _next_trial(
        self, study: optuna.Study, space: SearchSpace, timed: tuple[str, str] = ("ask", "sample")
    ) -> tuple[optuna.Trial, CompressionPlan] | None:
        """Claim a trial and draw its plan; None when the study needs no more."""
        with self._claiming:  # the loop and the ask-ahead thread claim one at a time
            with self._timed(timed[0]):
                trial = self._claim(study, self.config.search.trials)
            if trial is None:
                return None
            try:
                with self._timed(timed[1]):
                    plan = _optuna.sample_then_write(trial, space.sample, functools.partial(self._owned, trial.number))
            except BaseException as exc:
                _optuna.fail_with_reason(study, trial, f"search stopped while sampling: {exc!r}")
                raise
            return trial, plan

    def _owned(self, number: int, plan: CompressionPlan) -> dict[str, Any]:
        """A new trial's user attributes, written with its parameters: whose it is, its plan."""
        self._plans[number] = plan.to_dict()
        return {"driver_id": self.driver_id, "plan": self._plans[number]}

    def _out_of_time(self) -> bool:
        timeout = self.config.search.timeout
        return timeout is not None and time.perf_counter() - self._started >= timeout

    def _claim(self, study: optuna.Study, target: int) -> optuna.Trial | None:
        """Ask for a trial if the study (all drivers together) still needs one.

        COMPLETE plus RUNNING trials of every driver count against the target, so several
        drivers on one study finish exactly the requested number. On PostgreSQL the count
        and the ask are serialised across drivers by an advisory lock.
        """
        # (A driver killed while sampling leaves a RUNNING trial with some parameters; its
        # re-queued copy keeps those and samples the rest.)
        # The owner is written with the parameters, a moment later: recovery leaves a trial
        # without one alone while it is younger than the lease timeout.
        if self._out_of_time():
            return None
        with self.lease.ask_lock():
            counts = _optuna.state_counts(study)
            if counts[TrialState.COMPLETE] + counts[TrialState.RUNNING] >= target:
                return None
            return _optuna.ask(study, queue_empty=not counts[TrialState.WAITING])

    def _tell(self, study: optuna.Study, trial: optuna.Trial, result: Result) -> TrialState:
        """Store one result; the state the trial ends in."""
        with self._timed("tell"):
            state = self._store(study, trial, result)
        if self._pruner is not None:
            reported = self._reported.pop(trial.number, {})
            self._pruner.finished(trial.number, state, reported, result.accuracy if state == TrialState.COMPLETE else None)
        self._prune_reasons.pop(trial.number, None)
        return state

    def _store_pruned(self, study: optuna.Study, trial: optuna.Trial, result: Result, attrs: dict[str, Any]) -> TrialState:
        """A trial stopped at a rung: PRUNED, with what it reached (the rungs' accuracies as
        intermediate values, size and latency when measured before fine-tuning, the reason)."""
        reason = self._prune_reasons.get(trial.number, "stopped by the pruner")
        self._last_prune_reason = reason
        baseline = self._baseline or study.user_attrs.get("baseline", {})
        attrs.update(pruned_at=result.pruned_at, prune_reason=reason, rungs=result.rungs, finetune_steps=result.finetune_steps)
        drop = None
        if baseline:
            drop = Baseline.of(baseline).accuracy_drop(result.accuracy)
            attrs["drop_points"] = round(drop, 3)  # at the rung it reached
            if result.size_bytes:
                attrs["size_bytes"] = result.size_bytes
                attrs["compression_ratio"] = round(baseline["size_bytes"] / result.size_bytes, 2)
            if math.isfinite(result.latency_ms):
                attrs["latency_ms"] = float(baseline["latency_ms"]) * result.latency_ratio
        # Never feasible (its model was never finished): TPE then ranks it among the infeasible
        # trials by how far it missed, where it would rank pruned trials by their intermediate
        # values through a single direction, which a three-objective study does not have.
        missed = max(0.0, (drop or 0.0) - (self._limit(study) or 0.0))
        system = _optuna.constraint_attrs("max_accuracy_drop", missed + PRUNED_VIOLATION)
        _optuna.set_trial_attrs(trial, attrs, system)
        study.tell(trial, state=TrialState.PRUNED)
        self.pruned += 1
        return TrialState.PRUNED

    def _store(self, study: optuna.Study, trial: optuna.Trial, result: Result) -> TrialState:
        # The trial's attributes go in one transaction, before its state: a crash leaves the
        # trial RUNNING without them (the next driver fails and re-queues it), never half-described.
        attrs: dict[str, Any] = {"worker": result.worker}
        if result.worker.get("node_id"):
            attrs["node_id"] = result.worker["node_id"]
        plan = self._plans.pop(trial.number, {})
        if result.error is None and result.pruned_at is not None:
            return self._store_pruned(study, trial, result, attrs)
        if not result.ok:
            reason = result.error or "invalid measurement"
            self.failures[reason] += 1
            _optuna.set_trial_attrs(trial, {**attrs, "fail_reason": reason})
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, reason)
            return TrialState.FAIL
        if not self._baseline:  # set once, before the first trial: read it once
            self._baseline = study.user_attrs.get("baseline", {})
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
            if self._metric.scale == 100.0:
                attrs["drop_points"] = round(metrics["accuracy_drop"], 3)
            else:  # in the metric's units and direction (positive: worse)
                attrs[f"{self._metric.name}_drop"] = round(metrics["accuracy_drop"], 6)
            attrs["compression_ratio"] = round(metrics["compression_ratio"], 2)
            attrs["speedup"] = round(metrics["speedup"], 3)
        if baseline.get("deploy"):  # optuna-dashboard's trial table shows what each latency came from
            attrs["deploy"] = f"{baseline['deploy']} [{result.latency_backend}]"
        system: dict[str, Any] = {}  # the files are listed with the trial's other attributes
        try:
            with self._timed("artifacts"):
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
            study.tell(trial, state=TrialState.FAIL)
            raise
        max_drop = self._limit(study)
        if max_drop is not None and baseline:
            system.update(_optuna.constraint_attrs("max_accuracy_drop", metrics["accuracy_drop"] - max_drop))
        values = [result.accuracy, float(result.size_bytes), metrics["latency_ms"]]
        _optuna.complete_trial(study, trial, values, attrs, system)
        with self.lease.ask_lock():  # drivers sharing a study write their snapshots one at a time
            with self._timed("analysis"):
                if self._front is None:  # built once from the stored trials (a resumed study's included)
                    self._front = pareto.FrontState(baseline, self._limit(study))
                self._front.add_values(trial.number, values)
                # Other drivers' trials: one COUNT says whether any completed since; only then
                # are the study's trials listed, and only the unseen ones analysed.
                if _optuna.count_trials(study, (TrialState.COMPLETE,)) != len(self._front.points):
                    self._front.add(_optuna.trial_rows(study, (TrialState.COMPLETE,)))
                self._analysis = analysis = self._front.analysis()
            with self._timed("tables"):
                tables.record_trial(self._engine, self._study_id, trial.number, result.per_layer, plan, analysis)
        return TrialState.COMPLETE

    def _limit(self, study: optuna.Study) -> float | None:
        """The study's drop limit in its metric's units, read once (``pareto.study_constraint``)."""
        if self._max_drop is None:
            self._max_drop = (pareto.study_constraint(study),)
        return self._max_drop[0]

    @property
    def _metric(self) -> MetricInfo:
        """What the first objective measures (from the stored baseline, else the task)."""
        if self._baseline:
            return Baseline.of(self._baseline).metric
        return self._task.metric_info if self._task is not None else MetricInfo()

    def _worker_intervals(self, result: Result, baseline: dict[str, Any]) -> dict[str, Any]:
        """A corpus-level metric of the user's own: its reduce lives in the user's code, which the
        driver holds (it called the task function) but the analyser never imports, so the
        drop's paired bootstrap is computed here and stored with the trial."""
        protocol = self._task.protocol if self._task is not None else None
        if protocol is None or not protocol.metric.corpus or protocol.metric.name in METRICS:
            return {}
        out: dict[str, Any] = {}
        for split in ("val", "test"):
            base, other = unpack_rows(baseline.get(f"{split}_scores")), unpack_rows(getattr(result, f"{split}_scores"))
            if base is not None and other is not None and base.shape == other.shape and len(base):
                out[f"{split}_interval"] = bootstrap_drop(base, other, protocol.metric.value, protocol.metric.drop).to_dict()
        return out


def run_search(config: StudyConfig, progress: bool = True) -> optuna.Study:
    """Run (or resume) the study described by ``config`` and return it."""
    return Driver(config, progress=progress).run()


__all__ = ["Driver", "prepare", "run_search"]
