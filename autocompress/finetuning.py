"""Fine-tuning a compressed model briefly (masks and quantizers attached): cross-entropy on an
in-memory task, the task's own loss on its ``train`` batches for a protocol task, optional
distillation from the baseline, and rungs where the driver may stop it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from autocompress.config import FinetuneConfig
from autocompress.deploy.timing import DeviceLock
from autocompress.errors import AutocompressError, TaskError
from autocompress.tasks import Task
from autocompress.tasks.protocol import TaskProtocol, last_line, tensor_leaves

CALIBRATION_SAMPLES = 256  # labelled training images whose loss gradients rank weights for taylor importance


def finetune(
    model: nn.Module,
    task: Task,
    config: FinetuneConfig,
    seed: int = 0,
    teacher: nn.Module | None = None,
    lock: DeviceLock | None = None,
    rungs: tuple[int, ...] = (),
    at_rung: Callable[[int | None], bool] | None = None,
) -> tuple[list[float], int, bool]:
    """Train the compressed model briefly; masks and quantizers stay attached. Returns the loss log,
    the steps taken and whether it was stopped.

    ``at_rung(step)`` is called before each step in ``rungs`` and ``at_rung(None)`` after the
    last step; when it returns True the training stops there (the driver pruned the trial).

    With ``config.distill > 0`` and a ``teacher`` (the baseline), the loss mixes the labels'
    cross-entropy with the KL divergence to the teacher's outputs at ``config.temperature``.
    Each step is one shared turn of ``lock``: a latency measurement on the device waits for the
    step to end, and the next step waits for the measurement.
    """
    if config.steps <= 0:
        return [], 0, False
    if task.protocol is not None:
        return _finetune_protocol(model, task, config, teacher, lock, rungs, at_rung)
    distill = config.distill if teacher is not None else 0.0
    temp = config.temperature
    assert task.data is not None, "an in-memory task (protocol tasks fine-tune in _finetune_protocol)"
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)  # same plan, same result
    x, y = task.data.x_train, task.data.y_train
    log: list[float] = []
    cuda = x.device.type == "cuda"
    model.train()
    for step in range(config.steps):
        if at_rung is not None and step in rungs and at_rung(step):
            model.eval()
            return log, step, True
        idx = torch.randint(len(x), (config.batch_size,), generator=gen)
        with lock.shared() if lock is not None else contextlib.nullcontext():
            opt.zero_grad(set_to_none=True)
            logits = model(x[idx])
            loss = loss_fn(logits, y[idx])
            if distill:
                with torch.no_grad():
                    soft = nn.functional.log_softmax(teacher(x[idx]) / temp, dim=1)  # type: ignore[misc]
                kl = nn.functional.kl_div(nn.functional.log_softmax(logits / temp, dim=1), soft, log_target=True, reduction="batchmean")
                loss = (1.0 - distill) * loss + distill * temp * temp * kl
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning diverged at step {step} (loss {loss.item()})")
            loss.backward()
            opt.step()
            sched.step()
            if cuda:  # the step's kernels end inside the turn, not during someone's timing
                torch.cuda.synchronize(x.device)
        if step % config.log_every == 0 or step == config.steps - 1:
            log.append(round(loss.item(), 5))
    model.eval()
    stopped = at_rung is not None and at_rung(None)  # a stop decided after the last rung
    return log, config.steps, stopped


def _finetune_protocol(
    model: nn.Module,
    task: Task,
    config: FinetuneConfig,
    teacher: nn.Module | None,
    lock: DeviceLock | None,
    rungs: tuple[int, ...],
    at_rung: Callable[[int | None], bool] | None,
) -> tuple[list[float], int, bool]:
    """:func:`finetune` for a protocol task: the task's own loss on its ``train`` batches, taken
    in order (re-opened when they run out). Distillation matches every floating-point tensor of
    the model's output to the teacher's by mean squared error (logit matching, Ba & Caruana
    2014), whatever the output's structure; the teacher sees the very arguments the student saw."""
    protocol = task.protocol
    assert protocol is not None
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    distill = config.distill if teacher is not None else 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps)
    seen: dict[str, Any] = {}

    def capture(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        seen.update(args=args, kwargs=kwargs, output=output)

    handle = model.register_forward_hook(capture, with_kwargs=True) if distill else None
    batches = protocol.training_batches(device)
    log: list[float] = []
    model.train()
    try:
        for step in range(config.steps):
            if at_rung is not None and step in rungs and at_rung(step):
                model.eval()
                return log, step, True
            batch = next(batches)
            with lock.shared() if lock is not None else contextlib.nullcontext():
                opt.zero_grad(set_to_none=True)
                seen.clear()
                loss = task_loss(protocol, model, batch)
                if distill:
                    if "output" not in seen:
                        raise TaskError(
                            f"finetune.distill needs the task's loss to call the model itself ({protocol.source}): set finetune.distill to 0"
                        )
                    with torch.no_grad():
                        target = teacher(*seen["args"], **seen["kwargs"])  # type: ignore[misc]
                    pairs = [(s_, t_) for s_, t_ in zip(tensor_leaves(seen["output"]), tensor_leaves(target), strict=False) if s_.is_floating_point()]
                    if not pairs:
                        raise TaskError(f"finetune.distill found no floating-point output to match ({protocol.source}): set finetune.distill to 0")
                    match = sum(nn.functional.mse_loss(s_.float(), t_.float()) for s_, t_ in pairs) / len(pairs)
                    loss = (1.0 - distill) * loss + distill * match
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"fine-tuning diverged at step {step} (loss {loss.item()})")
                loss.backward()
                opt.step()
                sched.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            if step % config.log_every == 0 or step == config.steps - 1:
                log.append(round(loss.item(), 5))
    finally:
        if handle is not None:
            handle.remove()
    model.eval()
    stopped = at_rung is not None and at_rung(None)
    return log, config.steps, stopped


def task_loss(protocol: TaskProtocol, model: nn.Module, batch: Any) -> torch.Tensor:
    """The task's loss on one batch, checked to be a finite-able scalar tensor."""
    try:
        loss = protocol.loss(model, batch)
    except AutocompressError:
        raise
    except Exception as exc:  # noqa: BLE001  (the user's loss can fail in any way)
        raise TaskError(f"the loss of {protocol.source} failed on a training batch ({last_line(exc)}): fix the loss or the batches") from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TaskError(
            f"the loss of {protocol.source} returned {type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}: return one scalar tensor"
        )
    return loss.reshape(())


def labelled_batch(task: Task, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | Callable[[nn.Module], torch.Tensor]:
    """The labelled batch gradient-based importance ranks with: the same for every trial
    (a protocol task: its loss over its first calibration batches)."""
    if task.protocol is not None:
        protocol = task.protocol
        batches = protocol.calibration_batches(4, device)

        def loss(model: nn.Module) -> torch.Tensor:
            return sum((task_loss(protocol, model, b) for b in batches), torch.zeros(())) / max(1, len(batches))

        return loss
    data = task.data
    assert data is not None
    idx = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))[:CALIBRATION_SAMPLES].to(data.x_train.device)
    return data.x_train[idx], data.y_train[idx]
