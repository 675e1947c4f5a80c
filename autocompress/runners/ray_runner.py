"""Ray runner: one actor per worker; each builds the task once from the object store.

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
from autocompress.tasks import Task, TaskSpec
from autocompress.tasks.training import Trainer

log = logging.getLogger(__name__)


class _Mailbox:
    """Between workers and the driver, for multi-fidelity trials (an async actor: one event loop,
    every call cheap). A worker posts its report at a rung and waits, up to ``wait`` seconds, for
    the driver's verdict; the driver's ``collect`` returns as soon as a report arrives. Workers
    never reach the study storage: the driver writes what it collects."""

    def __init__(self) -> None:
        import asyncio

        self.reports: list[tuple[int, dict[str, Any]]] = []
        self.stopped: set[int] = set()
        self._arrived = asyncio.Event()
        self._verdicts: dict[tuple[int, int], Any] = {}  # (trial, step) -> asyncio.Event

    async def report(self, number: int, rung: dict[str, Any] | None, wait: float = 0.0) -> bool:
        """Post a report (None: only ask); whether the driver has stopped the trial."""
        import asyncio

        if rung is not None:
            key = (number, int(rung["step"]))
            judged = self._verdicts[key] = asyncio.Event()
            self.reports.append((number, rung))
            self._arrived.set()
            try:
                await asyncio.wait_for(judged.wait(), wait)
            except asyncio.TimeoutError:
                pass  # the driver is busy: the verdict reaches the next checkpoint
            finally:
                self._verdicts.pop(key, None)
        return number in self.stopped

    async def collect(self, wait: float = 0.0) -> list[tuple[int, dict[str, Any]]]:
        """The reports posted since the last call, waiting up to ``wait`` seconds for one."""
        import asyncio

        if not self.reports and wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait)
        self._arrived.clear()
        reports, self.reports = self.reports, []
        return reports

    async def judged(self, number: int, step: int, stop: bool) -> None:
        if stop:
            self.stopped.add(number)
        event = self._verdicts.get((number, step))
        if event is not None:
            event.set()

    async def forget(self, number: int) -> None:
        self.stopped.discard(number)


# How long a worker waits for the verdict on its report: the driver answers in milliseconds
# unless it is busy storing a result or sampling, and a late verdict still stops the trial at
# its next checkpoint.
VERDICT_WAIT_S = 2.0


class _EvaluatorActor:
    """Holds one Evaluator; its task arrives once through the object store."""

    def __init__(
        self,
        payload: dict[str, Any],
        finetune: FinetuneConfig,
        deploy: DeployConfig,
        device: str,
        timer: Any = None,
        reporting: Reporting = NO_REPORTING,
        mailbox: Any = None,
    ) -> None:
        import torch

        from autocompress.evaluate import Evaluator

        torch.set_num_threads(deploy.threads)
        self.error = ""  # the task cannot be loaded here: every call answers with the reason
        try:
            self.evaluator = Evaluator(Task.from_payload(payload), finetune, deploy, device, timer=timer, reporting=reporting)
        except AutocompressError as exc:
            self.error = str(exc)
        self.mailbox = mailbox

    def _finish(self, result: Result) -> dict[str, Any]:
        import ray

        node = ray.get_runtime_context().get_node_id()
        result.worker["node_id"] = node
        if not result.latency_node:  # timed where it was evaluated
            result.latency_node = node
        return result.to_dict()

    def baseline(self) -> dict[str, Any]:
        if self.error:
            return self._finish(Result.failure(self.error))
        return self._finish(self.evaluator.baseline())

    def one_shot(self, plan: dict[str, Any], timed: bool) -> dict[str, Any]:
        if self.error:
            raise AutocompressError(self.error)
        return self.evaluator.one_shot(CompressionPlan.from_dict(plan), timed)

    def evaluate(self, plan: dict[str, Any], number: int = -1) -> dict[str, Any]:
        import ray

        if self.error:
            return self._finish(Result.failure(self.error))

        report = None
        if self.mailbox is not None:
            mailbox = self.mailbox

            def report(rung: Any) -> bool:
                return bool(ray.get(mailbox.report.remote(number, rung.to_dict() if rung is not None else None, VERDICT_WAIT_S)))

        return self._finish(self.evaluator.evaluate(CompressionPlan.from_dict(plan), report))


class _TimingActor:
    """Times deployed models on the node holding ``deploy.resource`` (hardware in the loop).

    Evaluator actors send it files (the ONNX file, or the packed artifact for the torch runtime):
    the baseline once, then each candidate, timed paired with it in this node's exclusive slot.
    Its methods run one at a time, so its own measurements never overlap either.
    """

    def __init__(self, deploy: DeployConfig, example: Any, import_paths: list[str], spec: TaskSpec) -> None:
        import sys

        import torch

        from autocompress.deploy.runtimes import runtime
        from autocompress.deploy.timing import DeviceLock, device_key
        from autocompress.devices import resolve_device

        for folder in import_paths:  # a module:function model rebuilds from the driver's folders
            if folder not in sys.path:
                sys.path.append(folder)
        torch.set_num_threads(deploy.threads)
        self.deploy = deploy
        self.device = resolve_device("cpu" if deploy.device == "auto" else deploy.device)
        self.runtime = runtime(deploy.runtime)
        from autocompress.tasks.protocol import to_device

        self.example = to_device(example, self.device)
        self.lock = DeviceLock(device_key(str(self.device)))
        self.baselines: dict[str, Any] = {}  # sha256 of the file -> its deployed form
        self.spec = spec  # the search's own task: what builds a packed artifact's architecture

    def check(self) -> None:
        """Raises here what the runtime lacks on this node."""
        self.runtime.check(self.deploy.precision, self.device.type)

    def _load(self, blob: bytes) -> Any:
        if self.deploy.runtime != "torch":
            return self.runtime.load_onnx(blob, self.example, self.device.type, self.deploy.threads, self.deploy.precision)
        from autocompress import artifact
        from autocompress.tasks.custom import architecture

        packed = artifact.Artifact.read(blob)  # read once: header for the plan, payload for the model
        build = architecture(self.spec)  # from the search's config, never the file
        model = artifact.loads(packed, build=build).to(self.device)
        return self.runtime.deploy(
            model, CompressionPlan.from_dict(packed.header["plan"]), self.example, self.deploy.precision, self.device.type, self.deploy.threads
        )

    def put_baseline(self, digest: str, blob: bytes) -> None:
        if digest not in self.baselines:
            self.baselines[digest] = self._load(blob)

    def time(self, digest: str | None, blob: bytes) -> dict[str, Any]:
        import ray

        from autocompress.deploy.timing import time_alone, time_paired

        candidate = self._load(blob)
        cfg = self.deploy
        with self.lock.exclusive():
            if digest is None:
                timing = time_alone(candidate, cfg.threshold, cfg.max_seconds)
            else:
                timing = time_paired(self.baselines[digest], candidate, cfg.threshold, cfg.max_seconds)
        return {**timing.to_dict(), "node": ray.get_runtime_context().get_node_id()}


def _train_on_worker(payload: dict[str, Any], resume: dict[str, Any] | None, device: str, threads: int) -> Any:
    """A Ray task (a streaming generator): the baseline trained on a worker, on ``device``, by
    ``tasks.training.local_trainer`` there; its reports pass through, where it runs with this
    node's id."""
    import ray
    import torch

    from autocompress.devices import resolve_device
    from autocompress.tasks.training import local_trainer

    torch.set_num_threads(threads)
    task = Task.from_payload(payload)
    assert task.data is not None, "only in-memory tasks are trained by autocompress"
    for report in local_trainer(resolve_device(device))(task.spec, task.data, task.state_dict, resume):
        if "where" in report:
            report["where"]["node_id"] = ray.get_runtime_context().get_node_id()
        yield report


def _lost_worker_errors() -> tuple[type[Exception], ...]:
    """What Ray raises when the worker itself is gone (killed, out of memory, node lost)."""
    import ray

    return (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)


def _lost_reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'worker died'}"


@dataclass
class _Job:
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
        self._pending: dict[Any, _Job] = {}  # ObjectRef -> the job it computes
        self.replaced = 0  # actors replaced after a death or a timeout (for reports and tests)
        self._timer: Any = None  # the timing actor on the deploy.resource node, if any
        self._mailbox: Any = None  # reports at rungs and stops, when trials report
        self._collecting: Any = None  # the mailbox's collect call in flight

    @property
    def capacity(self) -> int:
        return self.workers

    def connect(self, deploy: DeployConfig) -> None:
        """Start or join Ray; refuse a ``deploy.resource`` that no node of the cluster has."""
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,  # no web UI unless a cluster operator starts one
                "logging_level": logging.ERROR,
                "configure_logging": True,
            }
            if self.address:
                kwargs["address"] = self.address
            else:
                # "local" always starts a fresh instance; without it Ray joins whatever cluster
                # /tmp/ray/ray_current_cluster names, even a dead one.
                kwargs["address"] = "local"
                # Ray 2.60 cannot keep a local instance on loopback: its servers listen on every
                # interface and it resolves 127.0.0.1 to the host's address. Its token
                # authentication (on by default) is what refuses other machines.
                if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
                    log.warning(
                        "RAY_AUTH_MODE=disabled: the local Ray listens on every interface without authentication; "
                        "anyone who reaches this machine can run code in it. Unset RAY_AUTH_MODE to keep token authentication."
                    )
                kwargs["num_cpus"] = max(1, int(self.workers * self.cpus_per_worker))
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a local Ray instance"
                raise AutocompressError(f"cannot start or join Ray ({where}): {exc}") from None
            self._started_ray = True
        name = deploy.resource
        if name:
            have = ray.cluster_resources()
            if not have.get(name):
                custom = sorted(k for k in have if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:"))
                self.close()
                raise AutocompressError(
                    f"no node of the Ray cluster has the resource '{name}' (deploy.resource; custom resources there: "
                    f"{', '.join(custom) or 'none'}): start the target node with ray start --resources '{{\"{name}\": 1}}'"
                )

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
        timer = self._timing_actor(task, deploy) if deploy.resource else None
        if reporting.rungs and self.referee is not None:
            self._mailbox = ray.remote(num_cpus=0)(_Mailbox).remote()
        self._actor_cls = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0)(_EvaluatorActor)
        self._actor_args = (ray.put(task.payload()), finetune, deploy, device, timer, reporting, self._mailbox)
        self._idle = [self._new_actor() for _ in range(self.workers)]

    def trainer(self, device: str) -> Trainer:
        """Train on one worker's share of the cluster (its CPUs and GPUs), streaming its epochs
        back; a stop here (Ctrl-C) cancels the Ray task."""
        import ray

        remote = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_retries=0)(_train_on_worker)
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

    def _timing_actor(self, task: Task, deploy: DeployConfig) -> Any:
        """The timing actor on a node with ``deploy.resource`` (``connect`` has checked one exists),
        once it has shown that it can run the deploy target there."""
        import ray

        from autocompress.tasks.custom import IMPORT_PATHS

        name = deploy.resource
        assert name is not None
        # A small share of the resource: several searches may time on the same target node, and
        # the node's device lock keeps their measurements apart.
        actor_cls: Any = ray.remote(num_cpus=0, resources={name: 0.01}, max_restarts=1)(_TimingActor)
        example = task.protocol.example_input if task.protocol is not None else task.data.x_val[: deploy.batch_size].cpu()  # type: ignore[union-attr]
        actor = actor_cls.remote(deploy, example, list(IMPORT_PATHS), task.spec)
        try:
            ray.get(actor.check.remote(), timeout=600)
        except ray.exceptions.RayTaskError as exc:
            raise AutocompressError(f"the timing node for '{name}' cannot run the deploy target: {exc.cause}") from None
        self._timer = actor
        return actor

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(*self._actor_args)

    def _launch(self, job: _Job) -> None:
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
            except _lost_worker_errors() as exc:
                self._idle.remove(actor)
                self._replace(actor)
                reason = _lost_reason(exc)
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
        except _lost_worker_errors() as exc:
            raise AutocompressError(f"a worker was lost while measuring the sensitivity: {_lost_reason(exc)}") from None

    def submit(self, trial_number: int, plan: CompressionPlan) -> None:
        self._launch(_Job(trial_number, plan.to_dict(), actor=None, started=0.0))

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
        if self._mailbox is not None:
            self._mailbox.forget.remote(job.trial_number)
        try:
            result = Result.from_dict(ray.get(ready[0]))
        except _lost_worker_errors() as exc:
            self._replace(job.actor)
            reason = _lost_reason(exc)
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
        """A finished evaluation, waiting up to ``timeout``; meanwhile each report at a rung goes
        to the referee as it arrives, and its verdict back to the worker. Reports posted before
        a result are relayed before it is returned."""
        import ray

        if self._mailbox is None:
            ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout)
            return ready
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._collecting is None:
                self._collecting = self._mailbox.collect.remote(5.0)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait([*self._pending, self._collecting], num_returns=1, timeout=left)
            if self._collecting in ready:
                reports, self._collecting = ray.get(self._collecting), None
                self._relay(reports)
                continue
            if ready:
                self._relay(ray.get(self._mailbox.collect.remote(0.0)))
            if ready or (deadline is not None and time.monotonic() >= deadline):
                return ready

    def _relay(self, reports: list[tuple[int, dict[str, Any]]]) -> None:
        from autocompress.fidelity import Rung

        assert self.referee is not None
        running = {job.trial_number for job in self._pending.values()}
        for number, rung in reports:
            stop = number in running and self.referee(number, Rung.from_dict(rung))
            self._mailbox.judged.remote(number, int(rung["step"]), stop)

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
        self._timer = self._mailbox = self._collecting = None
        self._idle, self._pending = [], {}
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
