"""The task protocol: your model, your data, your loss and your metric.

``task.model: package.module:function`` names a function of no required arguments. Besides a
trained ``nn.Module`` (scored by top-1 on ``task.dataset``), or a mapping of ``model`` and
in-memory splits (see :mod:`autocompress.tasks.custom`), it may return a mapping with:

``model``
    the trained ``nn.Module`` (its weights are the baseline).
``train``, ``val``, ``test`` (and optionally ``calibration``)
    each a **zero-argument callable returning an iterable of batches** of any structure: tensors,
    tuples, mappings, integer dtypes kept as they are. The callable is shipped to the workers and
    opened there, by each worker that needs it (and by the worker that measures the baseline); the
    driver never opens it, and nothing of the data passes through the driver or Ray's object
    store. ``val`` and ``test`` must give the same batches in the same order every time they are
    opened (every trial is scored on the same samples). ``train`` is re-opened when fine-tuning
    runs through it.
``loss``
    ``loss(model, batch) -> scalar tensor``, minimized while fine-tuning. Default: cross-entropy
    of ``model(inputs)`` against ``targets`` on ``(inputs, targets)`` batches.
``metric``
    a built-in name (``accuracy``, ``top5``, ``mse``, ``mae``, ``miou``, ``macro_f1``: batches of
    ``(inputs, targets)``), or ``metric(model, batch) -> 1-D tensor`` of per-sample scores (the
    metric is their mean) with ``metric_name`` and ``higher_is_better`` (required: a direction is
    never assumed). For a corpus-level metric, ``metric(model, batch)`` returns per-sample
    statistics rows ``(N, k)`` and ``metric_reduce(rows) -> float`` computes the metric from a
    whole split's stacked rows (numpy). Default: ``accuracy`` (top-1).
``example_input``
    what one forward pass takes (a tensor, a tuple of positional inputs or a mapping of keyword
    inputs, any dtype): used to list layers, trace, export and time the model. Required.
``num_classes``
    for ``miou`` and ``macro_f1``.

Everything in the mapping must pickle (Ray sends it to the workers): functions defined at a
module's top level pickle by reference, closures and lambdas by value. ``autocompress
check-task CONFIG`` checks all of this on a worker before a search spends anything.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autocompress.errors import TaskError
from autocompress.tasks.metrics import Metric, builtin_metric, call_model, split_batch, user_metric

SPLITS = ("train", "val", "test")
OPTIONAL_SPLITS = ("calibration",)
PROTOCOL_KEYS = ("loss", "metric", "metric_name", "higher_is_better", "metric_reduce", "example_input", "metric_options")


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy of ``model(inputs)`` against ``targets`` (classification)."""
    inputs, targets = split_batch(batch)
    out = call_model(model, inputs)
    if isinstance(out, dict) and "out" in out:
        out = out["out"]
    return nn.functional.cross_entropy(out, torch.as_tensor(targets).to(out.device).long())


@dataclass
class TaskProtocol:
    """A user's task as the workers run it: split factories, loss, metric, example input.
    Picklable as long as the user's callables are; never holds data."""

    splits: dict[str, Callable[[], Iterable[Any]]]
    metric: Metric
    example_input: Any
    loss: Callable[[nn.Module, Any], torch.Tensor] = default_loss
    loss_is_default: bool = True
    source: str = "the task"  # the task function, for messages
    num_classes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what the driver may print: names only
    # An in-memory task's architecture (fresh copies), for workers that cannot call its function.
    architecture: Callable[..., nn.Module] | None = None

    def open(self, split: str) -> Iterable[Any]:
        """The split's batches, opened here (on a worker); a failure names the split."""
        factory = self.splits.get(split)
        if factory is None:
            raise TaskError(f"{self.source} has no '{split}' split: return it as a zero-argument function")
        try:
            return factory()
        except Exception as exc:  # noqa: BLE001  (the user's code can fail in any way)
            raise TaskError(f"split '{split}' of {self.source} failed when opened ({last_line(exc)}) on {where()}: fix the function") from None

    def batches(self, split: str, device: torch.device | None = None) -> Iterator[Any]:
        """The split's batches, moved to ``device``."""
        opened = self.open(split)
        try:
            iterator = iter(opened)
        except TypeError:
            raise TaskError(
                f"split '{split}' of {self.source} returned {type(opened).__name__}, which is not iterable: return a DataLoader or a list of batches"
            ) from None
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001
                raise TaskError(f"split '{split}' of {self.source} failed while reading ({last_line(exc)}) on {where()}: fix the loader") from None
            yield to_device(batch, device) if device is not None else batch

    def training_batches(self, device: torch.device | None = None) -> Iterator[Any]:
        """``train`` without end: re-opened each time it runs out (fine-tuning takes steps, not epochs)."""
        for _ in itertools.count():
            empty = True
            for batch in self.batches("train", device):
                empty = False
                yield batch
            if empty:
                raise TaskError(f"split 'train' of {self.source} gave no batch: it must give at least one")

    def calibration_batches(self, count: int, device: torch.device | None = None) -> list[Any]:
        """The first ``count`` batches of ``calibration`` (else of ``train``): what ranks weights
        by their gradients and sets activation ranges, the same every time."""
        split = "calibration" if "calibration" in self.splits else "train"
        return list(itertools.islice(self.batches(split, device), count))


def to_device(batch: Any, device: torch.device) -> Any:
    """Every tensor of a batch moved to ``device`` (dtypes kept), whatever the nesting."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def tensor_leaves(value: Any) -> list[torch.Tensor]:
    """Every tensor in a nested output, in a fixed order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for k in sorted(value, key=str) for t in tensor_leaves(value[k])]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensor_leaves(v)]
    return []


def first_tensor(value: Any) -> torch.Tensor | None:
    leaves = tensor_leaves(value)
    return leaves[0] if leaves else None


def where() -> str:
    """This process: the Ray node when on a Ray worker, the host and pid."""
    node = ""
    try:
        import ray

        if ray.is_initialized():
            node = f"Ray node {ray.get_runtime_context().get_node_id()[:12]}, "
    except Exception:  # noqa: BLE001  (no Ray, or not inside a worker)
        node = ""
    return f"{node}{socket.gethostname()} pid {os.getpid()}"


def last_line(exc: BaseException) -> str:
    """``ValueError: what it said last``: a user's exception in one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__


def is_protocol(parts: dict[str, Any]) -> bool:
    """Whether a task function's mapping uses the protocol (callable splits, or any of its keys)
    rather than in-memory splits scored by top-1."""
    return any(callable(parts.get(s)) and not isinstance(parts.get(s), nn.Module) for s in (*SPLITS, *OPTIONAL_SPLITS)) or any(
        parts.get(k) is not None for k in PROTOCOL_KEYS
    )


def _as_factory(value: Any, name: str, source: str) -> Callable[[], Iterable[Any]]:
    if callable(value):
        return value
    if isinstance(value, Iterable):  # an in-memory loader: it travels with the task (say so in the docs)
        return _Constant(value)
    raise TaskError(f"split '{name}' of {source} is {type(value).__name__}: return a zero-argument function that returns an iterable of batches")


class _Constant:
    """A factory returning an object given in memory (picklable, unlike a lambda over it)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self) -> Any:
        return self.value


def from_parts(parts: dict[str, Any], source: str) -> TaskProtocol:
    """The protocol from a task function's mapping, each key checked; errors name the key and the fix."""
    missing = [s for s in SPLITS if parts.get(s) is None]
    if missing:
        raise TaskError(f"{source} returned no '{missing[0]}' split: return train, val and test as zero-argument functions")
    splits = {s: _as_factory(parts[s], s, source) for s in (*SPLITS, *OPTIONAL_SPLITS) if parts.get(s) is not None}
    if "example_input" not in parts or parts["example_input"] is None:
        raise TaskError(
            f"{source} returned no 'example_input': give what one forward pass takes (a tensor, a tuple or a mapping), "
            "e.g. 'example_input': torch.zeros(1, 16, dtype=torch.long)"
        )
    num_classes = parts.get("num_classes")
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1):
        raise TaskError(f"{source} returned num_classes {num_classes!r}: give a positive integer or leave it out")
    metric_value = parts.get("metric", "accuracy")
    if isinstance(metric_value, str):
        unused = [k for k in ("metric_name", "higher_is_better", "metric_reduce") if parts.get(k) is not None]
        if unused:
            raise TaskError(
                f"{source} names the built-in metric '{metric_value}' and also gives '{unused[0]}', which only a metric function uses: "
                "leave it out, or give 'metric' as a function"
            )
        metric = builtin_metric(metric_value, {"num_classes": num_classes, **(parts.get("metric_options") or {})})
    elif callable(metric_value):
        metric = user_metric(metric_value, parts.get("metric_name"), parts.get("higher_is_better"), parts.get("metric_reduce"), where=source)
    else:
        raise TaskError(f"{source} returned metric {type(metric_value).__name__}: give a built-in name or a function metric(model, batch)")
    loss = parts.get("loss")
    if loss is not None and not callable(loss):
        raise TaskError(f"{source} returned loss {type(loss).__name__}: give a function loss(model, batch) -> scalar tensor")
    return TaskProtocol(
        splits=splits,
        metric=metric,
        example_input=parts["example_input"],
        loss=loss or default_loss,
        loss_is_default=loss is None,
        source=source,
        num_classes=num_classes,
    )
