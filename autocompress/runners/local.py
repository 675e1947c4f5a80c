"""In-process runner (``--workers 0``): evaluates in the driver's process, one trial at a time."""

from __future__ import annotations

from collections import deque
from typing import Any

from autocompress.config import FinetuneConfig
from autocompress.deploy.target import DeployConfig
from autocompress.evaluate import Evaluator
from autocompress.fidelity import NO_REPORTING, Reporting
from autocompress.plan import CompressionPlan, Result
from autocompress.runners._base import RUNNERS, Referee, Runner
from autocompress.tasks import Task
from autocompress.tasks.trainer import Trainer, local_trainer


@RUNNERS.register("local")
class LocalRunner(Runner):
    def __init__(self, workers: int = 0, **_: object) -> None:  # Ray's options mean nothing here
        self._evaluator: Evaluator | None = None
        self._done: deque[tuple[int, Result]] = deque()  # finished, not yet collected

    @property
    def capacity(self) -> int:
        return 1

    @property
    def runs_in_background(self) -> bool:
        return False  # submit evaluates on the spot

    def start(
        self,
        task: Task,
        finetune: FinetuneConfig,
        deploy: DeployConfig,
        device: str = "auto",
        reporting: Reporting = NO_REPORTING,
        referee: Referee | None = None,
    ) -> None:
        self.referee = referee
        self._evaluator = Evaluator(task, finetune, deploy, device, reporting=reporting)

    def trainer(self, device: str) -> Trainer:
        from autocompress.devices import resolve_device

        return local_trainer(resolve_device(device))

    def baseline(self) -> Result:
        assert self._evaluator is not None, "start() first"
        return self._evaluator.baseline()

    def one_shot(self, items: list[tuple[CompressionPlan, bool]]) -> list[dict[str, Any]]:
        assert self._evaluator is not None, "start() first"
        return [self._evaluator.one_shot(plan, timed) for plan, timed in items]

    def submit(self, trial_number: int, plan: CompressionPlan) -> None:
        assert self._evaluator is not None, "start() first"
        referee = self.referee
        # In-process, the referee answers at once: a stop takes effect at the rung it judged.
        report = None if referee is None else (lambda rung: rung is not None and referee(trial_number, rung))
        self._done.append((trial_number, self._evaluator.evaluate(plan, report)))

    def next_result(self, timeout: float | None = None) -> tuple[int, Result] | None:
        return self._done.popleft() if self._done else None
