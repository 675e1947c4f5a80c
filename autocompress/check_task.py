"""``autocompress check-task``: a dry run that catches a task's mistakes before a search.

On the driver: the task function runs, its model takes its ``example_input``, the space matches
its layers, and everything the workers need pickles. On a worker (where the search's workers
run): each split opens and gives two batches, the loss takes a training batch and gives a
finite scalar, the metric scores validation and test batches, and the trained model scores
better than an untrained copy in the metric's declared direction (a metric whose direction is
wrong is the commonest silent mistake: the search would then keep the worst models).
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autocompress.errors import AutocompressError, TaskError
from autocompress.tasks.protocol import TaskProtocol, where

BATCHES = 2  # batches of each split a check passes through the model


@dataclass(frozen=True)
class Check:
    """One line of the dry run: what was checked, and what was seen."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def describe_batch(batch: Any) -> str:
    """``(Tensor[32, 10] float32, Tensor[32] int64)``: a batch's structure, no values."""
    if isinstance(batch, torch.Tensor):
        return f"Tensor[{', '.join(map(str, batch.shape))}] {str(batch.dtype).removeprefix('torch.')}"
    if isinstance(batch, dict):
        return "{" + ", ".join(f"{k}: {describe_batch(v)}" for k, v in batch.items()) + "}"
    if isinstance(batch, (tuple, list)):
        inner = ", ".join(describe_batch(v) for v in batch)
        return f"({inner})" if isinstance(batch, tuple) else f"[{inner}]"
    return type(batch).__name__


def untrained_copy(model: nn.Module, build: Callable[[], nn.Module] | None) -> nn.Module:
    """The same architecture with fresh weights: the build hook's, or every module's own
    ``reset_parameters`` on a copy (seeded)."""
    torch.manual_seed(0)
    if build is not None:
        return build().eval()
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return fresh.eval()


def run_checks(protocol: TaskProtocol, model: nn.Module, build: Callable[[], nn.Module] | None, direction: bool = True) -> list[Check]:
    """The worker's half of the dry run; stops at the first failure (later checks need it).
    ``direction``: also score the whole validation split with the trained model and an
    untrained copy."""
    from autocompress.finetuning import task_loss
    from autocompress.scoring import protocol_scores

    checks: list[Check] = []
    here = where()
    device = torch.device("cpu")
    batches: dict[str, list[Any]] = {}
    for split in protocol.splits:
        try:
            batches[split] = list(itertools.islice(protocol.batches(split, device), BATCHES))
        except AutocompressError as exc:
            checks.append(Check(f"split '{split}'", False, str(exc)))
            return checks
        if not batches[split]:
            checks.append(Check(f"split '{split}'", False, f"opened on {here} but gave no batch: it must give at least one"))
            return checks
        checks.append(Check(f"split '{split}'", True, f"opened on {here}; batches of {describe_batch(batches[split][0])}"))
    for split in ("val", "test"):  # every trial must score the same samples in the same order
        again = list(itertools.islice(protocol.batches(split, device), BATCHES))
        if not _same(batches[split], again):
            checks.append(
                Check(
                    f"order of '{split}'",
                    False,
                    "opened twice, it gave different first batches: every trial must score the same samples in the same order "
                    "(do not shuffle it, seed any sampling)",
                )
            )
            return checks
    checks.append(Check("order", True, "'val' and 'test' give the same first batches when opened again"))
    model.train()
    try:
        losses = [float(task_loss(protocol, model, b).detach()) for b in batches["train"]]
    except AutocompressError as exc:
        checks.append(Check("loss", False, str(exc)))
        return checks
    finally:
        model.eval()
    if not all(math.isfinite(v) for v in losses):
        checks.append(Check("loss", False, f"gave {losses} on the first training batches: it must be finite"))
        return checks
    which = "cross-entropy (the default)" if protocol.loss_is_default else "the task's own"
    checks.append(Check("loss", True, f"{which}: {', '.join(f'{v:.4g}' for v in losses)} on {len(losses)} training batches, finite"))
    metric = protocol.metric
    for split in ("val", "test"):
        try:
            rows = protocol_scores(_Limited(protocol, split, batches[split]), model, split, device)
        except AutocompressError as exc:
            checks.append(Check(f"metric on '{split}'", False, str(exc)))
            return checks
        value = metric.value(rows)
        if not math.isfinite(value):
            checks.append(Check(f"metric on '{split}'", False, f"'{metric.name}' gave {value} on {len(rows)} samples: it must give a finite number"))
            return checks
        kind = "statistics rows" if metric.corpus else "per-sample scores"
        checks.append(Check(f"metric on '{split}'", True, f"{metric.name} {value:.4g} on {len(rows)} samples ({kind} {tuple(rows.shape)})"))
    if direction:
        checks.append(_direction(protocol, model, build))
    return checks


def _direction(protocol: TaskProtocol, model: nn.Module, build: Callable[[], nn.Module] | None) -> Check:
    """The trained model against an untrained copy on the whole validation split."""
    from autocompress.scoring import protocol_scores

    metric = protocol.metric
    device = torch.device("cpu")
    trained = metric.value(protocol_scores(protocol, model, "val", device))
    fresh = untrained_copy(model, build)
    untrained = metric.value(protocol_scores(protocol, fresh, "val", device))
    said = f"trained {trained:.4g}, untrained {untrained:.4g}; {metric.name} is declared {metric.info().better} is better"
    if metric.drop(trained, untrained) > 0:
        return Check("direction", True, f"{said}, and the trained model is better that way")
    if trained == untrained:
        return Check("direction", False, f"{said}, but the two score the same: is the model trained, and does the metric read its outputs?")
    return Check(
        "direction",
        False,
        f"{said}, but the untrained copy scores better that way: set higher_is_better to {not metric.higher_is_better} "
        "if the metric is right, or train the model",
    )


def _same(a: Any, b: Any) -> bool:
    """Equal batches, whatever the structure (tensors compared by value)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001  (an object without a usable equality: not comparable, assume the same)
        return True


class _Limited(TaskProtocol):
    """A protocol whose one split is the batches already read (so a check reads each split once)."""

    def __init__(self, protocol: TaskProtocol, split: str, batches: list[Any]) -> None:
        super().__init__(splits={split: lambda: batches}, metric=protocol.metric, example_input=protocol.example_input, source=protocol.source)


def worker_checks(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The worker's half, from the task payload the search's workers receive (as plain data)."""
    from autocompress.tasks import Task
    from autocompress.tasks.custom import build_hook

    try:
        task = Task.from_payload(job["task"])
    except AutocompressError as exc:
        return [Check("task on a worker", False, f"{exc} (on {where()})").__dict__]
    assert task.protocol is not None
    build = build_hook(task.spec.build) if task.spec.build else None
    return [c.__dict__ for c in run_checks(task.protocol, task.build_model(), build, job["direction"])]


def _on_worker(config: Any, protocol: TaskProtocol, runner: Any, direction: bool, model: nn.Module | None = None) -> list[Check]:
    """The worker's half through ``runner`` (connected), from the task's model (built here
    when not given)."""
    from autocompress.tasks import Task, model_skeleton

    if model is None:
        model, _ = model_skeleton(config.task)
    task = Task(spec=config.task.resolved(), data=None, state_dict={k: v.detach().clone() for k, v in model.state_dict().items()}, protocol=protocol)
    return [Check(**c) for c in runner.run_on_worker(worker_checks, {"task": task.payload(), "direction": direction})]


def _raise_failed(results: list[Check]) -> None:
    failed = [c for c in results if not c.ok]
    if failed:
        first = failed[0]
        raise TaskError(first.detail if first.detail.startswith(first.name) else f"{first.name}: {first.detail}")


def quick_checks(config: Any, protocol: TaskProtocol, runner: Any) -> list[Check]:
    """What a search checks before it stores anything: splits, loss and metric on two batches."""
    results = _on_worker(config, protocol, runner, direction=False)
    _raise_failed(results)
    return results


def check_task(config: Any, say: Callable[[str], None]) -> bool:
    """The whole dry run for a study config, one line per check through ``say``; whether all
    passed. The driver's half here; the worker's half on one of the search's workers (Ray), or
    in this process with ``search.workers: 0``."""
    from autocompress.driver.checks import check_protocol
    from autocompress.runners import make_runner
    from autocompress.space import load_space
    from autocompress.tasks import model_skeleton
    from autocompress.tasks.custom import task_protocol
    from autocompress.tasks.training import pickle_protocol

    spec = config.task
    protocol = task_protocol(spec)
    if protocol is None:
        model, example = model_skeleton(spec)  # reads the data, checks the model's outputs against it
        say(Check("task", True, f"{spec.model}: an in-memory task scored by top-1 accuracy (higher is better), its data read on the driver").line())
        space = load_space(config.space).resolve(model, example)
        say(Check("space", True, f"{len(space.layers)} layers, {space.dimensions} searched knobs ({space.source})").line())
        return True
    check_protocol(config)
    metric = protocol.metric.info()
    say(
        Check(
            "task",
            True,
            f"{spec.model} returns splits {', '.join(protocol.splits)} (not opened here), metric {metric.name} ({metric.better} is better"
            f"{', corpus-level' if metric.corpus else ''}), loss {'cross-entropy (the default)' if protocol.loss_is_default else 'its own'}",
        ).line()
    )
    model, example = model_skeleton(spec)  # the example_input checked against the model
    params = sum(p.numel() for p in model.parameters())
    say(Check("model", True, f"{type(model).__name__}, {params} parameters, takes example_input {describe_batch(example)}").line())
    space = load_space(config.space).resolve(model, example)
    say(Check("space", True, f"{len(space.layers)} layers, {space.dimensions} searched knobs ({space.source})").line())
    blob = pickle_protocol(protocol)
    say(Check("pickle", True, f"the splits, loss and metric travel to the workers as {len(blob)} bytes").line())
    runner = make_runner(config.search)
    runner.connect(config.deploy)
    try:
        results = _on_worker(config, protocol, runner, direction=True, model=model)
        for c in results:
            if c.ok:
                say(c.line())
        _raise_failed(results)
    finally:
        runner.close()
    return True


def check_protocol_on_worker(config: Any, runner: Any, say: Callable[[str], None]) -> None:
    """A protocol task's splits, loss and metric tried on a worker (two batches each), before
    the storage is touched: a split that fails to open, a loss or a metric that cannot take a
    batch stops the search with nothing stored. ``check-task`` also checks the direction."""
    from autocompress.tasks.custom import task_protocol

    protocol = task_protocol(config.task)
    if protocol is None:
        return
    start = time.monotonic()
    checks = quick_checks(config, protocol, runner)
    say(f"  task checked on a worker: {', '.join(c.name for c in checks)} ({time.monotonic() - start:.1f} s)")
