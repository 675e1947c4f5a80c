"""Custom tasks: ``task.model: package.module:function`` names a function of yours.

The protocol (see ``examples/custom_task.py``): the function takes no required arguments and
returns either

* a trained ``nn.Module`` (then ``task.dataset`` names the data), or
* a mapping (or an object with these attributes) holding ``model`` and the data splits
  ``train``, ``val`` and ``test``, each a ``DataLoader`` (or any iterable of ``(inputs, labels)``
  batches) or an ``(inputs, labels)`` pair of tensors; ``num_classes`` is optional.

or a mapping that follows the task protocol (split factories opened on the workers, your
own loss and metric with its direction, an example input): see
:mod:`autocompress.tasks.protocol`.

The model's own weights are the baseline: it is never retrained (``task.weights`` still replaces
them when given). Splits are read once, on the driver, into tensors that travel to the workers
through Ray. The function runs once per search, on the driver.

Everywhere else (workers, ``layers``, ``export``, ``autocompress.load``) the architecture comes
from the build hook ``task.build: package.module:function``: a function of no arguments that
returns the untrained architecture, cheap to call (no data, no training). Without a hook, those
places call the task function again, training included. The hook's module must be importable
on the workers (the driver's folders are put on their path; on a multi-node cluster ship it with
Ray's ``runtime_env``). Modules are imported from the current folder and from the folder of the
study config that names them.
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from autocompress.errors import TaskError
from autocompress.tasks.protocol import OPTIONAL_SPLITS, PROTOCOL_KEYS, TaskProtocol, from_parts, is_protocol
from autocompress.tasks.spec import DATASETS, MODELS, DataSplits, ModelEntry, TaskSpec, state_mismatch

_SPLITS = ("train", "val", "test")
IMPORT_PATHS: list[str] = []  # folders added to sys.path for custom tasks; they travel to workers
# Task functions handed over in memory (``autocompress.search(task=...)``), by name
# ``python:NAME``: they exist in the driver's process only, and their protocol carries the
# model's architecture to the workers.
IN_MEMORY: dict[str, Callable[[], Any]] = {}


def register_in_memory(name: str, function: Callable[[], Any]) -> str:
    """``python:NAME`` for a task function held in memory (replacing an earlier one of that name)."""
    target = f"python:{name}"
    if IN_MEMORY.get(target) is not function:
        IN_MEMORY[target] = function
        call_task_function.cache_clear()
        _protocol.cache_clear()
    return target


def add_import_path(folder: str) -> None:
    folder = os.path.abspath(folder)
    if folder not in IMPORT_PATHS:
        IMPORT_PATHS.append(folder)
    if folder not in sys.path:
        sys.path.append(folder)


def is_custom(name: str | None) -> bool:
    return name is not None and ":" in name and not name.startswith("torchvision:")


def _function(target: str, key: str) -> Callable[[], Any]:
    """Import ``module:function`` (named by config key ``key``) without calling it."""
    if target in IN_MEMORY:
        return IN_MEMORY[target]
    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name or ":" in function_name:
        raise TaskError(f"'{target}' is not module:function ({key}): write it as package.module:function")
    add_import_path(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001  (an import can fail in any way)
        raise TaskError(
            f"cannot import '{module_name}' for {key} '{target}' ({type(exc).__name__}: {exc}): "
            "check the module name and that it is importable from the current folder"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise TaskError(f"module '{module_name}' has no function '{function_name}' ({key} '{target}'): check the name")
    return function


@functools.lru_cache(maxsize=8)
def call_task_function(target: str) -> tuple[nn.Module, dict[str, Any] | None]:
    """Import ``module:function``, call it once per process, check what it returned."""
    function = _function(target, "task.model")
    try:
        returned = function()
    except Exception as exc:  # noqa: BLE001
        raise TaskError(f"task function '{target}' failed ({type(exc).__name__}: {exc}): fix the function") from None
    if isinstance(returned, nn.Module):
        return returned.eval(), None
    keys = ("model", *_SPLITS, "num_classes", *OPTIONAL_SPLITS, *PROTOCOL_KEYS)
    parts = returned if isinstance(returned, dict) else {k: getattr(returned, k) for k in keys if hasattr(returned, k)}
    if not isinstance(parts.get("model"), nn.Module):
        raise TaskError(
            f"task function '{target}' returned {type(returned).__name__}: it must return an nn.Module, or a mapping "
            "with 'model' (an nn.Module) and 'train', 'val', 'test' data"
        )
    return parts["model"].eval(), parts


@functools.lru_cache(maxsize=8)
def _protocol(target: str) -> TaskProtocol | None:
    model, parts = call_task_function(target)
    if parts is None or not is_protocol(parts):
        return None
    protocol = from_parts(parts, f"task function '{target}'")
    if target in IN_MEMORY:  # the workers cannot call it: the architecture travels with the protocol
        protocol.architecture = Architecture(model)
    return protocol


class Architecture:
    """A picklable factory of fresh copies of a model (its weights are loaded after)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(model).cpu().eval()

    def __call__(self, num_classes: Any = None, input_shape: Any = None) -> nn.Module:
        return copy.deepcopy(self.model)


def task_protocol(spec: TaskSpec) -> TaskProtocol | None:
    """The protocol of a user's task whose function returns split factories, loss or metric
    (see :mod:`autocompress.tasks.protocol`); None for every other task. Calls the task
    function (once per process) but opens no data."""
    if not is_custom(spec.model):
        return None
    protocol = _protocol(spec.model)
    if protocol is not None and spec.dataset not in (None, spec.model):
        raise TaskError(
            f"task.dataset is '{spec.dataset}' but task function '{spec.model}' returns its own splits: "
            "remove task.dataset (the function's splits are the data)"
        )
    return protocol


def _model(target: str) -> ModelEntry:
    def factory(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        return copy.deepcopy(call_task_function(target)[0])  # fresh module each time; shapes checked by build_task

    has_data = call_task_function(target)[1] is not None
    return ModelEntry(factory, default_dataset=target if has_data else None, description=f"custom task {target}", trained=True)


MODELS.register_family("")(_model)


def build_hook(target: str) -> Callable[..., nn.Module]:
    """The ``task.build`` function as an architecture factory ``(num_classes=, input_shape=)``:
    the shapes are the task's, so the hook itself takes no arguments."""
    function = _function(target, "task.build")

    def factory(num_classes: int | None = None, input_shape: tuple[int, ...] | None = None) -> nn.Module:
        try:
            model = function()
        except Exception as exc:  # noqa: BLE001
            raise TaskError(f"build hook '{target}' failed ({type(exc).__name__}: {exc}) (task.build): fix the function") from None
        if not isinstance(model, nn.Module):
            raise TaskError(f"build hook '{target}' returned {type(model).__name__} (task.build): it must return the untrained nn.Module")
        return model

    return factory


def architecture(spec: TaskSpec) -> Callable[..., nn.Module] | None:
    """What rebuilds a user's architecture: the build hook when the spec names one, else the task
    function's own model (which runs the function, training included, once per process); None
    for built-in and torchvision models, which a file's header may name."""
    if spec.build is not None:
        return build_hook(spec.build)
    if spec.model in IN_MEMORY:
        protocol = _protocol(spec.model)
        if protocol is not None and protocol.architecture is not None:
            return protocol.architecture
    return MODELS.get(spec.model).factory if is_custom(spec.model) else None


def check_build(spec: TaskSpec, model: nn.Module) -> None:
    """The hook must build the architecture of the task's model: the same state_dict keys and
    shapes, so the baseline's weights load into it. Mismatches are named key by key."""
    if spec.build is None:
        return
    built = build_hook(spec.build)().state_dict()
    expected = model.state_dict()
    missing, extra, wrong = state_mismatch(expected, built)
    if wrong:
        k = wrong[0]
        problem = f"'{k}' has shape {tuple(built[k].shape)}, the task's model has {tuple(expected[k].shape)}"
    elif missing or extra:
        problem = f"'{(missing or extra)[0]}' is {'missing from' if missing else 'extra in'} what it builds"
    else:
        return
    raise TaskError(
        f"build hook '{spec.build}' does not build the task's architecture ({problem}) (task.build): "
        f"return the same model class as '{spec.model}', untrained"
    )


def _tensors(split: Any, target: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(split, (tuple, list)) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split):
        x, y = split
    else:
        try:
            batches = [(torch.as_tensor(x), torch.as_tensor(y)) for x, y in split]
        except (TypeError, ValueError) as exc:
            raise TaskError(
                f"split '{name}' of task '{target}' is not a DataLoader of (inputs, labels) batches or an (inputs, labels) pair ({exc}): fix what the function returns"
            ) from None
        if not batches:
            raise TaskError(f"split '{name}' of task '{target}' is empty: give it at least one batch")
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    if len(x) != len(y) or y.dim() != 1 or y.dtype.is_floating_point:
        raise TaskError(
            f"split '{name}' of task '{target}' has inputs {tuple(x.shape)} and labels {tuple(y.shape)} ({y.dtype}): "
            "labels must be one integer class per input"
        )
    return x.float(), y.long()


def _dataset(target: str) -> Any:
    def load(spec: TaskSpec) -> DataSplits:
        _, parts = call_task_function(target)
        if parts is None:
            raise TaskError(f"task function '{target}' returns only a model, so it has no data (task.dataset): name a dataset")
        if is_protocol(parts):  # a bug if reached: protocol tasks never read data on the driver
            raise TaskError(f"task function '{target}' returns split factories: they are opened on the workers, never read whole")
        missing = [s for s in _SPLITS if parts.get(s) is None]
        if missing:
            raise TaskError(f"task function '{target}' returned no '{missing[0]}' split: return train, val and test data")
        (x_train, y_train), (x_val, y_val), (x_test, y_test) = (_tensors(parts[s], target, s) for s in _SPLITS)
        num_classes = parts.get("num_classes") or int(max(y_train.max(), y_val.max(), y_test.max())) + 1
        return DataSplits(x_train, y_train, x_val, y_val, x_test, y_test, int(num_classes))

    call_task_function(target)  # fail early on a bad name
    return load


DATASETS.register_family("")(_dataset)
