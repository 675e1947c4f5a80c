"""The driver: one study run to its target number of COMPLETE trials, N trials in flight on a
runner. Orchestration only; each collaborator holds its own state: ``asking`` (claims and
plans, one ahead in a thread), ``telling`` (the one write path, the front), ``rungs`` (reports
judged by the trial pruner), ``warm_start`` (sensitivity and ladder), ``timings``, ``leases``,
``checks`` and ``setup`` (before anything starts) and ``measure`` (the baseline)."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autocompress import _optuna, fidelity, tables
from autocompress.artifact_store import remove_partials
from autocompress.check_task import check_protocol_on_worker
from autocompress.config import StudyConfig
from autocompress.driver import rungs as rung_room
from autocompress.driver.asking import Asker
from autocompress.driver.checks import prepare_and_say
from autocompress.driver.leases import Lease
from autocompress.driver.measure import establish_baseline
from autocompress.driver.setup import open_study, sampler_name
from autocompress.driver.telling import Teller
from autocompress.driver.timings import Timings
from autocompress.driver.warm_start import WarmStart, warm_start_plans
from autocompress.errors import SearchError
from autocompress.plan import Result
from autocompress.progress import ProgressBar
from autocompress.runners import Runner, make_runner
from autocompress.space import SearchSpace
from autocompress.storage import mask_url, open_storage, retry_creation, sqlite_path
from autocompress.tasks import build_task

log = logging.getLogger(__name__)


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
        self.ask_ahead = ask_ahead
        self.study: optuna.Study | None = None
        self.driver_id = uuid.uuid4().hex[:12]  # this process's lease in autocompress_drivers
        self._timings = Timings()
        self._teller: Teller | None = None  # once the study is open
        self._rungs: rung_room.Rungs | None = None  # with a pruner, once the baseline is in
        self._in_flight: dict[int, optuna.Trial] = {}  # trial number -> its trial, handed to a worker

    @property
    def timings(self) -> dict[str, float]:
        """The driver's own seconds by part, this run (``benchmarks/driver_scale.py`` prints them)."""
        return self._timings.parts

    @property
    def handoffs(self) -> list[float]:
        """Seconds from a worker's result to the next trial handed out: how long a freed worker waits."""
        return self._timings.handoffs

    @property
    def failures(self) -> Counter[str]:
        return self._teller.failures if self._teller is not None else Counter()

    @property
    def pruned(self) -> int:
        """Trials stopped at a rung, this run."""
        return self._teller.pruned if self._teller is not None else 0

    def run(self) -> optuna.Study:
        cfg, start = self.config, time.monotonic()
        self._started = time.perf_counter()
        self.say(f"checking {cfg.source}: task {cfg.task.model}, reading its data and matching the space to its layers")
        space = prepare_and_say(cfg, self.say)
        self.say(f"  {len(space.layers)} layers, {space.dimensions} searched knobs ({time.monotonic() - start:.1f} s)")
        start = time.monotonic()
        where = cfg.search.ray_address or os.environ.get("RAY_ADDRESS")
        if cfg.search.workers:
            self.say(f"joining Ray at {mask_url(where)}" if where else f"starting a local Ray for {cfg.search.workers} workers")
        self.runner.connect(cfg.deploy)  # Ray's own checks (deploy.resource), still before storage
        if cfg.search.workers:
            self.say(f"  Ray ready ({time.monotonic() - start:.1f} s)")
        try:
            check_protocol_on_worker(cfg, self.runner, self.say)
            return self._run(space)
        finally:
            self.runner.close()

    def _run(self, space: SearchSpace) -> optuna.Study:
        storage = open_storage(self.config.storage)
        study, cfg = open_study(storage, self.config, space)
        self.config = cfg  # with the name the study got (--new-study)
        retry_creation(lambda: tables.ensure_schema(storage.engine))
        engine, study_id = storage.engine, storage.get_study_id_from_name(study.study_name)
        lease = Lease(engine, study_id, self.driver_id)
        done = _optuna.count_trials(study, (TrialState.COMPLETE,))
        database = sqlite_path(cfg.storage)
        where = f" ({database.resolve()})" if database is not None and not database.is_absolute() else ""  # report/dashboard from elsewhere need it
        self.say(
            f"study '{study.study_name}' in {mask_url(cfg.storage)}{where}: "
            + (f"{done} of {cfg.search.trials} trials complete" if done else "starting")
        )
        task = build_task(cfg.task, cfg.cache_dir, say=self.say, trainer=self.runner.trainer(cfg.search.device))
        self.study = study
        # One absolute folder, recorded with the study: a run resumed from another folder keeps
        # writing where export and report read.
        artifact_dir = str(study.user_attrs.get("artifact_dir") or Path(cfg.artifact_dir).resolve())
        if remove_partials(artifact_dir):
            log.warning("removed the partial artifact files of a process that stopped mid-write")
        self._teller = teller = Teller(study, engine, study_id, lease, artifact_dir, task, self._timings)
        if _optuna.count_trials(study, (TrialState.COMPLETE,)) >= cfg.search.trials and "baseline" in study.user_attrs:
            log.info("study '%s' already has %d complete trials", study.study_name, done)
            return study
        lease.start()
        try:
            lease.recover_stale_trials(study)
            reporting = rung_room.reporting(cfg)
            self.runner.start(task, cfg.finetune, cfg.deploy, cfg.search.device, reporting, referee=self._judge if reporting.rungs else None)
            if "baseline" not in study.user_attrs:
                establish_baseline(cfg, task, self.runner, teller, self.say)
            # The ladder takes the trials the uniform warm start leaves; with none left, the
            # sensitivity would steer nothing and is not measured. A study that has run trials
            # already (made before there was a ladder) is left as it is.
            slots = cfg.search.trials - len(warm_start_plans(space, cfg.search.trials))
            fresh = "ladder" not in study.user_attrs and not _optuna.count_trials(study, (TrialState.COMPLETE, TrialState.PRUNED))
            if cfg.search.sensitivity and cfg.search.warm_start and slots > 0 and fresh:
                WarmStart(cfg, self.runner, teller.metric, self.say).run(study, space, engine, study_id, cfg.search.ladder[:slots])
            if reporting.rungs:
                self._rungs = rung_room.Rungs(study, cfg, reporting.rungs, self._in_flight, lambda: teller.analysis, self._timings)
            deadline = None if cfg.search.timeout is None else self._started + cfg.search.timeout
            self._loop(Asker(study, space, cfg.search.trials, lease, self.driver_id, self._timings, deadline), lease)
            self._recheck_front(study, lease)
        finally:
            lease.finish()
        return study

    def _judge(self, number: int, rung: fidelity.Rung) -> bool:
        """The runner's referee: a report at a rung judged once the pruner has started."""
        return self._rungs is not None and self._rungs.judge(number, rung)

    def _recheck_front(self, study: optuna.Study, lease: Lease) -> None:
        """The front's test-split scores, on the deploy target's form, stored once: reports only read them."""
        from autocompress.export import task_code
        from autocompress.recheck import recheck

        with lease.ask_lock():  # drivers sharing a study merge into one attribute in turn
            done = recheck(study, task_code(self.config.task))  # this run's own config names its code
        if done:
            log.info("re-checked %d front trials on the test split", done)

    def _loop(self, asker: Asker, lease: Lease) -> None:
        cfg, study, in_flight = self.config.search, asker.study, self._in_flight
        finished: optuna.Trial | None = None  # a result in hand, not yet told
        complete = _optuna.count_trials(study, (TrialState.COMPLETE,))
        self._failed_in_a_row = 0
        self.say(f"searching: {cfg.trials - complete} more trials, {self.runner.capacity} at a time, sampler {sampler_name(cfg.sampler, cfg.trials)}")
        self.timings["start"] = time.perf_counter() - self._started  # checks, data, storage, Ray, baseline: to the first trial
        if self.runner.runs_in_background if self.ask_ahead is None else self.ask_ahead:
            asker.start_ahead()
        loop_start = time.perf_counter()
        with ProgressBar(self.show_progress, cfg.trials, complete) as bar:
            try:
                while True:
                    self._fill(asker)
                    with self._timings.part("heartbeat"):
                        lease.beat()
                    if not in_flight:
                        complete = _optuna.count_trials(study, (TrialState.COMPLETE,))
                        if complete >= cfg.trials:
                            break
                        if asker.out_of_time():
                            self.say(
                                f"search.timeout: {cfg.timeout:g} s reached with {complete} of {cfg.trials} trials complete; run again to resume"
                            )
                            break
                        # Other drivers hold the remaining trials: wait for them, or for their
                        # leases to lapse, then take over what they leave behind.
                        time.sleep(1.0)
                        lease.recover_stale_trials(study)
                        continue
                    got = self.runner.next_result(timeout=1.0)
                    if got is None:
                        continue
                    number, result = got
                    self._timings.result_arrived()
                    finished = in_flight.pop(number)
                    if self.runner.runs_in_background:
                        self._fill(asker)  # hand the free worker its next trial first; book-keeping overlaps with it
                    told, finished = finished, None
                    state = self._tell(asker, told, result)
                    complete += state == TrialState.COMPLETE
                    self._after(state, number, result, complete)
                    analysis = self._teller.analysis if self._teller is not None else None
                    if analysis is not None:
                        bar.update(complete, sum(self.failures.values()), len(analysis.front), analysis.hypervolume, self.pruned)
            except BaseException as exc:
                reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"search stopped: {exc}"
                ahead = asker.close_ahead()
                for trial in [*in_flight.values(), *([finished] if finished is not None else []), *([ahead] if ahead else [])]:
                    _optuna.fail_with_reason(study, trial, reason)
                raise
            finally:
                asker.close_ahead()  # nothing is ready at the end: every claim counted toward the target
                if self._teller is not None:
                    self._teller.add_seconds("trials_seconds", time.perf_counter() - loop_start)

    def _fill(self, asker: Asker) -> None:
        """Start trials until every worker is busy or the study needs no more."""
        while len(self._in_flight) < self.runner.capacity:
            got = asker.next()
            if got is None:
                return
            trial, plan = got
            self._in_flight[trial.number] = trial
            self._timings.trial_handed_out()
            self.runner.submit(trial.number, plan)
        asker.request_ahead()

    def _tell(self, asker: Asker, trial: optuna.Trial, result: Result) -> TrialState:
        """Store one result (the teller), then teach the pruner how it ended."""
        assert self._teller is not None
        reason = self._rungs.reason(trial.number) if self._rungs is not None else None
        with self._timings.part("tell"):
            state = self._teller.tell(trial, result, asker.plan_of(trial.number), reason)
        if self._rungs is not None:
            self._rungs.finished(trial.number, state, result.accuracy if state == TrialState.COMPLETE else None)
        return state

    def _after(self, state: TrialState, number: int, result: Result, complete: int) -> None:
        """A told trial, said when there is no bar; too many failures in a row stop the search."""
        assert self._teller is not None
        teller, cfg, quiet = self._teller, self.config.search, self.show_progress
        if state != TrialState.FAIL:
            self._failed_in_a_row = 0
        if state == TrialState.PRUNED and not quiet:
            self.say(f"trial {number}: pruned, {teller.last_prune_reason}")
        elif state == TrialState.COMPLETE and not quiet and teller.analysis is not None:
            metric, analysis = teller.metric, teller.analysis
            self.say(
                f"trial {number}: {metric.name} {metric.format(result.accuracy)}, {result.size_bytes / 1024:.1f} KB, "
                f"{analysis.point(number).latency_ms:.3f} ms [{complete}/{cfg.trials} complete, front {len(analysis.front)}]"
            )
        elif state == TrialState.FAIL:
            if not quiet:
                self.say(f"trial {number}: failed ({result.error or 'invalid measurement'})")
            self._failed_in_a_row += 1
            if self._failed_in_a_row >= cfg.max_failures_in_a_row:
                reason, count = teller.failures.most_common(1)[0]
                raise SearchError(
                    f"{self._failed_in_a_row} trials in a row failed; most common reason ({count}x): {reason}: "
                    "fix the cause, or raise search.max_failures_in_a_row"
                )


def run_search(config: StudyConfig, progress: bool = True) -> optuna.Study:
    """Run (or resume) the study described by ``config`` and return it."""
    return Driver(config, progress=progress).run()


__all__ = ["Driver", "run_search"]
