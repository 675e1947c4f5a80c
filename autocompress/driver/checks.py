"""Checks before anything starts: every user mistake in a config, its space, its deploy
target or its task turned into one line, before Ray, training or storage; then what data the
search will read, said once."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

from autocompress.config import StudyConfig
from autocompress.devices import resolve_device
from autocompress.errors import AutocompressError, ConfigError, SearchError, StorageError
from autocompress.fidelity import check_rungs
from autocompress.plan import TOP1, MetricInfo
from autocompress.space import SearchSpace, load_space
from autocompress.storage import check_url, mask_url, sqlite_path
from autocompress.tasks import TaskSpec, model_skeleton
from autocompress.tasks.custom import task_protocol
from autocompress.tasks.data import CACHE, describe_data, load_data


def check_ray_address(address: str | None, source: str = "--ray-address") -> None:
    """Fail fast on a Ray address nobody listens on (ray.init would wait a long time)."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    shown = mask_url(address)
    if "@" in host:
        raise SearchError(
            f"Ray address '{shown}' holds credentials ({source}): a Ray head takes host:port; use ray://user:password@host:port for Ray Client"
        )
    if not host or not port.isdigit():
        raise SearchError(f"Ray address '{shown}' is not host:port ({source}): e.g. 10.0.0.5:6379, or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SearchError(
            f"Ray address {shown} is unreachable ({reason}) ({source}): start the head with 'ray start --head' or fix the address"
        ) from None


def prepare(config: StudyConfig) -> SearchSpace:
    """Validate the task and resolve the space against the model, before training or storage."""
    check_url(config.storage)
    if config.storage.startswith("sqlite") and sqlite_path(config.storage) is None:
        raise StorageError(
            f"storage '{config.storage}' names no database file, so the search would live in memory and be lost when it ends "
            "(--storage / storage): name a file, e.g. sqlite:///studies/autocompress.db"
        )
    search = config.search
    check_rungs(search.pruner, search.rungs, config.finetune.steps, config.source)
    if config.pareto.size == "deployed" and search.pruner == "front" and config.deploy.runtime != "torch":
        raise ConfigError(
            f"search.pruner front judges a trial by its packed size, taken before fine-tuning, and pareto.size deployed sizes the "
            f"front by its {config.deploy.runtime} files ({config.source}): use search.pruner median, hyperband or none, or pareto.size packed"
        )
    address = search.ray_address or os.environ.get("RAY_ADDRESS")
    if search.workers:
        check_ray_address(address, "--ray-address" if search.ray_address else "RAY_ADDRESS")
    if search.device == "cuda":
        if search.workers and not search.gpus_per_worker:
            raise SearchError("--device cuda with Ray workers needs --gpus-per-worker (e.g. 0.5 to share one GPU between two workers)")
        if not (search.workers and address):  # the workers run on this machine: it needs the GPU
            resolve_device("cuda")
    check_deploy(config, local=not (search.workers and address))
    check_protocol(config)
    check_task_keys(config)
    space = load_space(config.space).resolve(*model_skeleton(config.task))
    space.check_act_bits(config.deploy.precision, config.deploy.runtime, space.source)
    return space


# Task keys about in-memory data and baseline training: a protocol task's function does these itself.
PROTOCOL_IGNORED_KEYS = (
    "data_root",
    "download",
    "image_size",
    "channels",
    "max_train_samples",
    "max_eval_samples",
    "train_epochs",
    "train_lr",
    "batch_size",
    "num_classes",
    "input_shape",
)


def check_protocol(config: StudyConfig) -> None:
    """What a protocol task (its own data, loss and metric) cannot be searched with yet, named
    with the reason before anything starts."""
    protocol = task_protocol(config.task)
    if protocol is None:
        return
    for key in changed_keys(config.task, PROTOCOL_IGNORED_KEYS):  # the function's own splits make these meaningless: never ignored in silence
        raise SearchError(
            f"task.{key} does not apply to {protocol.source}, which returns its own splits, loss and metric "
            f"({config.source}): remove it, or do it in the task function"
        )
    if config.deploy.runtime != "torch":
        raise SearchError(
            f"deploy.runtime {config.deploy.runtime}: the ONNX export takes one float tensor in and scores logits, while "
            f"{protocol.source} brings its own batches and metric; use deploy.runtime torch for this task"
        )
    if config.search.pruner != "none" and not protocol.metric.higher_is_better:
        raise SearchError(
            f"search.pruner {config.search.pruner} judges rungs by a score that rises; metric '{protocol.metric.name}' is lower-is-better: "
            "use search.pruner none for this task"
        )


def changed_keys(section: Any, keys: Iterable[str] | None = None) -> list[str]:
    """The keys of a settings dataclass (all of them by default) set away from its defaults."""
    defaults = type(section)()
    return [k for k in (keys if keys is not None else type(section).__dataclass_fields__) if getattr(section, k) != getattr(defaults, k)]


# Datasets read from no folder: task.data_root and task.download mean nothing for them.
FOLDERLESS_DATASETS = ("digits",)
TRAINING_KEYS = ("train_epochs", "train_lr", "batch_size")


def ignored_task_keys(spec: TaskSpec) -> dict[str, str]:
    """The task keys set away from their defaults that this task would not use, each with why.
    A protocol task's own list is ``PROTOCOL_IGNORED_KEYS``."""
    from autocompress.tasks.custom import is_custom
    from autocompress.tasks.spec import model_entry
    from autocompress.tasks.training import trains_own_model

    out: dict[str, str] = {}
    changed = set(changed_keys(spec, (*TRAINING_KEYS, "data_root", "download")))
    if spec.weights is not None:
        why = "task.weights gives the baseline's weights, so autocompress trains nothing: remove it, or remove task.weights"
        out.update({k: why for k in TRAINING_KEYS if k in changed})
    elif model_entry(spec.model).trained and not trains_own_model(spec):
        why = f"'{spec.model}' brings its own weights and they are used as returned: set task.train_epochs to train them further, or remove it"
        out.update({k: why for k in TRAINING_KEYS if k in changed})
    dataset = spec.dataset or model_entry(spec.model).default_dataset
    if dataset in FOLDERLESS_DATASETS or (dataset is not None and dataset == spec.model and is_custom(dataset)):
        why = f"dataset '{dataset}' is read from no folder (its data comes {'with scikit-learn' if dataset in FOLDERLESS_DATASETS else 'from the task function'}): remove it"
        out.update({k: why for k in ("data_root", "download") if k in changed})
    return out


# Keys only a Ray worker pool reads.
RAY_KEYS = ("cpus_per_worker", "gpus_per_worker", "max_retries", "trial_timeout", "ray_address")


def ignored_config_keys(config: StudyConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Keys outside the task section set away from their defaults that would change nothing:
    (refused, noted). Ray's keys with ``search.workers 0`` are only noted: ``--workers 0`` on a
    cluster's config is how a search is debugged in-process."""
    refused: dict[str, str] = {}
    noted: dict[str, str] = {}
    finetune, deploy, search = config.finetune, config.deploy, config.search
    if changed_keys(finetune, ("temperature",)) and not finetune.distill:
        refused["finetune.temperature"] = (
            "it softens the teacher's outputs for distillation, and finetune.distill is 0: set finetune.distill, or remove it"
        )
    if changed_keys(deploy, ("calibration_batches",)) and deploy.precision != "int8":
        refused["deploy.calibration_batches"] = "activation ranges are calibrated for int8 only, and deploy.precision is fp32: remove it"
    if not search.sensitivity:
        for key in changed_keys(search, ("ladder", "sensitivity_share")):
            refused[f"search.{key}"] = "it shapes the sensitivity phase, and search.sensitivity is false: remove it, or turn the phase on"
    if not search.workers:
        for key in changed_keys(search, RAY_KEYS):
            noted[f"search.{key}"] = "unused: the trials run in this process (search.workers 0)"
    return refused, noted


def check_task_keys(config: StudyConfig) -> None:
    """Refuse a key that would be ignored, naming why."""
    protocol = task_protocol(config.task)
    if protocol is None:
        for key, why in ignored_task_keys(config.task).items():
            raise SearchError(f"task.{key} would be ignored ({config.source}): {why}")
    for key, why in ignored_config_keys(config)[0].items():
        raise SearchError(f"{key} would be ignored ({config.source}): {why}")


def check_deploy(config: StudyConfig, local: bool) -> None:
    """Refuse a deploy target that cannot run, before anything is trained or stored."""
    from autocompress.deploy.runtimes import runtime

    deploy = config.deploy
    if deploy.resource and not config.search.workers:
        raise SearchError(f"deploy.resource '{deploy.resource}' times trials on a Ray node: use Ray workers (--workers 1 or more)")
    device = deploy.device if deploy.device != "auto" else ("cuda" if config.search.device == "cuda" else "cpu")
    if device == "cuda" and local and not deploy.resource:
        try:
            resolve_device("cuda", "deploy.device")
        except AutocompressError as exc:
            raise SearchError(f"deploy.device cuda: {exc}") from None
    runtime(deploy.runtime).check(deploy.precision, device)


def task_metric(config: StudyConfig) -> MetricInfo:
    """What the task's first objective measures: a protocol task's metric, else top-1 accuracy.
    Known before any data is opened (the task function returns it)."""
    protocol = task_protocol(config.task)
    return protocol.metric.info() if protocol is not None else TOP1


def prepare_and_say(config: StudyConfig, say: Callable[[str], None]) -> SearchSpace:
    """``prepare``, then which task keys it uses, what data the search reads and where it opens."""
    space = prepare(config)  # every key checked there: what is left to say is what is used
    used = changed_keys(config.task)
    noted = ignored_config_keys(config)[1]
    say(
        f"  task keys used: {', '.join(f'task.{k}' for k in used)}; every other at its default, none ignored"
        if used
        else "  task keys: every one at its default, none ignored"
    )
    for key, why in noted.items():
        say(f"  {key}: {why}")
    protocol = task_protocol(config.task)
    if protocol is not None:
        metric = protocol.metric.info()
        loss = "cross-entropy (the default)" if protocol.loss_is_default else "the task's own"
        say(
            f"  data: {', '.join(protocol.splits)} opened on the workers, never here; metric {metric.name} "
            f"({metric.better} is better{', corpus-level' if metric.corpus else ''}); loss {loss}"
        )
    else:
        say(f"  data: {describe_data(config.task, load_data(config.task), CACHE.read_seconds)}")
    note = rebuild_note(config)
    if note:
        say(f"  note: {note}")
    return space


def rebuild_note(config: StudyConfig) -> str | None:
    """Where a task function runs again in every worker (each rebuilds its model from it), the
    line that says so, with the fix; None where it runs once."""
    from autocompress.tasks.custom import IN_MEMORY, is_custom

    spec, workers = config.task, config.search.workers
    if not is_custom(spec.model) or spec.build is not None or spec.model in IN_MEMORY or not workers:
        return None
    return (
        f"task function '{spec.model}' runs again in each of the {workers} workers to rebuild its model "
        f"({workers + 1} calls in all, whatever it loads or trains included): set task.build to a function returning the "
        "untrained architecture, and it runs once"
    )
