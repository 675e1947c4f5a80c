"""The evaluator: plan -> compress -> fine-tune -> measure -> Result.

Runs inside a worker (a Ray actor or the driver process for ``--workers 0``). It never touches the
study storage: it receives a plan and returns a plain :class:`~autocompress.plan.Result`.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from autocompress import compress
from autocompress.errors import AutocompressError
from autocompress.latency import LatencyConfig, count_macs, measure_latency
from autocompress.plan import CompressionPlan, Result
from autocompress.artifact import pack
from autocompress.size import layer_rows
from autocompress.tasks import DataSplits, Task, evaluate_accuracy

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when this process sees one (a Ray actor sees one only when it reserved
    it with ``--gpus-per-worker``), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible to this process"
        raise AutocompressError(f"device cuda was asked for (--device) but {why} on {socket.gethostname()}: use --device cpu or auto")
    return torch.device(name)


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = field(default=150, metadata={"min": 0})  # optimizer steps after compression; 0 skips
    lr: float = field(default=5e-4, metadata={"min": 0.0, "max": 1.0})  # Adam, cosine-annealed to 0
    batch_size: int = field(default=64, metadata={"min": 1})
    log_every: int = field(default=10, metadata={"min": 1})  # record the loss every this many steps
    # Knowledge distillation from the uncompressed baseline: this share of the loss is the KL
    # divergence to its softened outputs (Hinton et al. 2015); 0 trains on the labels alone.
    distill: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    temperature: float = field(default=4.0, metadata={"min": 1.0})


def finetune(model: nn.Module, task: Task, config: FinetuneConfig, seed: int = 0, teacher: nn.Module | None = None) -> list[float]:
    """Train the compressed model briefly; masks and quantizers stay attached. Returns the loss log.

    With ``config.distill > 0`` and a ``teacher`` (the baseline), the loss mixes the labels'
    cross-entropy with the KL divergence to the teacher's outputs at ``config.temperature``.
    """
    if config.steps <= 0:
        return []
    distill = config.distill if teacher is not None else 0.0
    temp = config.temperature
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)  # same plan, same result
    x, y = task.data.x_train, task.data.y_train
    log: list[float] = []
    model.train()
    for step in range(config.steps):
        idx = torch.randint(len(x), (config.batch_size,), generator=gen)
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
        if step % config.log_every == 0 or step == config.steps - 1:
            log.append(round(loss.item(), 5))
    model.eval()
    return log


class Evaluator:
    """Builds and measures compressed variants of one task's baseline."""

    def __init__(self, task: Task, finetune: FinetuneConfig, latency: LatencyConfig, device: str = "cpu") -> None:
        self.finetune_config = finetune
        self.latency_config = latency
        try:
            self.device: torch.device | None = resolve_device(device)
            self.device_error = ""
        except AutocompressError as exc:  # every trial fails with the reason; the search stops cleanly
            self.device, self.device_error = None, str(exc)
        if self.device is not None and self.device.type != "cpu":
            task = replace(task, data=DataSplits(**{k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in asdict(task.data).items()}))
        self.task = task
        self.example = task.data.x_val[: latency.batch_size]
        self.worker = {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.device)}
        self._teacher: nn.Module | None = None  # the baseline, for distillation: built once

    def _model(self) -> nn.Module:
        if self.device is None:
            raise AutocompressError(self.device_error)
        return self.task.build_model().to(self.device)

    def measure(self, model: nn.Module, plan: CompressionPlan) -> Result:
        """Accuracy, packed size, latency and counts of a (possibly compressed) model.

        Packing bakes the model in place; latency is then measured on that deployable form.
        """
        data = self.task.data
        model.eval()
        accuracy = evaluate_accuracy(model, data.x_val, data.y_val)
        device = next(model.parameters()).device
        model.cpu()  # the packer reads host memory
        rows = layer_rows(model)
        packed = pack(model, plan, self.task.artifact_task(), compress.structure(model))
        for row in rows:
            row["bytes"] = packed.per_layer.get(row["layer"], 0)
        model.to(device)
        latency_ms, cv, backend = measure_latency(model, self.example, self.latency_config, plan)
        weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
        return Result(
            accuracy=accuracy,
            size_bytes=len(packed.data),
            latency_ms=latency_ms,
            latency_cv=cv,
            latency_backend=backend,
            params=sum(p.numel() for p in model.parameters()),
            nonzeros=sum(int(torch.count_nonzero(w)) for w in weights),
            macs=count_macs(model, self.example),
            per_layer=rows,
            artifact=packed.data,
        )

    def baseline(self) -> Result:
        """The uncompressed model measured the same way as every trial (its fp32 artifact)."""
        return self._timed(lambda: self.measure(self._model(), CompressionPlan()))

    def evaluate(self, plan: CompressionPlan) -> Result:
        """Compress, fine-tune and measure; any failure becomes ``Result.error``, never an exception."""

        def run() -> Result:
            model = compress.apply(self._model(), plan, example=self.task.data.x_val[:2])
            if self.finetune_config.distill and self._teacher is None:
                self._teacher = self._model().eval()
            log = finetune(model, self.task, self.finetune_config, seed=self.task.spec.seed, teacher=self._teacher)
            result = self.measure(model, plan)
            result.finetune_log = log
            return result

        return self._timed(run)

    def _timed(self, fn) -> Result:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            result = fn()
            if not math.isfinite(result.accuracy) or not math.isfinite(result.latency_ms):
                result.error = f"non-finite measurement (accuracy={result.accuracy}, latency={result.latency_ms})"
        except AutocompressError as exc:
            result = Result.failure(str(exc))
        except torch.OutOfMemoryError as exc:
            result = Result.failure(f"out of memory: {exc}")
        except Exception as exc:  # a failing trial must never take the search down
            last = traceback.extract_tb(exc.__traceback__)[-1]
            result = Result.failure(f"{type(exc).__name__}: {exc} (at {last.filename}:{last.lineno})")
        result.eval_seconds = round(time.perf_counter() - start, 4)
        result.worker = dict(self.worker)
        return result
