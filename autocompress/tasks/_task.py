from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from autocompress.errors import RegistryError, TaskError
from autocompress.registry import Registry

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass
class DataSplits:
    """Train/validation/test tensors: images ``(N, C, H, W)`` float32 and integer labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: a factory and the dataset it is meant for."""

    factory: Callable[..., nn.Module]  # (num_classes, input_shape) -> untrained module
    default_dataset: str
    description: str = ""


MODELS: Registry[ModelEntry] = Registry("model")
DATASETS: Registry[Callable[[int], DataSplits]] = Registry("dataset")  # (seed) -> DataSplits


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to rebuild a task anywhere: names and numbers, no objects."""

    model: str = "digits-cnn"  # a name in MODELS
    dataset: str | None = None  # a name in DATASETS; None takes the model's default
    seed: int = 0  # data split and baseline initialisation
    train_epochs: int = field(default=40, metadata={"min": 1})  # baseline training, when not cached
    train_lr: float = field(default=2e-3, metadata={"min": 0.0})
    batch_size: int = field(default=64, metadata={"min": 1})

    def resolved(self) -> TaskSpec:
        """The same spec with the dataset filled in, after checking both names exist."""
        entry = _model_entry(self.model)
        dataset = self.dataset or entry.default_dataset
        _dataset_fn(dataset)
        return TaskSpec(**{**asdict(self), "dataset": dataset})

    def key(self) -> str:
        """A short stable hash: the cache key of the trained baseline."""
        blob = json.dumps(asdict(self.resolved()), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lookup(registry: Registry[T], name: str) -> T:
    try:
        return registry.get(name)
    except RegistryError as exc:  # already user-facing; re-home it as a TaskError
        raise TaskError(str(exc)) from None


def _model_entry(name: str) -> ModelEntry:
    return _lookup(MODELS, name)


def _dataset_fn(name: str) -> Callable[[int], DataSplits]:
    return _lookup(DATASETS, name)


@torch.inference_mode()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        correct += int((logits.argmax(dim=1) == y[i : i + batch_size]).sum())
    return correct / max(1, len(x))


@dataclass
class Task:
    """A trained baseline model and its data splits."""

    spec: TaskSpec
    data: DataSplits
    state_dict: dict[str, torch.Tensor]
    baseline: dict[str, Any] = field(default_factory=dict)  # accuracy etc., filled by the driver

    def build_model(self) -> nn.Module:
        """A fresh copy of the baseline model with its trained weights, in eval mode."""
        entry = _model_entry(self.spec.model)
        model = entry.factory(num_classes=self.data.num_classes, input_shape=self.data.input_shape)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def artifact_task(self) -> dict[str, Any]:
        """What an artifact needs to rebuild the module: model name and shapes."""
        return {
            "model": self.spec.model,
            "dataset": self.spec.dataset,
            "num_classes": self.data.num_classes,
            "input_shape": list(self.data.input_shape),
        }

    def payload(self) -> dict[str, Any]:
        """Plain data for the Ray object store: spec, weights and tensors, no module."""
        return {"spec": self.spec.to_dict(), "data": asdict(self.data), "state_dict": self.state_dict}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Task:
        return cls(
            spec=TaskSpec(**payload["spec"]),
            data=DataSplits(**payload["data"]),
            state_dict=payload["state_dict"],
        )


def _train(model: nn.Module, data: DataSplits, spec: TaskSpec) -> None:
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.Adam(model.parameters(), lr=spec.train_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.train_epochs)
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.x_train)
    for _ in range(spec.train_epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, spec.batch_size):
            idx = order[i : i + spec.batch_size]
            opt.zero_grad()
            loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
        sched.step()
    model.eval()


def model_skeleton(spec: TaskSpec, batch: int = 2) -> tuple[nn.Module, torch.Tensor]:
    """The task's model with random weights and a small batch of validation inputs, from one
    load of the data: enough to list, validate and trace its layers."""
    spec = spec.resolved()
    data = _dataset_fn(spec.dataset)(spec.seed)  # type: ignore[arg-type]
    model = _model_entry(spec.model).factory(num_classes=data.num_classes, input_shape=data.input_shape)
    return model, data.x_val[:batch]


def untrained_model(spec: TaskSpec) -> nn.Module:
    """The task's model with random weights."""
    return model_skeleton(spec)[0]


def example_input(spec: TaskSpec, batch: int = 2) -> torch.Tensor:
    """A small batch of the task's validation inputs (to trace a model)."""
    return model_skeleton(spec, batch)[1]


def build_task(spec: TaskSpec, cache_dir: str | Path = "studies/baselines") -> Task:
    """Load the data, then the cached baseline weights or train them (seconds for digits)."""
    spec = spec.resolved()
    data = _dataset_fn(spec.dataset)(spec.seed)  # type: ignore[arg-type]
    entry = _model_entry(spec.model)
    cache = Path(cache_dir) / f"{spec.model}-{spec.dataset}-{spec.key()}.pt"
    torch.manual_seed(spec.seed)
    model = entry.factory(num_classes=data.num_classes, input_shape=data.input_shape)
    if cache.is_file():
        model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
    else:
        log.info("training the baseline %s on %s (cached at %s)", spec.model, spec.dataset, cache)
        _train(model, data, spec)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(cache)  # a crash mid-write leaves no truncated cache behind
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Task(spec=spec, data=data, state_dict=state)
