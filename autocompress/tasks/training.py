"""A task's baseline: its model built and checked against the data, its weights from a
checkpoint, the model itself, the cache, or trained once (``trainer``); the :class:`Task`
workers receive, and how it travels to them."""

from __future__ import annotations

import copy
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.errors import TaskError
from autocompress.tasks.custom import IMPORT_PATHS, architecture, build_hook, check_build, is_custom, task_protocol
from autocompress.tasks.data import load_data
from autocompress.tasks.metrics import TOP1, MetricInfo
from autocompress.tasks.protocol import TaskProtocol, first_tensor, last_line
from autocompress.tasks.spec import DataSplits, TaskSpec, model_entry
from autocompress.tasks.trainer import Trainer, load_checkpoint, local_trainer, make_model, read_cached_state, train_baseline, trained_by_of


@dataclass
class Task:
    """A trained baseline model and its data: in-memory splits (``data``, built-in tasks) or the
    user's split factories, loss and metric (``protocol``), opened where the work runs."""

    spec: TaskSpec
    data: DataSplits | None
    state_dict: dict[str, torch.Tensor]
    baseline: dict[str, Any] = field(default_factory=dict)  # accuracy etc., filled by the driver
    trained_by: dict[str, Any] = field(default_factory=dict)  # where the baseline was trained (host, device, Ray node)
    protocol: TaskProtocol | None = None  # a protocol task's callables; then ``data`` is None

    @property
    def metric_info(self) -> MetricInfo:
        """The metric the first objective measures (top-1 accuracy for in-memory tasks)."""
        return self.protocol.metric.info() if self.protocol is not None else TOP1

    @property
    def num_classes(self) -> int | None:
        return self.data.num_classes if self.data is not None else (self.protocol.num_classes if self.protocol else None)

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.data is not None:
            return self.data.input_shape
        example = first_tensor(self.protocol.example_input if self.protocol else None)
        return tuple(example.shape[1:]) if example is not None else ()

    def build_model(self) -> nn.Module:
        """A fresh copy of the baseline model with its trained weights, in eval mode."""
        factory = (
            (self.protocol.architecture if self.protocol is not None else None) or architecture(self.spec) or model_entry(self.spec.model).factory
        )
        model = factory(num_classes=self.num_classes, input_shape=self.input_shape)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def artifact_task(self) -> dict[str, Any]:
        """What an artifact needs to rebuild the module: model name and shapes."""
        task: dict[str, Any] = {"model": self.spec.model, "dataset": self.spec.dataset, "input_shape": list(self.input_shape)}
        if self.num_classes is not None:
            task["num_classes"] = self.num_classes
        if self.protocol is not None:  # what a forward takes: an export from the header alone needs one float tensor
            example = self.protocol.example_input
            task["inputs"] = "structured"
            if isinstance(example, torch.Tensor):
                task["inputs"] = "float tensor" if example.is_floating_point() else "token ids"
        return task

    def payload(self) -> dict[str, Any]:
        """What a worker receives through the Ray object store: spec, weights and either the
        in-memory tensors or the protocol's callables (never data), no module."""
        # The driver's import folders travel too: a module:function model imports from them on a worker.
        return {
            "spec": self.spec.to_dict(),
            "data": asdict(self.data) if self.data is not None else None,
            "state_dict": self.state_dict,
            "import_paths": list(IMPORT_PATHS),
            # Pickled here, unpickled after the import folders are on the worker's path: the
            # task's functions pickle by reference to the user's module.
            "protocol": pickle_protocol(self.protocol) if self.protocol is not None else None,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Task:
        for folder in payload.get("import_paths", []):
            if folder not in sys.path and os.path.isdir(folder):
                sys.path.append(folder)
        data, protocol = payload["data"], payload.get("protocol")
        return cls(
            spec=TaskSpec.from_dict(payload["spec"]),
            data=DataSplits(**data) if data is not None else None,
            state_dict=payload["state_dict"],
            protocol=unpickle_protocol(protocol) if protocol is not None else None,
        )


def pickle_protocol(protocol: TaskProtocol) -> bytes:
    """The protocol's callables as bytes (cloudpickle: closures and lambdas by value, module
    functions by reference); a part that cannot be pickled is named with the fix."""
    import cloudpickle

    try:
        return cloudpickle.dumps(protocol)
    except Exception as exc:  # noqa: BLE001  (pickling fails in many ways)
        raise TaskError(
            f"{protocol.source} returned something that cannot be sent to the workers ({type(exc).__name__}: {exc}): "
            "return module-level functions or picklable objects for the splits, loss and metric (an open file or a "
            "database connection must be opened inside the split function)"
        ) from None


def unpickle_protocol(blob: bytes) -> TaskProtocol:
    """On a worker: the driver's protocol (what this search's own driver sent, never a file's)."""
    import cloudpickle

    try:
        protocol = cloudpickle.loads(blob)
    except Exception as exc:  # noqa: BLE001
        raise TaskError(
            f"the task's functions cannot be loaded on this worker ({type(exc).__name__}: {exc}): its module must be importable "
            "here (the config's folder is added to the path; on a cluster ship it with Ray's runtime_env)"
        ) from None
    if not isinstance(protocol, TaskProtocol):
        raise TaskError(f"the task payload holds {type(protocol).__name__}, not a task protocol")
    return protocol


def _checked_model(spec: TaskSpec) -> tuple[TaskSpec, DataSplits, nn.Module]:
    """The resolved spec, its data, and its model checked against the data, holding the
    checkpoint's weights when ``task.weights`` names one."""
    spec = spec.resolved()
    data = load_data(spec)
    model = make_model(spec, data)
    _check_output(model, data, spec)
    if spec.input_shape is not None and tuple(spec.input_shape) != tuple(data.input_shape):
        raise TaskError(
            f"task.input_shape is {list(spec.input_shape)} but dataset '{spec.dataset}' gives inputs of shape "
            f"{list(data.input_shape)}: set task.input_shape to {list(data.input_shape)} or remove it"
        )
    check_build(spec, model)
    if spec.weights is not None:
        load_checkpoint(model, spec.weights)
    return spec, data, model


def model_skeleton(spec: TaskSpec, batch: int = 2) -> tuple[nn.Module, torch.Tensor]:
    """The task's model (untrained unless the model brings its own weights) and a small batch
    of validation inputs (a protocol task's ``example_input``): enough to list, validate and
    trace it. A checkpoint that does not fit surfaces here, before anything is stored."""
    protocol = task_protocol(spec)
    if protocol is not None:
        return _protocol_model(spec, protocol), protocol.example_input
    _, data, model = _checked_model(spec)
    return model, data.x_val[:batch]


def layer_skeleton(spec: TaskSpec) -> tuple[nn.Module, torch.Tensor]:
    """Like :func:`model_skeleton`, without reading data: a registered model is built at its
    declared input shape (as resized or converted by the spec) with random inputs, so listing
    layers works before the data is in place. A user's ``module:function`` model comes with its
    own data and is built from it, unless a build hook and ``task.input_shape`` say what it is."""
    if spec.build is not None and spec.input_shape is not None:
        return build_hook(spec.build)(), torch.randn(2, *spec.input_shape)
    entry = model_entry(spec.model)
    if entry.trained:
        return model_skeleton(spec)
    channels, *size = entry.input_shape
    if spec.image_size is not None and len(size) == 2:
        size = [spec.image_size, spec.image_size]
    shape = (spec.channels or channels, *size)
    return entry.factory(num_classes=spec.num_classes or 10, input_shape=shape), torch.randn(2, *shape)


def untrained_model(spec: TaskSpec) -> nn.Module:
    """The task's model with random weights."""
    return model_skeleton(spec)[0]


def build_task(
    spec: TaskSpec, cache_dir: str | Path = "studies/baselines", say: Callable[[str], None] | None = None, trainer: Trainer | None = None
) -> Task:
    """Load the data, then the baseline weights: a checkpoint, the model's own, the cache, or
    train them (seconds for digits) through ``trainer`` (the search's: on a worker, on its
    device; by default here on the CPU). ``say`` receives a line on where the weights come from
    and, while training, one per epoch."""
    say = say or (lambda _line: None)
    torch.manual_seed(spec.seed)
    protocol = task_protocol(spec)
    if protocol is not None:
        model = _protocol_model(spec, protocol)
        weights = spec.weights or f"{spec.model}'s own"
        say(f"baseline weights: {weights}; data: opened on the workers ({', '.join(protocol.splits)}), never here")
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return Task(spec=spec.resolved(), data=None, state_dict=state, protocol=protocol)
    spec, data, model = _checked_model(spec)
    trained_by: dict[str, Any] = {}
    entry = model_entry(spec.model)
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{spec.model}-{spec.dataset}")
    # A task function's model trained further: its starting weights are part of what is cached.
    start = f"-{state_digest(model)}" if trains_own_model(spec) else ""
    cache = Path(cache_dir) / f"{safe_name}-{spec.key()}{start}.pt"
    if spec.weights is not None:
        say(f"baseline weights: {spec.weights}")
    elif entry.trained and not trains_own_model(spec):
        say(f"baseline weights: {spec.model}'s own")
    elif cache.is_file() and (cached := read_cached_state(cache, model)) is not None:
        model.load_state_dict(cached)
        say(f"baseline weights: trained before, cached at {cache}")
    else:
        trained_by = train_baseline(model, data, spec, cache, trainer or local_trainer(torch.device("cpu")), say)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cache.is_file() and not trained_by:
        trained_by = trained_by_of(cache)
    return Task(spec=spec, data=data, state_dict=state, trained_by=trained_by)


def trains_own_model(spec: TaskSpec) -> bool:
    """Whether autocompress trains a task function's model further: ``task.train_epochs`` set
    (never ignored) and no checkpoint given; otherwise the model is used as returned."""
    return is_custom(spec.model) and spec.weights is None and spec.train_epochs != TaskSpec().train_epochs


def state_digest(model: nn.Module) -> str:
    """A short digest of a model's weights."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _protocol_model(spec: TaskSpec, protocol: TaskProtocol) -> nn.Module:
    """A protocol task's model: the task function's own (its weights the baseline, unless
    ``task.weights`` replaces them), checked on its ``example_input`` and against the build hook."""
    from autocompress.tasks.custom import call_task_function
    from autocompress.tasks.metrics import call_model

    model = copy.deepcopy(call_task_function(spec.model)[0]).eval()
    check_build(spec, model)
    if spec.weights is not None:
        load_checkpoint(model, spec.weights)
    try:
        with torch.no_grad():
            call_model(model, protocol.example_input)
    except Exception as exc:  # noqa: BLE001  (any failure is a model/example mismatch)
        raise TaskError(
            f"the model of {protocol.source} rejects its example_input ({last_line(exc)}): "
            "return an example_input the model's forward takes (a tuple is passed as positional inputs, a mapping as keywords)"
        ) from None
    return model


def _check_output(model: nn.Module, data: DataSplits, spec: TaskSpec) -> None:
    """One forward pass on two validation inputs: the model must take them and give one logit per class."""
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.x_val[:2])
    except Exception as exc:  # noqa: BLE001  (any failure here is a model/data mismatch)
        raise TaskError(
            f"model '{spec.model}' fails on dataset '{spec.dataset}' inputs of shape {tuple(data.input_shape)} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): check task.image_size and task.channels"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != data.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TaskError(
            f"model '{spec.model}' gives outputs of shape {shape} but dataset '{spec.dataset}' has {data.num_classes} classes: "
            "the model must return (batch, num_classes) logits; set task.num_classes or fix the model"
        )
