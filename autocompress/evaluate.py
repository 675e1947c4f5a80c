"""The evaluator: plan -> compress -> fine-tune -> measure -> Result.

Runs inside a worker (a Ray actor or the driver process for ``--workers 0``). It never touches the
study storage: it receives a plan and returns a plain :class:`~autocompress.plan.Result`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress import compress
from autocompress.artifact import pack
from autocompress.config import FinetuneConfig
from autocompress.deploy.runtimes import deployed_correct
from autocompress.deploy.target import DeployConfig
from autocompress.deploy.timing import DeviceLock, Timing, device_key, time_alone, time_paired
from autocompress.errors import AutocompressError, TaskError
from autocompress.fidelity import NO_REPORTING, Reporting, Rung
from autocompress.latency import count_macs
from autocompress.plan import CompressionPlan, Result
from autocompress.size import layer_rows
from autocompress.stats import accuracy, pack_correct, pack_rows
from autocompress.tasks import DataSplits, Task, correct_of
from autocompress.tasks.metrics import score_rows, split_batch
from autocompress.tasks.protocol import TaskProtocol, last_line, tensor_leaves, to_device

CALIBRATION_SAMPLES = 256  # labelled training images whose loss gradients rank weights for taylor importance


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """``auto`` is the GPU when this process sees one (a Ray actor sees one only when it reserved
    it with ``--gpus-per-worker``), else the CPU. ``flag`` names the setting in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible to this process"
        raise AutocompressError(f"device cuda was asked for ({flag}) but {why} on {socket.gethostname()}: use {flag} cpu or auto")
    return torch.device(name)


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


class Evaluator:
    """Builds compressed variants of one task's baseline and measures them on the deploy target.

    Accuracy and latency both come from the deployed form (``deploy.runtimes``); latency is
    timed paired with the baseline in an exclusive slot on the target device
    (``deploy.timing``), or on a remote timing actor when ``timer`` is given (hardware in the
    loop: a Ray actor handle with ``put_baseline`` / ``time``).
    """

    def __init__(
        self,
        task: Task,
        finetune: FinetuneConfig,
        deploy: DeployConfig | None = None,
        device: str = "cpu",
        timer: Any = None,
        reporting: Reporting = NO_REPORTING,
    ) -> None:
        """``reporting``: the fine-tuning steps at which a trial with a ``report`` reports its
        accuracy, and whether size and latency are measured before fine-tuning."""
        from autocompress.deploy.runtimes import runtime

        self.rungs, self.early_measure = reporting.rungs, reporting.early_measure
        self.finetune_config = finetune
        self.deploy_config = deploy = deploy or DeployConfig()
        self.timer = timer
        self.device: torch.device | None = None
        self.target = torch.device("cpu")  # where the deployed model runs (deploy.device)
        self.device_error = ""
        try:  # any failure here fails every trial with the reason; the search stops cleanly
            self.device = resolve_device(device)
            self.target = resolve_device(self.device.type if deploy.device == "auto" else deploy.device, "deploy.device")
            self.runtime = runtime(deploy.runtime)
            self.runtime.check(deploy.precision, self.target.type)
        except AutocompressError as exc:
            self.device, self.device_error = None, str(exc)
        if task.protocol is not None and deploy.runtime != "torch" and not self.device_error:
            self.device, self.device_error = (
                None,
                (
                    f"deploy.runtime {deploy.runtime} cannot run a protocol task yet (its exporter takes one tensor of float inputs and "
                    f"gives logits; {task.protocol.source} brings its own batches and metric): use deploy.runtime torch"
                ),
            )
        if self.device is not None and self.device.type != "cpu" and task.data is not None:
            moved: dict[str, Any] = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in asdict(task.data).items()}
            task = replace(task, data=DataSplits(**moved))
        self.task = task
        self.protocol = task.protocol
        self.example: Any = task.protocol.example_input if task.protocol is not None else task.data.x_val[: deploy.batch_size]  # type: ignore[union-attr]
        self.worker = {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.device), "target": self.target.type}
        self._locks: dict[str, DeviceLock] = {}
        self._teacher: nn.Module | None = None  # the baseline, for distillation: built once
        self._baseline: tuple[Any, bytes] | None = None  # the baseline's deployed form and file
        self._baseline_sent = False  # the remote timer holds the baseline

    def lock(self, device: torch.device) -> DeviceLock:
        """This process's handle on a device's lock (one per device key)."""
        key = device_key(str(device))
        if key not in self._locks:
            self._locks[key] = DeviceLock(key)
        return self._locks[key]

    def _model(self) -> nn.Module:
        if self.device is None:
            raise AutocompressError(self.device_error)
        return self.task.build_model().to(self.device)

    def _calibration(self) -> list[torch.Tensor]:
        """Training batches for int8 activation ranges: seeded, so a re-export is the same file."""
        from autocompress.deploy.onnx_export import calibration_batches

        cfg = self.deploy_config
        if cfg.precision != "int8" or self.task.data is None:
            return []
        return calibration_batches(self.task.data.x_train, self.task.spec.seed, cfg.calibration_batches, cfg.batch_size)

    def deploy(self, model: nn.Module, plan: CompressionPlan) -> Any:
        """The deployed form of a baked model on the target (exported under the CPU's lock)."""
        cfg = self.deploy_config
        if cfg.runtime == "torch":
            model = model.to(self.target)
        example = to_device(self.example, self.target)
        with self.lock(torch.device("cpu")).shared():
            return self.runtime.deploy(model, plan, example, cfg.precision, self.target.type, cfg.threads, self._calibration())

    def correct(self, deployed: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Which inputs the deployed form gets right, one shared turn on the target per batch."""
        return deployed_correct(deployed, x, y, batch_size, self.lock(self.target).shared)

    def _baseline_form(self) -> tuple[Any, bytes]:
        if self._baseline is None:
            model = self._model().cpu()
            packed = pack(model, CompressionPlan(), self.task.artifact_task(), compress.structure(model))
            deployed = self.deploy(model, CompressionPlan())
            self._baseline = (deployed, deployed.onnx if deployed.onnx is not None else packed.data)
        return self._baseline

    def _time(self, deployed: Any, blob: bytes, alone: bool) -> tuple[Timing, str]:
        """Alone (the baseline) or paired with the baseline; here or on the remote timer."""
        cfg = self.deploy_config
        if self.timer is not None:
            import ray

            if alone:
                got = ray.get(self.timer.time.remote(None, blob))
            else:
                _base_deployed, base_blob = self._baseline_form()
                digest = hashlib.sha256(base_blob).hexdigest()
                if not self._baseline_sent:
                    ray.get(self.timer.put_baseline.remote(digest, base_blob))
                    self._baseline_sent = True
                got = ray.get(self.timer.time.remote(digest, blob))
            node = got.pop("node")
            got["window"] = tuple(got["window"])
            return Timing(**got), node
        base = None if alone else self._baseline_form()[0]  # before the slot: exporting takes turns
        with self.lock(self.target).exclusive():
            if base is None:
                return time_alone(deployed, cfg.threshold, cfg.max_seconds), ""
            return time_paired(base, deployed, cfg.threshold, cfg.max_seconds), ""

    def measure(self, model: nn.Module, plan: CompressionPlan, alone: bool = False, timed: tuple[Timing, str] | None = None) -> Result:
        """Accuracy, packed size, latency and counts of a (possibly compressed) model, on the target.

        Packing bakes the model in place; the baked model is then deployed, and the deployed form
        gives accuracy (validation split) and latency (paired with the baseline unless ``alone``;
        ``timed``: already timed before fine-tuning, on the deployed form of the same structure).
        """
        model.eval()
        model.cpu()  # the packer and the exporter read host memory
        rows = layer_rows(model)
        packed = pack(model, plan, self.task.artifact_task(), compress.structure(model))
        for row in rows:
            row["bytes"] = packed.per_layer.get(row["layer"], 0)
        macs = count_macs(model, to_device(self.example, torch.device("cpu")))
        weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
        params = sum(p.numel() for p in model.parameters())
        nonzeros = sum(int(torch.count_nonzero(w)) for w in weights)
        deployed = self.deploy(model, plan)
        scored = self._score_deployed(deployed)
        blob = deployed.onnx if deployed.onnx is not None else packed.data
        if alone:
            self._baseline = (deployed, blob)
        timing, node = timed or self._time(deployed, blob, alone)
        busy = {key: lock.take_busy() for key, lock in self._locks.items()}
        return Result(
            **scored,
            size_bytes=len(packed.data),
            latency_ms=timing.latency_ms,
            latency_ratio=timing.ratio,
            latency_cv=timing.cv,
            latency_capped=timing.capped,
            latency_backend=deployed.backend,
            latency_node=node,
            onnx_bytes=len(deployed.onnx) if deployed.onnx is not None else None,
            params=params,
            nonzeros=nonzeros,
            macs=macs,
            per_layer=rows,
            windows={"timing": [list(timing.window)], "timing_device": device_key(str(self.target)), "busy": busy},
            artifact=packed.data,
            onnx=deployed.onnx or b"",
        )

    def baseline(self) -> Result:
        """The uncompressed model measured on the same target as every trial, timed alone: the
        reference that trials' paired ratios scale (with a protocol task's chance level)."""

        def run() -> Result:
            result = self.measure(self._model(), CompressionPlan(), alone=True)
            result.chance_score = self._chance_score()
            return result

        return self._timed(run)

    def _chance_score(self) -> float | None:
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

    def _score_deployed(self, deployed: Any) -> dict[str, Any]:
        """The deployed form's metric on the validation split (and, for a protocol task, on the
        test split: it is opened only where the work runs, so its held-out score is taken here
        and read by the re-check of the front), as Result fields."""
        if self.protocol is None:
            data = self.task.data
            assert data is not None
            correct = self.correct(deployed, data.x_val, data.y_val)
            return {"accuracy": accuracy(correct), "val_correct": pack_correct(correct)}  # paired against the baseline's: a drop's interval
        protocol, model = self.protocol, deployed.model
        turn = self.lock(self.target).shared
        val = protocol_scores(protocol, model, "val", self.target, turn)
        test = protocol_scores(protocol, model, "test", self.target, turn)
        return {
            "accuracy": self._value(val, "val"),
            "val_scores": pack_rows(val),
            "test_score": self._value(test, "test"),
            "test_scores": pack_rows(test),
        }

    def _value(self, rows: np.ndarray, split: str) -> float:
        """The metric over a split's rows; a non-finite corpus value is the task's mistake."""
        assert self.protocol is not None
        value = self.protocol.metric.value(rows)
        if not math.isfinite(value):
            raise TaskError(
                f"metric '{self.protocol.metric.name}' gave {value} on split '{split}': it must give a finite number (check metric_reduce)"
            )
        return value

    @functools.cached_property
    def _labelled_batch(self) -> tuple[torch.Tensor, torch.Tensor] | Callable[[nn.Module], torch.Tensor]:
        """The labelled batch gradient-based importance ranks with: the same for every trial
        (a protocol task: its loss over its first calibration batches)."""
        if self.protocol is not None:
            protocol = self.protocol
            batches = protocol.calibration_batches(4, self.device or torch.device("cpu"))

            def loss(model: nn.Module) -> torch.Tensor:
                return sum((task_loss(protocol, model, b) for b in batches), torch.zeros(())) / max(1, len(batches))

            return loss
        data = self.task.data
        assert data is not None
        idx = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))[:CALIBRATION_SAMPLES].to(data.x_train.device)
        return data.x_train[idx], data.y_train[idx]

    def _compressed(self, plan: CompressionPlan) -> nn.Module:
        """A fresh copy of the model compressed by ``plan`` (``apply`` is deterministic)."""
        example = self.example if self.protocol is not None else self.task.data.x_val[:2]  # type: ignore[union-attr]
        return compress.apply(self._model(), plan, example=example, calibration=self._labelled_batch)

    def shot(self, plan: CompressionPlan, timed: bool, scored: bool = True) -> tuple[float | None, int, tuple[Timing, str] | None]:
        """The plan's model as compression leaves it, before any fine-tuning: validation accuracy
        as it is (in torch; when ``scored``), packed size, and when ``timed`` the paired latency
        of its deployed form (with the node that timed it). Fine-tuning keeps the structure
        (masks, ranks, bit-widths, removed channels), so that latency is also the finished
        model's. A model of its own (``apply`` is deterministic): packing bakes in place, and a
        deep copy of a parametrized module would share its parametrization."""
        model = self._compressed(plan)
        score = self.rung_accuracy(model) if scored else None
        model = model.eval().cpu()
        packed = pack(model, plan, self.task.artifact_task(), compress.structure(model))
        timing = None
        if timed:
            deployed = self.deploy(model, plan)
            timing = self._time(deployed, deployed.onnx if deployed.onnx is not None else packed.data, alone=False)
        return score, len(packed.data), timing

    def one_shot(self, plan: CompressionPlan, timed: bool) -> dict[str, Any]:
        """``shot`` as plain data: accuracy, size_bytes, latency_ratio (None when not timed)."""
        score, size, timing = self.shot(plan, timed)
        return {"accuracy": score, "size_bytes": size, "latency_ratio": timing[0].ratio if timing else None}

    def rung_accuracy(self, model: nn.Module) -> float:
        """Validation accuracy of the model being fine-tuned, as it is (masks and quantizers on),
        one shared turn on the device."""
        device = self.device or torch.device("cpu")
        if self.protocol is not None:
            return self._value(protocol_scores(self.protocol, model, "val", device, self.lock(device).shared), "val")
        data = self.task.data
        assert data is not None
        with self.lock(device).shared(), torch.no_grad():
            return accuracy(correct_of(model, data.x_val, data.y_val).cpu().numpy())

    def evaluate(self, plan: CompressionPlan, report: Callable[[Rung | None], bool] | None = None) -> Result:
        """Compress, fine-tune and measure; any failure becomes ``Result.error``, never an exception.

        With ``report``, the validation accuracy at each of ``self.rungs`` is reported (with size
        and latency, measured first, when ``self.early_measure``); ``report`` returns True to stop
        the trial there (and ``report(None)`` after the last step asks whether a stop came late).
        A stopped trial returns what it reached, with ``pruned_at`` set.
        """
        from autocompress.deploy.qat import int8_activations

        def run() -> Result:
            timed: tuple[Timing, str] | None = None
            size = 0
            if report is not None and self.early_measure:
                _, size, timed = self.shot(plan, timed=True, scored=False)
            model = self._compressed(plan)
            if self.finetune_config.distill and self._teacher is None:
                self._teacher = self._model().eval()
            rungs: list[Rung] = []

            def at_rung(step: int | None) -> bool:
                if step is None:
                    return report(None)  # type: ignore[misc]
                was_training = model.training
                rung = Rung(step, self.rung_accuracy(model), size, timed[0].ratio if timed else None)
                model.train(was_training)
                rungs.append(rung)
                return report(rung)  # type: ignore[misc]

            cfg = self.deploy_config
            # Integer kernels quantize activations too: fine-tune with that rounding (QAT).
            simulate = cfg.precision == "int8" and cfg.runtime != "torch"
            with int8_activations(model, plan) if simulate else contextlib.nullcontext():
                log, steps, stopped = finetune(
                    model,
                    self.task,
                    self.finetune_config,
                    seed=self.task.spec.seed,
                    teacher=self._teacher,
                    lock=self.lock(self.device or torch.device("cpu")),
                    rungs=self.rungs,
                    at_rung=at_rung if report is not None else None,
                )
            if stopped:
                early = timed[0] if timed else None
                return Result(
                    accuracy=rungs[-1].accuracy if rungs else float("nan"),
                    size_bytes=size,
                    latency_ms=early.latency_ms if early else float("nan"),
                    latency_ratio=early.ratio if early else 1.0,
                    latency_cv=early.cv if early else 0.0,
                    latency_node=timed[1] if timed else "",
                    finetune_log=log,
                    finetune_steps=steps,
                    rungs=[r.to_dict() for r in rungs],
                    pruned_at=rungs[-1].step if rungs else 0,
                )
            result = self.measure(model, plan, timed=timed)
            result.finetune_log, result.finetune_steps, result.rungs = log, steps, [r.to_dict() for r in rungs]
            return result

        return self._timed(run)

    def _timed(self, fn) -> Result:
        start = time.perf_counter()
        try:
            result = fn()
            if not math.isfinite(result.accuracy) or not math.isfinite(result.latency_ms):
                result.error = f"non-finite measurement (accuracy={result.accuracy}, latency={result.latency_ms})"
        except AutocompressError as exc:
            result = Result.failure(str(exc))
        except torch.OutOfMemoryError as exc:
            result = Result.failure(f"out of memory: {exc}")
        except Exception as exc:  # noqa: BLE001  a failing trial must never take the search down
            last = traceback.extract_tb(exc.__traceback__)[-1]
            result = Result.failure(f"{type(exc).__name__}: {exc} (at {last.filename}:{last.lineno})")
        result.eval_seconds = round(time.perf_counter() - start, 4)
        result.worker = dict(self.worker)
        return result
