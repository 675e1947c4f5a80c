from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from autocompress.config import FinetuneConfig
from autocompress.deploy.target import DeployConfig
from autocompress.fidelity import NO_REPORTING, Reporting, Rung
from autocompress.plan import CompressionPlan, Result
from autocompress.registry import Registry
from autocompress.tasks import Task
from autocompress.tasks.trainer import Trainer

Referee = Callable[[int, Rung], bool]  # (trial number, its report at a rung) -> stop it


class Runner(ABC):
    """Evaluates plans somewhere and hands results back to the driver.

    The driver calls :meth:`connect`, then :meth:`start` once, then :meth:`submit` while fewer than :attr:`capacity`
    trials are in flight and :meth:`next_result` to collect one, and :meth:`close` at the end
    (also after an error or Ctrl-C). A runner never touches the study storage, and an
    evaluation that fails comes back as a :class:`Result` with ``error`` set, not as an exception.

    Multi-fidelity: with rungs in :meth:`start`'s ``reporting`` and a ``referee`` given, each trial's
    reports at its rungs reach the referee in the driver's thread (from :meth:`submit` or
    :meth:`next_result`); a trial it stops ends at its worker's next checkpoint.
    """

    referee: Referee | None = None  # given to start(); judges the reports at rungs

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many trials may be in flight at once."""

    @property
    def runs_in_background(self) -> bool:
        """Whether ``submit`` returns while the evaluation runs elsewhere (the driver then starts
        the next trial before storing the last one's result)."""
        return True

    def connect(self, deploy: DeployConfig) -> None:  # noqa: B027  (optional hook)
        """Reach the workers' infrastructure and check it can serve ``deploy`` (called before
        the study storage is touched, so a mistake there writes nothing). Does nothing by default."""

    @abstractmethod
    def start(
        self,
        task: Task,
        finetune: FinetuneConfig,
        deploy: DeployConfig,
        device: str = "auto",
        reporting: Reporting = NO_REPORTING,
        referee: Referee | None = None,
    ) -> None:
        """Prepare workers that fine-tune on ``device`` (auto, cpu, cuda) and measure every model
        on the ``deploy`` target; trials report as ``reporting`` says, to ``referee``."""

    @abstractmethod
    def trainer(self, device: str) -> Trainer:
        """Trains a baseline where the trials run: on a worker, on ``device`` (auto, cpu, cuda).
        Called after :meth:`connect`, before :meth:`start`."""

    @abstractmethod
    def baseline(self) -> Result:
        """Measure the uncompressed model on a worker, where the trials run (same device)."""

    @abstractmethod
    def one_shot(self, items: list[tuple[CompressionPlan, bool]]) -> list[dict[str, Any]]:
        """Each plan's model measured without fine-tuning, on the workers (``Evaluator.one_shot``;
        the bool: time it); in order. Called after :meth:`start`, between trials."""

    @abstractmethod
    def submit(self, trial_number: int, plan: CompressionPlan) -> None:
        """Start evaluating ``plan`` for trial ``trial_number``."""

    @abstractmethod
    def next_result(self, timeout: float | None = None) -> tuple[int, Result] | None:
        """The next finished (trial number, result), or None if none finished within ``timeout``."""

    def run_on_worker(self, fn: Callable[[dict[str, Any]], Any], payload: dict[str, Any]) -> Any:
        """``fn(payload)`` once where the trials run (after :meth:`connect`): ``autocompress
        check-task`` opens a task's data there. In this process by default."""
        return fn(payload)

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release workers. Does nothing by default."""


RUNNERS: Registry[Callable[..., Runner]] = Registry("runner")  # each takes the search section's options
