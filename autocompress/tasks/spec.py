"""Task specs and the registries they name: models, datasets, and the splits a dataset gives."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from autocompress.errors import RegistryError, TaskError
from autocompress.registry import Registry

T = TypeVar("T")


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

    factory: Callable[..., nn.Module]  # (num_classes, input_shape) -> module
    default_dataset: str | None  # None: the config must name one
    description: str = ""
    trained: bool = False  # the factory's weights are the baseline (a user's model): never train
    input_shape: tuple[int, ...] = (1, 8, 8)  # what it is built for when no data is at hand (tests)


MODELS: Registry[ModelEntry] = Registry("model")
DATASETS: Registry[Callable[[TaskSpec], DataSplits]] = Registry("dataset")  # (spec) -> DataSplits


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to rebuild a task anywhere: names and numbers, no objects."""

    model: str = "digits-cnn"  # a name in MODELS, torchvision:NAME, or package.module:function
    dataset: str | None = None  # a name in DATASETS or module:function; None takes the model's default
    num_classes: int | None = field(default=None, metadata={"min": 2, "max": 1 << 17})  # None: the dataset's
    weights: str | None = None  # the trained baseline's state_dict (torch.save); None trains one
    data_root: str | None = None  # folder of a file-based dataset (MNIST, CIFAR, ImageFolder)
    download: bool = False  # let torchvision fetch a missing dataset into data_root
    image_size: int | None = field(default=None, metadata={"min": 4, "max": 8192})  # resize images to this square
    channels: int | None = field(default=None, metadata={"choices": (1, 3)})  # gray <-> RGB
    max_train_samples: int | None = field(default=None, metadata={"min": 1, "max": 1 << 40})  # a seeded subset
    max_eval_samples: int | None = field(default=None, metadata={"min": 1, "max": 1 << 40})  # per val/test split
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1})  # data split and baseline initialisation
    train_epochs: int = field(default=40, metadata={"min": 1, "max": 100_000})  # baseline training, when not cached
    train_lr: float = field(default=2e-3, metadata={"min": 0.0, "max": 10.0})
    batch_size: int = field(default=64, metadata={"min": 1, "max": 1 << 16})
    # A user's model: a cheap function returning its untrained architecture (package.module:function),
    # so workers, `layers`, `export` and `load` never run the task function again.
    build: str | None = None
    # One input's shape (no batch): lets `layers` list a build hook's model without any data.
    input_shape: tuple[int, ...] | None = field(default=None, metadata={"min": 1, "max": 1 << 16})

    def resolved(self) -> TaskSpec:
        """The same spec with the dataset filled in, after checking both names exist."""
        entry = model_entry(self.model)
        dataset = self.dataset or entry.default_dataset
        if dataset is None:
            raise TaskError(f"model '{self.model}' has no data of its own (task.dataset): name a dataset, e.g. {', '.join(DATASETS.names())}")
        dataset_fn(dataset)
        return TaskSpec(**{**asdict(self), "dataset": dataset})

    def key(self) -> str:
        """A short stable hash: the cache key of the trained baseline."""
        # How the architecture is rebuilt elsewhere does not change the trained weights.
        weights = {k: v for k, v in asdict(self.resolved()).items() if k not in ("build", "input_shape")}
        blob = json.dumps(weights, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (a shape as a list), as stored in a study."""
        data = asdict(self)
        if self.input_shape is not None:
            data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        """The spec a study stored; keys added since it was written take their defaults."""
        shape = data.get("input_shape")
        return cls(**{**data, "input_shape": tuple(shape) if shape is not None else None})


def state_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """How ``given`` differs from ``expected`` (state_dicts): keys missing, keys extra, keys whose
    shape differs, each in its dict's order."""
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    wrong = [k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    return missing, extra, wrong


def lookup(registry: Registry[T], name: str) -> T:
    try:
        return registry.get(name)
    except RegistryError as exc:  # already user-facing; re-home it as a TaskError
        raise TaskError(str(exc)) from None


def model_entry(name: str) -> ModelEntry:
    return lookup(MODELS, name)


def dataset_fn(name: str) -> Callable[[TaskSpec], DataSplits]:
    return lookup(DATASETS, name)
