"""Training the baseline once: epochs with checkpoints that a stopped run resumes from, where
the search runs them (``local_trainer`` here, or a Ray worker), the weights cached by the spec;
and loading a user's checkpoint as plain weights."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.errors import TaskError
from autocompress.outputs import write_atomic
from autocompress.stats import accuracy
from autocompress.tasks.metrics import correct_of
from autocompress.tasks.spec import DataSplits, TaskSpec, model_entry, state_mismatch

LOG = logging.getLogger(__name__)

# Seconds between checkpoints while the baseline trains (what a Ctrl-C can cost; a worker ships
# one to the driver no more often).
CHECKPOINT_EVERY_S = 10.0

# A trainer runs ``train_epochs`` somewhere (in this process, or on a Ray worker) and passes on
# what it yields: (spec, data, initial weights, checkpoint to resume from or None) -> reports.
Trainer = Callable[[TaskSpec, DataSplits, dict[str, torch.Tensor], dict[str, Any] | None], Iterator[dict[str, Any]]]


def train_epochs(
    model: nn.Module, data: DataSplits, spec: TaskSpec, device: torch.device, resume: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Train the baseline on ``device``, yielding after each epoch its loss, validation accuracy,
    seconds so far and, every ``CHECKPOINT_EVERY_S`` seconds and after the last epoch, a
    checkpoint (weights, optimizer, schedule, shuffling state; on the CPU; else None: a large
    model's state is not shipped every epoch). From ``resume`` (such a checkpoint) it goes on
    where that one stopped, and ends where an uninterrupted run would have."""
    model.to(device)
    x, y = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.Adam(model.parameters(), lr=spec.train_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.train_epochs)
    first, seconds = 1, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        gen.set_state(resume["generator"])
        first, seconds = int(resume["epoch"]) + 1, float(resume.get("seconds", 0.0))
    loss_fn = nn.CrossEntropyLoss()
    n = len(x)
    start = time.monotonic() - seconds
    shipped = time.monotonic()
    for epoch in range(first, spec.train_epochs + 1):
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for i in range(0, n, spec.batch_size):
            idx = order[i : i + spec.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        with torch.no_grad():
            val = accuracy(correct_of(model, x_val, y_val).cpu().numpy())
        elapsed = time.monotonic() - start
        checkpoint = None
        if epoch == spec.train_epochs or time.monotonic() - shipped >= CHECKPOINT_EVERY_S:
            shipped = time.monotonic()
            checkpoint = {
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": _to_cpu(opt.state_dict()),
                "scheduler": sched.state_dict(),
                "generator": gen.get_state(),
                "epoch": epoch,
                "seconds": elapsed,
            }
        yield {"epoch": epoch, "epochs": spec.train_epochs, "loss": total / n, "val_accuracy": val, "seconds": elapsed, "checkpoint": checkpoint}
    model.eval()


def _to_cpu(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().clone()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_to_cpu(v) for v in state]
    return state


def local_trainer(device: torch.device) -> Trainer:
    """Train in this process on ``device``."""

    def train(spec: TaskSpec, data: DataSplits, state: dict[str, torch.Tensor], resume: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        model = make_model(spec, data)
        model.load_state_dict(state)
        yield {"where": {"host": socket.gethostname(), "pid": os.getpid(), "device": str(device)}}
        yield from train_epochs(model, data, spec, device, resume)

    return train


def make_model(spec: TaskSpec, data: DataSplits) -> nn.Module:
    return model_entry(spec.model).factory(num_classes=data.num_classes, input_shape=data.input_shape)


def _save(obj: Any, path: Path) -> None:
    """Through ``outputs.write_atomic``: a crash or Ctrl-C mid-write leaves the previous file,
    never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def trained_by_of(cache: Path) -> dict[str, Any]:
    """Where a cached baseline was trained, from its sidecar: a mapping of plain values, else
    nothing (with one warning): the sidecar only labels the weights."""
    sidecar = cache.with_suffix(".json")
    found = read_json(sidecar).get("trained_by", {}) if sidecar.is_file() else {}
    if isinstance(found, dict) and all(isinstance(k, str) and isinstance(v, (str, int, float, type(None))) for k, v in found.items()):
        return found
    LOG.warning("ignoring %s: its 'trained_by' is not a mapping of plain values (the weights are used; only the label is lost)", sidecar)
    return {}


# Caches are data with a schema: one that does not fit is ignored with one warning and rebuilt.
def _misfit(state: Any, expected: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` is not a state_dict that loads into a model of ``expected``'s, or None."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        return "not a state_dict of tensors"
    missing, extra, wrong = state_mismatch(expected, state)
    if missing or extra or wrong:
        return f"tensor '{(missing or extra or wrong)[0]}' does not fit the model"
    return None


def read_cached_state(path: Path, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """A cached baseline's weights, or None (one warning) when unreadable or not this model's."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        why = _misfit(state, model.state_dict())
    except Exception as exc:  # noqa: BLE001  (torch raises many kinds for bad files; weights_only runs no code)
        why = f"unreadable: {type(exc).__name__}"
    if why is None:
        return state
    LOG.warning("ignoring the cached baseline %s (%s); training it again", path, why)
    return None


def resume_misfit(resume: Any, model: nn.Module, spec: TaskSpec) -> str | None:
    """Why a partial checkpoint cannot resume this training (checked before any epoch runs on
    it, here or on a worker), or None."""
    keys = {"model", "optimizer", "scheduler", "generator", "epoch"}
    if not isinstance(resume, dict) or not keys <= set(resume):
        return f"not a checkpoint of this trainer (it holds {', '.join(sorted(keys))})"
    epoch, seconds = resume["epoch"], resume.get("seconds", 0.0)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 1 <= epoch < spec.train_epochs:
        return f"epoch {epoch!r} is not one of 1..{spec.train_epochs - 1}"
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < 1e9:
        return "its seconds are not a duration"
    why = _misfit(resume["model"], model.state_dict())
    if why is not None:
        return f"model: {why}"
    generator = resume["generator"]
    if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8 or generator.shape != torch.Generator().get_state().shape:
        return "its generator state is not a CPU generator's"
    try:  # the optimizer and schedule load into fresh copies, as the trainer will load them
        params = [torch.nn.Parameter(torch.empty_like(p, device="cpu")) for p in model.parameters()]
        opt = torch.optim.Adam(params, lr=spec.train_lr)
        opt.load_state_dict(resume["optimizer"])
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.train_epochs).load_state_dict(resume["scheduler"])
    except Exception as exc:  # noqa: BLE001  (optimizers raise many kinds for states of other models)
        return f"its optimizer or schedule does not load ({type(exc).__name__})"
    for p in params:
        for key, value in opt.state.get(p, {}).items():
            if key != "step" and (not isinstance(value, torch.Tensor) or value.shape != p.shape):
                return f"its optimizer's {key} does not fit the model"
    return None


def train_baseline(model: nn.Module, data: DataSplits, spec: TaskSpec, cache: Path, trainer: Trainer, say: Callable[[str], None]) -> dict[str, Any]:
    """Train through ``trainer``, one line per epoch, checkpointing next to the cache so that a
    run stopped midway (Ctrl-C, a lost worker) resumes there; the finished weights become the
    cache. Returns where it trained."""
    partial = cache.with_name(f"{cache.stem}.partial.pt")
    resume = None
    if partial.is_file():
        try:
            resume = torch.load(partial, map_location="cpu", weights_only=True)
            why = resume_misfit(resume, model, spec)
        except Exception as exc:  # noqa: BLE001  (an unreadable checkpoint only costs the epochs it held)
            why = f"unreadable: {type(exc).__name__}"
        if why is not None:
            LOG.warning("ignoring the checkpoint %s (%s); training from the start", partial, why)
            resume = None
    begun = f", resuming after epoch {resume['epoch']}" if resume else ""
    say(f"training the baseline {spec.model} on {spec.dataset} for {spec.train_epochs} epochs{begun} (cached at {cache} for next time)")
    where: dict[str, Any] = {}
    last = resume
    shown_at: float | None = None
    for report in trainer(spec, data, model.state_dict(), resume):
        if "where" in report:
            where = report["where"]
            node = f"Ray node {where['node_id'][:12]}, " if where.get("node_id") else ""
            say(f"  training on {node}{where.get('host', '?')} ({where.get('device', '?')})")
            continue
        epoch, epochs = report["epoch"], report["epochs"]
        if report["checkpoint"] is not None:  # every CHECKPOINT_EVERY_S, and the last epoch's
            last = report["checkpoint"]
            if epoch < epochs:
                _save(last, partial)
        now = time.monotonic()
        if shown_at is None or now - shown_at >= 1.0 or epoch == epochs:  # every epoch, unless epochs take under a second
            say(
                f"  epoch {epoch}/{epochs}: loss {report['loss']:.3f}, validation accuracy {100 * report['val_accuracy']:.2f}% "
                f"({report['seconds']:.0f} s)"
            )
            shown_at = now
    assert last is not None, "the trainer yielded no epoch"
    model.load_state_dict(last["model"])
    model.eval()
    _save(model.state_dict(), cache)
    write_atomic(cache.with_suffix(".json"), json.dumps({"trained_by": where, "epochs": spec.train_epochs}).encode())
    partial.unlink(missing_ok=True)
    return where


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a trained state_dict into ``model`` (weights only: no pickled code runs).

    Accepts a bare state_dict or one under ``state_dict``/``model``/``model_state_dict``, with or
    without DataParallel's ``module.`` prefix. Mismatches are named key by key.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"checkpoint not found ({path}) in task.weights: check the path (relative to the current folder)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch raises many kinds for bad files)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TaskError(
            f"cannot read checkpoint {path} as plain weights ({first[:160]}): save it with torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TaskError(f"checkpoint {path} is not a state_dict of tensors: save it with torch.save(model.state_dict(), path)")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    missing, unexpected, wrong = state_mismatch(expected, state)
    if wrong:
        k = wrong[0]
        raise TaskError(
            f"checkpoint {path} does not fit the model: '{k}' has shape {tuple(state[k].shape)}, the model expects "
            f"{tuple(expected[k].shape)}{f' ({len(wrong)} keys differ)' if len(wrong) > 1 else ''}: check task.model and task.num_classes"
        )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (first '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first '{unexpected[0]}')")
        raise TaskError(f"checkpoint {path} does not fit model: {', '.join(parts)}: check that it was saved from this architecture")
    model.load_state_dict(state)
