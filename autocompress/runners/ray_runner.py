"""Ray runner: one actor per worker; each builds the task once from the object store."""

from __future__ import annotations

import logging
import os
from typing import Any

from autocompress.errors import AutocompressError
from autocompress.evaluate import FinetuneConfig
from autocompress.latency import LatencyConfig
from autocompress.plan import CompressionPlan, Result
from autocompress.runners._base import RUNNERS, Runner
from autocompress.tasks import Task


class _EvaluatorActor:
    """Holds one Evaluator; its task arrives once through the object store."""

    def __init__(self, payload: dict[str, Any], finetune: FinetuneConfig, latency: LatencyConfig) -> None:
        import torch

        from autocompress.evaluate import Evaluator

        torch.set_num_threads(latency.threads)
        self.evaluator = Evaluator(Task.from_payload(payload), finetune, latency)

    def evaluate(self, plan: dict[str, Any]) -> dict[str, Any]:
        import ray

        result = self.evaluator.evaluate(CompressionPlan.from_dict(plan))
        result.worker["node_id"] = ray.get_runtime_context().get_node_id()
        return result.to_dict()


@RUNNERS.register("ray")
class RayRunner(Runner):
    def __init__(self, workers: int = 2, address: str | None = None, cpus_per_worker: float = 1.0) -> None:
        self.workers = workers
        # None: RAY_ADDRESS if set (Ray's standard variable), else a new local Ray with one CPU per worker
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cpus_per_worker = cpus_per_worker
        self._started_ray = False  # shut Ray down on close only if we started it
        self._actor_cls: Any = None
        self._actor_args: tuple[Any, ...] = ()
        self._idle: list[Any] = []  # actors with nothing to do
        self._pending: dict[Any, tuple[int, Any]] = {}  # ObjectRef -> (trial number, actor)

    @property
    def capacity(self) -> int:
        return self.workers

    def start(self, task: Task, finetune: FinetuneConfig, latency: LatencyConfig) -> None:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "logging_level": logging.ERROR,
                "configure_logging": True,
            }
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs["num_cpus"] = max(1, int(self.workers * self.cpus_per_worker))
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a local Ray instance"
                raise AutocompressError(f"cannot start or join Ray ({where}): {exc}") from None
            self._started_ray = True
        self._actor_cls = ray.remote(num_cpus=self.cpus_per_worker)(_EvaluatorActor)
        self._actor_args = (ray.put(task.payload()), finetune, latency)
        self._idle = [self._actor_cls.remote(*self._actor_args) for _ in range(self.workers)]

    def submit(self, trial_number: int, plan: CompressionPlan) -> None:
        actor = self._idle.pop()
        self._pending[actor.evaluate.remote(plan.to_dict())] = (trial_number, actor)

    def next_result(self, timeout: float | None = None) -> tuple[int, Result] | None:
        import ray

        if not self._pending:
            return None
        ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        if not ready:
            return None
        trial_number, actor = self._pending.pop(ready[0])
        try:
            result = Result.from_dict(ray.get(ready[0]))
        except ray.exceptions.RayError as exc:
            # The actor (or its node) died: replace it so capacity stays the same.
            ray.kill(actor, no_restart=True)
            actor = self._actor_cls.remote(*self._actor_args)
            result = Result.failure(f"worker lost: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        self._idle.append(actor)
        return trial_number, result

    def close(self) -> None:
        import ray

        for actor in self._idle + [a for _, a in self._pending.values()]:
            ray.kill(actor, no_restart=True)
        self._idle, self._pending = [], {}
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
