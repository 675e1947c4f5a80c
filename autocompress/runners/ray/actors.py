"""The evaluator actor (one per worker, holding one Evaluator; its task arrives once through
the object store) and the Ray task that trains a baseline on a worker."""

from __future__ import annotations

from typing import Any

from autocompress.config import FinetuneConfig
from autocompress.deploy.target import DeployConfig
from autocompress.errors import AutocompressError
from autocompress.fidelity import NO_REPORTING, Reporting
from autocompress.plan import CompressionPlan, Result
from autocompress.runners.ray.mailbox import VERDICT_WAIT_S
from autocompress.tasks import Task


class EvaluatorActor:
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


def train_on_worker(payload: dict[str, Any], resume: dict[str, Any] | None, device: str, threads: int) -> Any:
    """A Ray task (a streaming generator): the baseline trained on a worker, on ``device``, by
    ``tasks.training.local_trainer`` there; its reports pass through, where it runs with this
    node's id."""
    import ray
    import torch

    from autocompress.devices import resolve_device
    from autocompress.tasks.trainer import local_trainer

    torch.set_num_threads(threads)
    task = Task.from_payload(payload)
    assert task.data is not None, "only in-memory tasks are trained by autocompress"
    for report in local_trainer(resolve_device(device))(task.spec, task.data, task.state_dict, resume):
        if "where" in report:
            report["where"]["node_id"] = ray.get_runtime_context().get_node_id()
        yield report
