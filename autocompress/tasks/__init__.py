"""Tasks: a model and its data, described by a small picklable spec.

A :class:`TaskSpec` names a model and a dataset from the registries below; :func:`build_task`
trains the baseline once (cached on disk, keyed by the spec) and returns a :class:`Task` that
workers rebuild from :meth:`Task.payload` without touching the filesystem.
"""

from autocompress.tasks import custom as _custom  # noqa: F401  (registers module:function tasks)
from autocompress.tasks import digits as _digits  # noqa: F401  (registers the built-ins)
from autocompress.tasks import vision as _vision  # noqa: F401  (torchvision models and datasets)
from autocompress.tasks import vit as _vit  # noqa: F401  (the built-in small ViT)
from autocompress.tasks.data import DataCache, load_data
from autocompress.tasks.metrics import correct_of, evaluate_accuracy
from autocompress.tasks.spec import DATASETS, MODELS, DataSplits, ModelEntry, TaskSpec
from autocompress.tasks.trainer import load_checkpoint
from autocompress.tasks.training import (
    Task,
    build_task,
    layer_skeleton,
    model_skeleton,
    untrained_model,
)

__all__ = [
    "DATASETS",
    "MODELS",
    "DataCache",
    "DataSplits",
    "ModelEntry",
    "Task",
    "TaskSpec",
    "build_task",
    "correct_of",
    "evaluate_accuracy",
    "layer_skeleton",
    "load_checkpoint",
    "load_data",
    "model_skeleton",
    "untrained_model",
]
