"""The evaluator: plan -> compress -> fine-tune -> measure -> Result.

Runs inside a worker (a Ray actor or the driver process for ``--workers 0``). It never touches the
study storage: it receives a plan and returns a plain :class:`~autocompress.plan.Result`.
Fine-tuning is in ``finetuning``, scoring in ``scoring``; this room packs, deploys and times.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from autocompress import compress
from autocompress.artifact import pack
from autocompress.config import FinetuneConfig
from autocompress.deploy.target import DeployConfig
from autocompress.deploy.timing import DeviceLock, Timing, device_key, time_alone, time_paired
from autocompress.devices import resolve_device
from autocompress.errors import AutocompressError
from autocompress.fidelity import NO_REPORTING, Reporting, Rung
from autocompress.finetuning import finetune, labelled_batch
from autocompress.kernels import count_macs
from autocompress.plan import CompressionPlan, Result
from autocompress.scoring import Scorer
from autocompress.tasks import DataSplits, Task
from autocompress.tasks.protocol import to_device

__all__ = ["Evaluator", "FinetuneConfig"]


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
        self._remote = RemoteTimer(timer)  # hardware in the loop: the timing actor on the target node
        self._labelled: Any = None  # what gradient-based importance ranks with, once
        self.scorer = Scorer(self.task, lambda device: self.lock(device).shared)

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

    def _baseline_form(self) -> tuple[Any, bytes]:
        if self._baseline is None:
            model = self._model().cpu()
            packed = pack(model, CompressionPlan(), self.task.artifact_task(), compress.structure(model))
            deployed = self.deploy(model, CompressionPlan())
            self._baseline = (deployed, deployed.onnx if deployed.onnx is not None else packed.data)
        return self._baseline

    def _time(self, deployed: Any, blob: bytes, alone: bool) -> tuple[Timing, str]:
        """Alone (the baseline) or paired with the baseline; here or on the remote timer."""
        if self.timer is not None:
            return self._remote.time(blob, None if alone else self._baseline_form()[1])
        cfg = self.deploy_config
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
        packed = pack(model, plan, self.task.artifact_task(), compress.structure(model))
        macs = count_macs(model, to_device(self.example, torch.device("cpu")))
        weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
        params = sum(p.numel() for p in model.parameters())
        nonzeros = sum(int(torch.count_nonzero(w)) for w in weights)
        deployed = self.deploy(model, plan)
        scored = self.scorer.deployed(deployed, self.target)
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
            latency_rounds=timing.rounds,
            latency_seconds=round(timing.window[1] - timing.window[0], 3),
            latency_others_cores=timing.others_cores,
            latency_backend=deployed.backend,
            latency_node=node,
            onnx_bytes=len(deployed.onnx) if deployed.onnx is not None else None,
            params=params,
            nonzeros=nonzeros,
            macs=macs,
            per_layer=packed.rows,
            windows={"timing": [list(timing.window)], "timing_device": device_key(str(self.target)), "busy": busy},
            artifact=packed.data,
            onnx=deployed.onnx or b"",
        )

    def baseline(self) -> Result:
        """The uncompressed model measured on the same target as every trial, timed alone: the
        reference that trials' paired ratios scale (with a protocol task's chance level)."""

        def run() -> Result:
            result = self.measure(self._model(), CompressionPlan(), alone=True)
            result.chance_score = self.scorer.chance()
            return result

        return guarded(run, self.worker)

    def _compressed(self, plan: CompressionPlan) -> nn.Module:
        """A fresh copy of the model compressed by ``plan`` (``apply`` is deterministic)."""
        example = self.example if self.protocol is not None else self.task.data.x_val[:2]  # type: ignore[union-attr]
        if self._labelled is None:  # the same for every trial
            self._labelled = labelled_batch(self.task, self.device or torch.device("cpu"))
        return compress.apply(self._model(), plan, example=example, calibration=self._labelled)

    def one_shot(self, plan: CompressionPlan, timed: bool) -> dict[str, Any]:
        """A sensitivity probe as plain data: ``shot``'s score, size, paired latency ratio (None
        when not timed), the deployed form's score where it was built (the check that the torch
        form agrees) and the probe's seconds."""
        start = time.perf_counter()
        got = shot(self, plan, timed, check=timed)
        return {
            "accuracy": got.score,
            "size_bytes": got.size_bytes,
            "latency_ratio": got.timing[0].ratio if got.timing else None,
            "deployed_accuracy": got.deployed_score,
            "seconds": round(time.perf_counter() - start, 4),
        }

    def rung_score(self, model: nn.Module) -> float:
        """Validation score of the model being fine-tuned, one shared turn on the device."""
        return self.scorer.in_training(model, self.device or torch.device("cpu"))

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
                early = shot(self, plan, timed=True, scored=False)
                size, timed = early.size_bytes, early.timing
            model = self._compressed(plan)
            if self.finetune_config.distill and self._teacher is None:
                self._teacher = self._model().eval()
            rungs: list[Rung] = []

            def at_rung(step: int | None) -> bool:
                if step is None:
                    return report(None)  # type: ignore[misc]
                was_training = model.training
                rung = Rung(step, self.rung_score(model), size, timed[0].ratio if timed else None)
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
                return stopped_result(rungs, size, timed, log, steps)
            result = self.measure(model, plan, timed=timed)
            result.finetune_log, result.finetune_steps, result.rungs = log, steps, [r.to_dict() for r in rungs]
            return result

        return guarded(run, self.worker)


@dataclass(frozen=True)
class Shot:
    """A plan's model as compression leaves it, before any fine-tuning."""

    score: float | None  # validation score in torch (None when not scored)
    size_bytes: int  # packed
    timing: tuple[Timing, str] | None  # paired with the baseline, and the node that timed it
    deployed_score: float | None  # the deployed form's validation score, when checked


def shot(evaluator: Evaluator, plan: CompressionPlan, timed: bool, scored: bool = True, check: bool = False) -> Shot:
    """The plan's model before fine-tuning, measured on the cheapest form that gives the deployed
    numbers: its validation score in torch (when ``scored``), with int8 activations simulated
    where the target runs integer kernels (no export, no calibration), and its packed size. When
    ``timed`` its deployed form is built and timed paired with the baseline (``check``: and
    scored, to check that the torch form agrees). Fine-tuning keeps the structure (masks, ranks,
    bit-widths, removed channels), so that latency is also the finished model's. A model of its
    own (``apply`` is deterministic): packing bakes in place, and a deep copy of a parametrized
    module would share its parametrization."""
    from autocompress.deploy.qat import int8_activations

    cfg = evaluator.deploy_config
    model = evaluator._compressed(plan)
    score = None
    if scored:
        simulate = cfg.precision == "int8" and cfg.runtime != "torch"
        with int8_activations(model, plan) if simulate else contextlib.nullcontext():
            score = evaluator.rung_score(model)
    model = model.eval().cpu()
    packed = pack(model, plan, evaluator.task.artifact_task(), compress.structure(model))
    timing = deployed_score = None
    if timed:
        deployed = evaluator.deploy(model, plan)
        if check:
            deployed_score = evaluator.scorer.deployed(deployed, evaluator.target)["accuracy"]
        timing = evaluator._time(deployed, deployed.onnx if deployed.onnx is not None else packed.data, alone=False)
    return Shot(score, len(packed.data), timing, deployed_score)


def stopped_result(rungs: list[Rung], size: int, timed: tuple[Timing, str] | None, log: list[float], steps: int) -> Result:
    """What a trial stopped at a rung reached: its last rung's score, and size and latency when
    they were measured before fine-tuning."""
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


class RemoteTimer:
    """A remote timing actor (``put_baseline`` / ``time``): the baseline's file sent once, then
    each candidate's timed there, paired with it."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self._sent = False  # the actor holds the baseline

    def time(self, blob: bytes, baseline: bytes | None) -> tuple[Timing, str]:
        """``blob`` timed alone (``baseline`` None) or paired with the baseline's file; the node it ran on."""
        import ray

        digest = None
        if baseline is not None:
            digest = hashlib.sha256(baseline).hexdigest()
            if not self._sent:
                ray.get(self.actor.put_baseline.remote(digest, baseline))
                self._sent = True
        got = ray.get(self.actor.time.remote(digest, blob))
        node = got.pop("node")
        got["window"] = tuple(got["window"])
        return Timing(**got), node


def guarded(fn: Callable[[], Result], worker: dict[str, Any]) -> Result:
    """``fn``'s Result, any failure turned into ``Result.error`` (a failing trial never takes the
    search down), with its seconds and the worker it ran on."""
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
    result.worker = dict(worker)
    return result
