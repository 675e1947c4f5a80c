"""Scoring: a model's metric on a split, where the work runs. In-memory classification counts
which validation images the deployed form gets right; a protocol task's metric is taken over
its ``val`` and ``test`` batches (the test split opens only here, so its held-out score is
taken with the validation score and read later by the re-check of the front)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.deploy.runtimes import deployed_correct
from autocompress.errors import AutocompressError, TaskError
from autocompress.stats import accuracy, pack_correct, pack_rows
from autocompress.tasks import Task, correct_of
from autocompress.tasks.metrics import score_rows, split_batch
from autocompress.tasks.protocol import TaskProtocol, last_line

Turn = Callable[[], Any]  # a context manager factory: one shared turn on a device


def protocol_scores(
    protocol: TaskProtocol, model: Any, split: str, device: torch.device, turn: Callable[[], Any] = contextlib.nullcontext
) -> np.ndarray:
    """The metric's rows over a whole split (its batches in their fixed order), one ``turn`` a batch."""
    rows: list[np.ndarray] = []
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    for i, batch in enumerate(protocol.batches(split, device)):
        with turn(), torch.no_grad():
            try:
                rows.append(score_rows(protocol.metric, model, batch, f"batch {i} of split '{split}'"))
            except AutocompressError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise TaskError(
                    f"metric '{protocol.metric.name}' failed on batch {i} of split '{split}' ({last_line(exc)}): fix the metric or the batches"
                ) from None
    if isinstance(model, nn.Module):
        model.train(was_training)
    if not rows:
        raise TaskError(f"split '{split}' of {protocol.source} gave no batch: it must give at least one")
    return np.concatenate(rows)


class Scorer:
    """One task's metric on its validation (and a protocol task's test) split."""

    def __init__(self, task: Task, turn: Callable[[torch.device], Turn]) -> None:
        """``turn(device)``: a shared turn on that device, taken per batch."""
        self.task, self.protocol, self._turn = task, task.protocol, turn

    def correct(self, deployed: Any, x: torch.Tensor, y: torch.Tensor, target: torch.device, batch_size: int = 512) -> np.ndarray:
        """Which inputs the deployed form gets right, one shared turn on the target per batch."""
        return deployed_correct(deployed, x, y, batch_size, self._turn(target))

    def deployed(self, deployed: Any, target: torch.device) -> dict[str, Any]:
        """The deployed form's metric on the validation split (and a protocol task's test split), as Result fields."""
        if self.protocol is None:
            data = self.task.data
            assert data is not None
            correct = self.correct(deployed, data.x_val, data.y_val, target)
            return {"accuracy": accuracy(correct), "val_correct": pack_correct(correct)}  # paired against the baseline's: a drop's interval
        protocol, model, turn = self.protocol, deployed.model, self._turn(target)
        val = protocol_scores(protocol, model, "val", target, turn)
        test = protocol_scores(protocol, model, "test", target, turn)
        return {
            "accuracy": self.value(val, "val"),
            "val_scores": pack_rows(val),
            "test_score": self.value(test, "test"),
            "test_scores": pack_rows(test),
        }

    def value(self, rows: np.ndarray, split: str) -> float:
        """The metric over a split's rows; a non-finite corpus value is the task's mistake."""
        assert self.protocol is not None
        value = self.protocol.metric.value(rows)
        if not math.isfinite(value):
            raise TaskError(
                f"metric '{self.protocol.metric.name}' gave {value} on split '{split}': it must give a finite number (check metric_reduce)"
            )
        return value

    def in_training(self, model: nn.Module, device: torch.device) -> float:
        """Validation score of the model being fine-tuned, as it is (masks and quantizers on)."""
        if self.protocol is not None:
            return self.value(protocol_scores(self.protocol, model, "val", device, self._turn(device)), "val")
        data = self.task.data
        assert data is not None
        with self._turn(device)(), torch.no_grad():
            return accuracy(correct_of(model, data.x_val, data.y_val).cpu().numpy())

    def chance(self) -> float | None:
        """A built-in metric's score of the best constant prediction on the validation targets
        (of ``(inputs, targets)`` batches); None for in-memory tasks and metrics of the user's own."""
        protocol = self.protocol
        if protocol is None or protocol.metric.constant is None:
            return None
        try:
            # Copies: a batch's targets may be a view of a whole chunk of the file, which would
            # then stay in memory for the whole split.
            targets = [torch.as_tensor(split_batch(b)[1]).clone() for b in protocol.batches("val", torch.device("cpu"))]
            return protocol.metric.constant(targets)
        except (TaskError, RuntimeError, ValueError, TypeError):
            return None  # targets of another shape: no chance level, said so by its absence
