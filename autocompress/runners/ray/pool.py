"""The Ray runner: a pool of evaluator actors, one per worker; each builds the task once from
the object store.

Faults are handled here, below the driver: a worker that dies mid-trial (killed, out of memory,
its node gone) is replaced and the trial re-run on the new actor, up to ``max_retries`` times,
then reported failed with the reason; a trial running longer than ``trial_timeout`` seconds has
its actor killed and replaced and is reported failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from autocompress.config import FinetuneConfig
from autocompress.deploy.target import DeployConfig
from autocompress.errors import AutocompressError
from autocompress.fidelity import NO_REPORTING, Reporting
from autocompress.plan import CompressionPlan, Result
from autocompress.runners._base import RUNNERS, Referee, Runner
from autocompress.runners.ray.actors import EvaluatorActor, train_on_worker
from autocompress.runners.ray.connect import lost_reason, lost_worker_errors, missing_resource, start_or_join
from autocompress.runners.ray.mailbox import Mailbox, RungRelay
from autocompress.runners.ray.timing import start_timing_actor
from autocompress.tasks import Task, TaskSpec
from autocompress.tasks.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class Job:
    trial_number: int
    plan: dict[str, Any]
    actor: Any
    started: float  # time.monotonic() of the current attempt
    attempts: int = 1


@RUNNERS.register("ray")
class RayRunner(Runner):
    def __init__(
        self,
        workers: int = 2,
        address: str | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        max_retries: int = 1,
        trial_timeout: float | None = None,
    ) -> None:
        self.workers = workers
        # None: RAY_ADDRESS if set (Ray's standard variable), else a new local Ray with one CPU per worker
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.max_retries = max_retries  # re-runs of a trial whose worker died
        self.trial_timeout = trial_timeout  # seconds; None waits forever
        self._started_ray = False  # shut Ray down on close only if we started it
        self._actor_cls: Any = None
        self._actor_args: tuple[Any, ...] = ()
        self._idle: list[Any] = []  # actors with nothing to do
        self._pending: dict[Any, Job] = {}  # ObjectRef -> the job it computes
        self.replaced = 0  # actors replaced after a death or a timeout (for reports and tests)
        self._timer: Any = None  # the timing actor on the deploy.resource node, if any
        self._mailbox: Any = None  # reports at rungs and stops, when trials report
        self._relay: RungRelay | None = None  # the driver's side of the mailbox

    @property
    def capacity(self) -> int:
        return self.workers

    def connect(self, deploy: DeployConfig) -> None:
        """Start or join Ray; refuse a ``deploy.resource`` that no node of the cluster has."""
        if start_or_join(self.address, max(1, int(self.workers * self.cpus_per_worker))):
            self._started_ray = True
        why = missing_resource(deploy.resource) if deploy.resource else None
        if why is not None:
            self.close()
            raise AutocompressError(why)

    def start(
        self,
        task: Task,
        finetune: FinetuneConfig,
        deploy: DeployConfig,
        device: str = "auto",
        reporting: Reporting = NO_REPORTING,
        referee: Referee | None = None,
    ) -> None:
        import ray

        self.connect(deploy)
        self.referee = referee
        self._timer = timer = start_timing_actor(task, deploy) if deploy.resource else None
        if reporting.rungs and referee is not None:
            self._mailbox = ray.remote(num_cpus=0)(Mailbox).remote()
            self._relay = RungRelay(self._mailbox, referee)
        self._actor_cls = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0)(EvaluatorActor)
        self._actor_args = (ray.put(task.payload()), finetune, deploy, device, timer, reporting, self._mailbox)
        self._idle = [self._new_actor() for _ in range(self.workers)]

    def trainer(self, device: str) -> Trainer:
        """Train on one worker's share of the cluster (its CPUs and GPUs), streaming its epochs
        back; a stop here (Ctrl-C) cancels the Ray task."""
        import ray

        remote = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_retries=0)(train_on_worker)
        threads = max(1, int(self.cpus_per_worker))

        def train(spec: TaskSpec, data: Any, state: dict[str, Any], resume: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
            payload = Task(spec=spec, data=data, state_dict=state).payload()
            stream: Any = remote.remote(payload, resume, device, threads)  # a generator of refs: Ray's stubs type it as one ref
            try:
                for ref in stream:
                    yield ray.get(ref)
            finally:
                with contextlib.suppress(Exception):  # finished already, or Ray gone
                    ray.cancel(stream, force=True)

        return train

    def run_on_worker(self, fn: Any, payload: dict[str, Any]) -> Any:
        """On one worker's share of the cluster, as a Ray task; its failure is raised here."""
        import ray

        remote = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_retries=0)(fn)
        try:
            return ray.get(remote.remote(payload))
        except ray.exceptions.RayTaskError as exc:
            raise AutocompressError(f"the check failed on a Ray worker: {str(exc.cause).strip().splitlines()[-1] if exc.cause else exc}") from None

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(*self._actor_args)

    def _launch(self, job: Job) -> None:
        job.actor = self._idle.pop()
        job.started = time.monotonic()
        self._pending[job.actor.evaluate.remote(job.plan, job.trial_number)] = job

    def _replace(self, actor: Any) -> None:
        import ray

        ray.kill(actor, no_restart=True)
        self._idle.append(self._new_actor())
        self.replaced += 1

    def baseline(self) -> Result:
        """Measured by a worker like any trial, and like a trial retried on a new worker when its
        worker dies (up to ``max_retries``), then a failed result with the reason."""
        import ray

        for attempt in range(1, self.max_retries + 2):
            actor = self._idle[-1]
            try:
                return Result.from_dict(ray.get(actor.baseline.remote()))
            except lost_worker_errors() as exc:
                self._idle.remove(actor)
                self._replace(actor)
                reason = lost_reason(exc)
                logging.getLogger(__name__).warning("baseline: worker lost (%s); attempt %d", reason, attempt)
        return Result.failure(f"the worker measuring the baseline was lost {self.max_retries + 1} time(s): {reason}")

    def one_shot(self, items: list[tuple[CompressionPlan, bool]]) -> list[dict[str, Any]]:
        """Spread over the idle workers (each runs its share in turn); a worker lost midway fails
        the whole measurement with the reason."""
        import ray

        actors = list(self._idle)
        refs = [actors[i % len(actors)].one_shot.remote(plan.to_dict(), timed) for i, (plan, timed) in enumerate(items)]
        try:
            return list(ray.get(refs))
        except lost_worker_errors() as exc:
            raise AutocompressError(f"a worker was lost while measuring the sensitivity: {lost_reason(exc)}") from None

    def submit(self, trial_number: int, plan: CompressionPlan) -> None:
        self._launch(Job(trial_number, plan.to_dict(), actor=None, started=0.0))

    def next_result(self, timeout: float | None = None) -> tuple[int, Result] | None:
        import ray

        if not self._pending:
            return None
        expired = self._expired()
        if expired is not None:
            return expired
        wait = timeout
        if self.trial_timeout is not None:
            next_deadline = min(j.started for j in self._pending.values()) + self.trial_timeout - time.monotonic()
            wait = max(0.0, min(wait if wait is not None else next_deadline, next_deadline))
        ready = self._wait(wait)
        if not ready:
            return self._expired()
        job = self._pending.pop(ready[0])
        if self._relay is not None:
            self._relay.forget(job.trial_number)
        try:
            result = Result.from_dict(ray.get(ready[0]))
        except lost_worker_errors() as exc:
            self._replace(job.actor)
            reason = lost_reason(exc)
            if job.attempts <= self.max_retries:
                job.attempts += 1
                logging.getLogger(__name__).warning("trial %d: worker lost (%s); retrying on a new worker", job.trial_number, reason)
                self._launch(job)
                return None
            result = Result.failure(f"worker lost {job.attempts} time(s), last: {reason}")
        except ray.exceptions.RayError as exc:
            self._idle.append(job.actor)
            result = Result.failure(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        else:
            self._idle.append(job.actor)
        result.worker["attempts"] = job.attempts
        return job.trial_number, result

    def _wait(self, timeout: float | None) -> list[Any]:
        """A finished evaluation, waiting up to ``timeout``; with rungs, reports relayed meanwhile."""
        import ray

        if self._relay is None:
            ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout)
            return ready
        return self._relay.wait(list(self._pending), {job.trial_number for job in self._pending.values()}, timeout)

    def _expired(self) -> tuple[int, Result] | None:
        if self.trial_timeout is None:
            return None
        now = time.monotonic()
        for ref, job in list(self._pending.items()):
            if now - job.started > self.trial_timeout:
                del self._pending[ref]
                self._replace(job.actor)
                result = Result.failure(f"timed out after {self.trial_timeout:g} s (search.trial_timeout); its worker was replaced")
                result.worker["attempts"] = job.attempts
                return job.trial_number, result
        return None

    def close(self) -> None:
        import ray

        extra = [a for a in (self._timer, self._mailbox) if a is not None]
        for actor in self._idle + [job.actor for job in self._pending.values()] + extra:
            ray.kill(actor, no_restart=True)
        self._timer = self._mailbox = self._relay = None
        self._idle, self._pending = [], {}
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
