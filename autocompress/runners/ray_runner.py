"""Ray runner: one actor per worker; each builds the task once from the object store.

Faults are handled here, below the driver: a worker that dies mid-trial (killed, out of memory,
its node gone) is replaced and the trial re-run on the new actor, up to ``max_retries`` times,
then reported failed with the reason; a trial running longer than ``trial_timeout`` seconds has
its actor killed and replaced and is reported failed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from autocompress.config import FinetuneConfig
from autocompress.deploy.target import DeployConfig
from autocompress.errors import AutocompressError
from autocompress.plan import CompressionPlan, Result
from autocompress.runners._base import RUNNERS, Runner
from autocompress.tasks import Task, TaskSpec

log = logging.getLogger(__name__)


class _EvaluatorActor:
    """Holds one Evaluator; its task arrives once through the object store."""

    def __init__(self, payload: dict[str, Any], finetune: FinetuneConfig, deploy: DeployConfig, device: str, timer: Any = None) -> None:
        import torch

        from autocompress.evaluate import Evaluator

        torch.set_num_threads(deploy.threads)
        self.evaluator = Evaluator(Task.from_payload(payload), finetune, deploy, device, timer=timer)

    def _finish(self, result: Result) -> dict[str, Any]:
        import ray

        node = ray.get_runtime_context().get_node_id()
        result.worker["node_id"] = node
        if not result.latency_node:  # timed where it was evaluated
            result.latency_node = node
        return result.to_dict()

    def baseline(self) -> dict[str, Any]:
        return self._finish(self.evaluator.baseline())

    def evaluate(self, plan: dict[str, Any]) -> dict[str, Any]:
        return self._finish(self.evaluator.evaluate(CompressionPlan.from_dict(plan)))


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
        from autocompress.evaluate import resolve_device

        for folder in import_paths:  # a module:function model rebuilds from the driver's folders
            if folder not in sys.path:
                sys.path.append(folder)
        torch.set_num_threads(deploy.threads)
        self.deploy = deploy
        self.device = resolve_device("cpu" if deploy.device == "auto" else deploy.device)
        self.runtime = runtime(deploy.runtime)
        self.example = example.to(self.device)
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

        header, _ = artifact.read_header(blob)
        build = architecture(self.spec)  # from the search's config, never the file
        model = artifact.loads(blob, build=build).to(self.device)
        return self.runtime.deploy(
            model, CompressionPlan.from_dict(header["plan"]), self.example, self.deploy.precision, self.device.type, self.deploy.threads
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

    def start(self, task: Task, finetune: FinetuneConfig, deploy: DeployConfig, device: str = "auto") -> None:
        import ray

        self.connect(deploy)
        timer = self._timing_actor(task, deploy) if deploy.resource else None
        self._actor_cls = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0)(_EvaluatorActor)
        self._actor_args = (ray.put(task.payload()), finetune, deploy, device, timer)
        self._idle = [self._new_actor() for _ in range(self.workers)]

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
        actor = actor_cls.remote(deploy, task.data.x_val[: deploy.batch_size].cpu(), list(IMPORT_PATHS), task.spec)
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
        self._pending[job.actor.evaluate.remote(job.plan)] = job

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
        ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=wait)
        if not ready:
            return self._expired()
        job = self._pending.pop(ready[0])
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

        for actor in self._idle + [job.actor for job in self._pending.values()] + ([self._timer] if self._timer else []):
            ray.kill(actor, no_restart=True)
        self._timer = None
        self._idle, self._pending = [], {}
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
