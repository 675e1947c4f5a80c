"""The driver: an Optuna study in SQL storage, ask/tell with N trials in flight on a runner.

Only the driver writes to the study storage. Workers get plans and return results.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import time
import uuid
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autocompress import _faults, _optuna, pareto, tables
from autocompress._proc import pid_alive
from autocompress.artifact_files import remove_partials, store_artifact
from autocompress.config import StudyConfig
from autocompress.deploy.target import DeployConfig
from autocompress.errors import AutocompressError, SearchError, StorageError
from autocompress.evaluate import resolve_device
from autocompress.plan import Result
from autocompress.runners import Runner, make_runner
from autocompress.space import SearchSpace, load_space
from autocompress.storage import check_url, mask_url, open_storage, retry_creation
from autocompress.tasks import Task, build_task, evaluate_accuracy, model_skeleton

log = logging.getLogger(__name__)

ONNX_MIMETYPE = "application/onnx"
ACZ_MIMETYPE = "application/x-autocompress"
# Deploy keys that define what a latency means; a study resumed with others is refused.
DEPLOY_IDENTITY = ("runtime", "precision", "device", "threads", "batch_size", "resource")
LEASE_TIMEOUT_S = 60.0  # a driver on another host silent this long is taken for dead
HEARTBEAT_EVERY_S = 5.0

# Uniform plans tried first in a new study (sparsity, bits, rank fraction): known-good anchors
# that give the sampler a front to improve on from the first trials.
# Uniform plans tried first (sparsity, bits, rank fraction, sparsity mode): known points at the
# safe end, and with channel pruning in the space, two structured ones at the aggressive end.
WARM_START = ((0.0, 8, 1.0, "unstructured"), (0.5, 6, 1.0, "unstructured"), (0.7, 4, 1.0, "unstructured"))
WARM_START_CHANNEL = ((0.5, 4, 1.0, "channel"), (0.75, 4, 1.0, "channel"))


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":  # Gaussian-process expected hypervolume improvement: slower per trial, for small spaces
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    # Multivariate TPE models the interaction of the knobs (bits x sparsity of one layer).
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8)


def check_ray_address(address: str | None, source: str = "--ray-address") -> None:
    """Fail fast on a Ray address nobody listens on (ray.init would wait a long time)."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"Ray address '{address}' is not host:port ({source}): e.g. 10.0.0.5:6379, or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SearchError(
            f"Ray address {address} is unreachable ({reason}) ({source}): start the head with 'ray start --head' or fix the address"
        ) from None


def prepare(config: StudyConfig) -> SearchSpace:
    """Validate the task and resolve the space against the model, before training or storage."""
    check_url(config.storage)
    search = config.search
    address = search.ray_address or os.environ.get("RAY_ADDRESS")
    if search.workers:
        check_ray_address(address, "--ray-address" if search.ray_address else "RAY_ADDRESS")
    if search.device == "cuda":
        if search.workers and not search.gpus_per_worker:
            raise SearchError("--device cuda with Ray workers needs --gpus-per-worker (e.g. 0.5 to share one GPU between two workers)")
        if not (search.workers and address):  # the workers run on this machine: it needs the GPU
            resolve_device("cuda")
    check_deploy(config, local=not (search.workers and address))
    return load_space(config.space).resolve(*model_skeleton(config.task))


def check_deploy(config: StudyConfig, local: bool) -> None:
    """Refuse a deploy target that cannot run, before anything is trained or stored."""
    from autocompress.deploy.runtimes import runtime

    deploy = config.deploy
    if deploy.resource and not config.search.workers:
        raise SearchError(f"deploy.resource '{deploy.resource}' times trials on a Ray node: use Ray workers (--workers 1 or more)")
    device = deploy.device if deploy.device != "auto" else ("cuda" if config.search.device == "cuda" else "cpu")
    if device == "cuda" and local and not deploy.resource:
        try:
            resolve_device("cuda", "deploy.device")
        except AutocompressError as exc:
            raise SearchError(f"deploy.device cuda: {exc}") from None
    runtime(deploy.runtime).check(deploy.precision, device)


def _check_existing(study: optuna.Study, config: StudyConfig, space: SearchSpace, url: str) -> None:
    """Refuse to mix trials of a different task or space into one study."""
    expected = [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MINIMIZE]
    if list(study.directions) != expected:
        raise StorageError(
            f"study '{study.study_name}' in {mask_url(url)} has other objectives "
            f"({[d.name.lower() for d in study.directions]}): choose another --name or pass --new-study"
        )
    attrs = study.user_attrs
    task = config.task.resolved().to_dict()
    if attrs.get("task") not in (None, task):
        diff = [k for k in task if attrs["task"].get(k) != task[k]]
        raise StorageError(
            f"study '{study.study_name}' was created for another task (differs in {', '.join(diff)}): "
            "choose another --name, pass --new-study, or use the config it was created with"
        )
    if attrs.get("space") not in (None, space.to_dict()):
        old = attrs["space"]
        diff = sorted(set(old) ^ set(space.to_dict())) or [n for n in old if old[n] != space.to_dict().get(n)]
        raise StorageError(
            f"study '{study.study_name}' was created with another search space (differs at layer "
            f"{', '.join(diff[:3])}): choose another --name, pass --new-study, or use the space it was created with"
        )
    old_finetune = (attrs.get("config") or {}).get("finetune")
    new_finetune = config.to_dict()["finetune"]
    if old_finetune is not None and old_finetune != new_finetune:
        diff = [f"{k} {old_finetune.get(k)!r} -> {v!r}" for k, v in new_finetune.items() if old_finetune.get(k) != v]
        raise StorageError(
            f"study '{study.study_name}' was fine-tuned differently (finetune: {', '.join(diff)}): its trials would not "
            "compare; choose another --name, pass --new-study, or use the finetune section it was created with"
        )
    old_deploy = (attrs.get("config") or {}).get("deploy")
    new_deploy = {k: v for k, v in config.to_dict()["deploy"].items() if k in DEPLOY_IDENTITY}
    if old_deploy is not None and {k: old_deploy.get(k) for k in DEPLOY_IDENTITY} != new_deploy:
        diff = [f"{k} {old_deploy.get(k)!r} -> {new_deploy[k]!r}" for k in DEPLOY_IDENTITY if old_deploy.get(k) != new_deploy[k]]
        raise StorageError(
            f"study '{study.study_name}' was measured on another deploy target ({', '.join(diff)}): its latencies would not "
            "compare; choose another --name, pass --new-study, or use the deploy section it was created with"
        )


# Set when a new study is described, "artifact_dir" last; the warm start's trials come after.
DESCRIBING_ATTRS = ("task", "space", "config", "artifact_dir")


def _half_created(study: optuna.Study) -> bool:
    """Created (our directions) and not fully described (a driver killed in between): no trials
    yet, and the metric names or one of the describing attributes missing."""
    return (
        list(study.directions) == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MINIMIZE]
        and not study.get_trials(deepcopy=False)
        and (not study.metric_names or any(k not in study.user_attrs for k in DESCRIBING_ATTRS))
    )


def measure_baseline(task: Task, runner: Runner, deploy: DeployConfig) -> tuple[dict[str, Any], Result]:
    """The uncompressed model's numbers (its fp32 artifact from the same packer, its deployed
    form on the deploy target) and the result, measured by a worker: on the target the trials use."""
    result = runner.baseline()
    if result.error:
        raise SearchError(f"the baseline model cannot be measured: {result.error}")
    numbers = {
        "accuracy": result.accuracy,
        "test_accuracy": evaluate_accuracy(task.build_model(), task.data.x_test, task.data.y_test),
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
    return numbers, result


class Driver:
    """Runs one study to its target number of COMPLETE trials."""

    def __init__(self, config: StudyConfig, runner: Runner | None = None, progress: bool = True) -> None:
        self.config = config
        self.runner = runner or make_runner(config.search)
        self.show_progress = progress
        self.study: optuna.Study | None = None
        self.failures: collections.Counter[str] = collections.Counter()  # reason -> count, this run
        self.driver_id = uuid.uuid4().hex[:12]  # this process's lease in autocompress_drivers
        self._analysis: pareto.Analysis | None = None  # after the last COMPLETE trial

    def run(self) -> optuna.Study:
        space = prepare(self.config)  # every user mistake surfaces here, before storage or Ray
        self.runner.connect(self.config.deploy)  # Ray's own checks (deploy.resource), still before storage
        try:
            return self._run(space)
        finally:
            self.runner.close()

    def _run(self, space: SearchSpace) -> optuna.Study:
        cfg = self.config
        storage = open_storage(cfg.storage)
        study = self._open_study(storage, space)
        retry_creation(lambda: tables.ensure_schema(storage.engine))
        self._engine, self._study_id = storage.engine, storage.get_study_id_from_name(study.study_name)
        task = build_task(cfg.task, cfg.cache_dir)
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
        tables.start_lease(self._engine, self.driver_id, self._study_id, socket.gethostname(), os.getpid(), time.time())
        self._last_beat = time.monotonic()
        try:
            self.recover_stale_trials(study)
            self.runner.start(task, cfg.finetune, cfg.deploy, cfg.search.device)
            if "baseline" not in study.user_attrs:
                baseline, result = measure_baseline(task, self.runner, cfg.deploy)
                _faults.checkpoint("baseline-measured")
                baseline["artifact_id"] = store_artifact(study, result.artifact, self.artifact_dir, "baseline.acz", ACZ_MIMETYPE)
                if result.onnx:
                    baseline["onnx_artifact_id"] = store_artifact(study, result.onnx, self.artifact_dir, "baseline.onnx", ONNX_MIMETYPE)
                study.set_user_attr("baseline", baseline)
            self._loop(study, space)
        finally:
            tables.heartbeat(self._engine, self.driver_id, time.time(), finished=True)
        return study

    def recover_stale_trials(self, study: optuna.Study) -> int:
        """Fail the RUNNING trials of drivers that died, with the reason, and re-queue their plans."""
        now = time.time()
        alive: dict[str, bool] = {}
        for driver_id, lease in tables.leases(self._engine, self._study_id).items():
            if lease["finished"]:
                alive[driver_id] = False
            elif lease["host"] == socket.gethostname() and lease["pid"] != os.getpid():
                alive[driver_id] = pid_alive(lease["pid"])  # same machine: ask the OS, no waiting
            else:
                alive[driver_id] = now - lease["heartbeat_at"] < LEASE_TIMEOUT_S
        recovered = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get("driver_id")
            # A driver without a lease row is dead; a trial without an owner (asked, but killed
            # before tagging) counts as alive only while it is younger than the lease timeout.
            started = t.datetime_start.timestamp() if t.datetime_start else now
            if owner == self.driver_id or (alive.get(owner, False) if owner else now - started < LEASE_TIMEOUT_S):
                continue
            _optuna.fail_with_reason(study, t, f"driver {owner or 'unknown'} died while the trial ran; plan re-queued")
            study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
            recovered += 1
            log.warning("trial %d: its driver %s is gone; failed and re-queued", t.number, owner)
        return recovered

    def _open_study(self, storage: optuna.storages.BaseStorage, space: SearchSpace) -> optuna.Study:
        cfg = self.config
        sampler = make_sampler(cfg.search.sampler, cfg.search.seed)
        if cfg.search.new_study:
            taken = {s.study_name for s in storage.get_all_studies()}
            name, k = cfg.name, 2
            while name in taken:
                name, k = f"{cfg.name}-{k}", k + 1
            if name != cfg.name:
                log.warning("study '%s' exists; starting a new study '%s'", cfg.name, name)
            cfg = self.config = replace(cfg, name=name)
        try:
            study = optuna.create_study(study_name=cfg.name, storage=storage, sampler=sampler, directions=list(pareto.DIRECTIONS))
            _faults.checkpoint("study-created")
        except optuna.exceptions.DuplicatedStudyError:  # an existing study (maybe another driver's, just made)
            study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler)
            if not _half_created(study):
                _check_existing(study, cfg, space, cfg.storage)
                return study
            # A driver killed between creating the study and describing it: finish the job.
            log.warning("study '%s' was left half-created by a driver that stopped; completing it", study.study_name)
        with warnings.catch_warnings():  # experimental since 3.2, stable in practice; keep output clean
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(pareto.OBJECTIVES))
        study.set_user_attr("task", cfg.task.resolved().to_dict())
        _faults.checkpoint("study-described")
        study.set_user_attr("space", space.to_dict())
        # Stored to reproduce the run; the storage URL without its password (the database and
        # optuna-dashboard's API show every attribute to whoever can read them).
        study.set_user_attr("config", {**cfg.to_dict(), "storage": mask_url(cfg.storage)})
        study.set_user_attr("artifact_dir", str(Path(cfg.artifact_dir).resolve()))
        if cfg.search.warm_start:
            plans = WARM_START + (WARM_START_CHANNEL if space.allows_channel else ())
            for sparsity, bits, rank, mode in plans[: cfg.search.trials]:
                study.enqueue_trial(space.uniform_params(sparsity, bits, rank, mode), skip_if_exists=True)
        return study

    def _count(self, state: TrialState) -> int:
        assert self.study is not None
        return len(self.study.get_trials(deepcopy=False, states=(state,)))

    def _loop(self, study: optuna.Study, space: SearchSpace) -> None:
        cfg = self.config.search
        in_flight: dict[int, optuna.Trial] = {}
        finished: optuna.Trial | None = None  # a result in hand, not yet told
        complete = self._count(TrialState.COMPLETE)
        failed_in_a_row = 0
        with _Progress(self.show_progress, cfg.trials, complete) as bar:
            try:
                while True:
                    self._fill(study, space, in_flight)
                    self._beat()
                    if not in_flight:
                        complete = self._count(TrialState.COMPLETE)
                        if complete >= cfg.trials:
                            break
                        # Other drivers hold the remaining trials: wait for them, or for their
                        # leases to lapse, then take over what they leave behind.
                        time.sleep(1.0)
                        self.recover_stale_trials(study)
                        continue
                    got = self.runner.next_result(timeout=1.0)
                    if got is None:
                        continue
                    number, result = got
                    finished = in_flight.pop(number)
                    if self.runner.runs_in_background:
                        # Hand the free worker its next trial first; book-keeping overlaps with it.
                        self._fill(study, space, in_flight)
                    told, finished = finished, None
                    if self._tell(study, told, result):
                        complete += 1
                        failed_in_a_row = 0
                    else:
                        failed_in_a_row += 1
                        if failed_in_a_row >= cfg.max_failures_in_a_row:
                            reason, count = self.failures.most_common(1)[0]
                            raise SearchError(
                                f"{failed_in_a_row} trials in a row failed; most common reason ({count}x): {reason}: "
                                "fix the cause, or raise search.max_failures_in_a_row"
                            )
                    if self._analysis is not None:
                        bar.update(complete, sum(self.failures.values()), len(self._analysis.front), self._analysis.hypervolume)
            except BaseException as exc:
                reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"search stopped: {exc}"
                for trial in [*in_flight.values(), *([finished] if finished is not None else [])]:
                    trial.set_user_attr("fail_reason", reason)
                    study.tell(trial, state=TrialState.FAIL)
                raise

    def _fill(self, study: optuna.Study, space: SearchSpace, in_flight: dict[int, optuna.Trial]) -> None:
        """Start trials until every worker is busy or the study needs no more."""
        while len(in_flight) < self.runner.capacity:
            trial = self._claim(study, self.config.search.trials)
            if trial is None:
                return
            in_flight[trial.number] = trial  # before submit: the local runner evaluates inside it
            plan = space.sample(trial)
            trial.set_user_attr("plan", plan.to_dict())
            self.runner.submit(trial.number, plan)

    def _claim(self, study: optuna.Study, target: int) -> optuna.Trial | None:
        """Ask for a trial if the study (all drivers together) still needs one.

        COMPLETE plus RUNNING trials of every driver count against the target, so several
        drivers on one study finish exactly the requested number. On PostgreSQL the count
        and the ask are serialised across drivers by an advisory lock.
        """
        # (A driver killed while sampling leaves a RUNNING trial with some parameters; its
        # re-queued copy keeps those and samples the rest.)
        with self._ask_lock():
            states = [t.state for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))]
            if len(states) >= target:
                return None
            trial = study.ask()
            trial.set_user_attr("driver_id", self.driver_id)
            return trial

    @contextlib.contextmanager
    def _ask_lock(self):
        if self._engine.dialect.name != "postgresql":
            yield  # SQLite: one driver per database file
            return
        import sqlalchemy as sa

        key = 0x6163_0000_0000 + self._study_id  # "ac" + study id: one lock per study
        with self._engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()

    def _beat(self) -> None:
        if time.monotonic() - self._last_beat >= HEARTBEAT_EVERY_S:
            tables.heartbeat(self._engine, self.driver_id, time.time())
            self._last_beat = time.monotonic()

    def _tell(self, study: optuna.Study, trial: optuna.Trial, result: Result) -> bool:
        """Store one result; True when the trial is COMPLETE."""
        trial.set_user_attr("worker", result.worker)
        if result.worker.get("node_id"):
            trial.set_user_attr("node_id", result.worker["node_id"])
        if not result.ok:
            reason = result.error or "invalid measurement"
            self.failures[reason] += 1
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, reason)
            return False
        baseline = study.user_attrs.get("baseline", {})
        metrics = trial_metrics(result, baseline)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("per_layer", result.per_layer)
        trial.set_user_attr("finetune_log", result.finetune_log)
        trial.set_user_attr("windows", result.windows)
        if baseline.get("deploy"):  # optuna-dashboard's trial table shows what each latency came from
            trial.set_user_attr("deploy", f"{baseline['deploy']} [{result.latency_backend}]")
        try:
            artifact_id = store_artifact(trial, result.artifact, self.artifact_dir, f"trial-{trial.number}.acz", ACZ_MIMETYPE)
            if result.onnx:  # the very file whose accuracy and latency were measured
                trial.set_user_attr(
                    "onnx_artifact_id", store_artifact(trial, result.onnx, self.artifact_dir, f"trial-{trial.number}.onnx", ONNX_MIMETYPE)
                )
        except StorageError as exc:
            # The database stays consistent: this trial is failed with the reason, never left RUNNING.
            trial.set_user_attr("fail_reason", f"artifact not stored: {exc}")
            study.tell(trial, state=TrialState.FAIL)
            raise
        trial.set_user_attr("artifact_id", artifact_id)
        max_drop = self.config.pareto.max_accuracy_drop
        if max_drop is not None and baseline:
            violation = metrics["accuracy_drop"] - max_drop  # <= 0 is feasible
            if hasattr(trial, "set_constraint"):  # Optuna 5 keeps named constraints...
                trial.set_constraint("max_accuracy_drop", violation)
            # ...but optuna-dashboard 0.21 reads only the older "constraints" system attribute.
            _optuna.set_trial_system_attr(trial, "constraints", [violation])
        study.tell(trial, [result.accuracy, float(result.size_bytes), metrics["latency_ms"]])
        with self._ask_lock():  # drivers sharing a study write their snapshots one at a time
            self._analysis = analysis = pareto.study_analysis(study)
            tables.record_trial(self._engine, self._study_id, trial.number, result.per_layer, trial.user_attrs.get("plan", {}), analysis)
        return True


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
        metrics["latency_ms"] = baseline["latency_ms"] * result.latency_ratio
        metrics["accuracy_drop"] = 100.0 * (baseline["accuracy"] - result.accuracy)
        metrics["compression_ratio"] = baseline["size_bytes"] / result.size_bytes
        metrics["speedup"] = 1.0 / result.latency_ratio
    return metrics


class _Progress:
    """A rich progress bar (trials done, failures, front size, hypervolume); silent when disabled."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled = enabled
        self.total, self.done = total, done
        self._progress: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
            self._progress.start()
            self._task = self._progress.add_task("search", total=self.total, completed=self.done, info="")
        return self

    def update(self, done: int, failed: int, front: int, hypervolume: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, info=f"failed {failed} | front {front} | HV {hypervolume:.4f}")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def run_search(config: StudyConfig, progress: bool = True) -> optuna.Study:
    """Run (or resume) the study described by ``config`` and return it."""
    return Driver(config, progress=progress).run()


__all__ = ["Driver", "prepare", "run_search"]
