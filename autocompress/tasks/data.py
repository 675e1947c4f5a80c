"""A task's data: read once from its dataset, resized, converted and subsampled as its spec says."""

from __future__ import annotations

import time

import torch
from torch import nn

from autocompress.errors import TaskError
from autocompress.tasks.spec import DataSplits, TaskSpec, dataset_fn


def load_data(spec: TaskSpec, cache: DataCache | None = None) -> DataSplits:
    """The task's splits, resized, converted and subsampled as the spec says.

    ``cache`` keeps the last spec's splits (``CACHE`` unless another is given): validating a
    search and building its task read the data once (a CIFAR or ImageFolder read takes seconds
    to minutes). The splits are shared: callers do not modify them.
    """
    return (cache or CACHE).get(spec.resolved())


class DataCache:
    """The splits of the last spec read, handed out shared."""

    def __init__(self) -> None:
        self._spec: TaskSpec | None = None
        self._data: DataSplits | None = None
        self.read_seconds = 0.0  # how long the last read took

    def get(self, spec: TaskSpec) -> DataSplits:
        if self._data is None or spec != self._spec:
            start = time.monotonic()
            self._data, self._spec = read_data(spec), spec
            self.read_seconds = time.monotonic() - start
        return self._data

    def clear(self) -> None:
        self._spec = self._data = None


CACHE = DataCache()


def read_data(spec: TaskSpec) -> DataSplits:
    """Read a resolved spec's splits from its dataset, uncached."""
    assert spec.dataset is not None, "read_data takes a resolved spec"
    data = dataset_fn(spec.dataset)(spec)
    data = _reshape_images(data, spec.image_size, spec.channels)
    gen = torch.Generator().manual_seed(spec.seed)

    def subset(x: torch.Tensor, y: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if limit is None or limit >= len(x):
            return x, y
        idx = torch.randperm(len(x), generator=gen)[:limit]
        return x[idx], y[idx]

    x_train, y_train = subset(data.x_train, data.y_train, spec.max_train_samples)
    x_val, y_val = subset(data.x_val, data.y_val, spec.max_eval_samples)
    x_test, y_test = subset(data.x_test, data.y_test, spec.max_eval_samples)
    num_classes = data.num_classes
    if spec.num_classes is not None:
        seen = int(max(int(y.max()) for y in (y_train, y_val, y_test) if len(y))) + 1
        if spec.num_classes < seen:
            raise TaskError(
                f"task.num_classes is {spec.num_classes} but dataset '{spec.dataset}' has labels up to {seen - 1}: "
                f"set num_classes to at least {seen} or leave it out"
            )
        num_classes = spec.num_classes
    return DataSplits(x_train, y_train, x_val, y_val, x_test, y_test, num_classes)


def _reshape_images(data: DataSplits, size: int | None, channels: int | None) -> DataSplits:
    if size is None and channels is None:
        return data
    if len(data.input_shape) != 3:
        raise TaskError(f"task.image_size and task.channels apply to images (C, H, W), not inputs of shape {data.input_shape}: remove them")

    def convert(x: torch.Tensor) -> torch.Tensor:
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if channels is not None and x.shape[1] != channels:
            if channels == 1:
                x = x.mean(dim=1, keepdim=True)
            elif x.shape[1] == 1:
                x = x.expand(-1, channels, -1, -1).contiguous()
            else:
                raise TaskError(f"cannot turn {x.shape[1]}-channel images into {channels} channels: set task.channels to 1 or 3")
        return x

    return DataSplits(convert(data.x_train), data.y_train, convert(data.x_val), data.y_val, convert(data.x_test), data.y_test, data.num_classes)


def describe_data(spec: TaskSpec, data: DataSplits, seconds: float) -> str:
    """``fashion-mnist from /usr/share/...: 54000 train / 6000 validation / 10000 test inputs of
    1x28x28, 10 classes (2.1 s)``: what a search read, and how long it took."""
    spec = spec.resolved()
    where = f" from {spec.data_root}" if spec.data_root else ""
    shape = "x".join(map(str, data.input_shape))
    return (
        f"{spec.dataset}{where}: {len(data.y_train)} train / {len(data.y_val)} validation / {len(data.y_test)} test inputs "
        f"of {shape}, {data.num_classes} classes ({seconds:.1f} s)"
    )
