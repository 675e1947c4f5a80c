"""Study setup: a study opened or created, checked against the config, described, and seeded.

Everything here runs before Ray or training: ``prepare`` turns every user mistake into one line,
``open_study`` creates a study (or takes over one that a killed driver left half-created) or
refuses an existing one made for another task, space, fine-tuning or deploy target.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autocompress import _faults, _optuna, pareto
from autocompress.artifact import FORMAT_VERSION
from autocompress.config import StudyConfig
from autocompress.errors import AutocompressError, SearchError, StorageError
from autocompress.evaluate import resolve_device
from autocompress.fidelity import check_rungs
from autocompress.plan import TOP1, MetricInfo
from autocompress.space import SearchSpace, load_space
from autocompress.storage import check_url, mask_url
from autocompress.tasks import TaskSpec, model_skeleton
from autocompress.tasks.custom import task_protocol

log = logging.getLogger(__name__)

# Deploy keys that define what a latency means; a study resumed with others is refused.
DEPLOY_IDENTITY = ("runtime", "precision", "device", "threads", "batch_size", "resource")

# Uniform plans tried first (sparsity, bits, rank fraction, sparsity mode): known points at the
# safe end, then the moderate region where an accuracy limit of about a point is usually met
# (8 bits with light sparsity, 4 bits dense), and with channel pruning in the space, two
# structured ones at the aggressive end.
WARM_START = (
    (0.0, 8, 1.0, "unstructured"),
    (0.5, 6, 1.0, "unstructured"),
    (0.7, 4, 1.0, "unstructured"),
    (0.25, 8, 1.0, "unstructured"),
    (0.0, 4, 1.0, "unstructured"),
)
WARM_START_CHANNEL = ((0.5, 4, 1.0, "channel"), (0.75, 4, 1.0, "channel"))
# Deep Compression's recipe where the space shares weights: most weights pruned, the rest on a
# 4- or 5-bit k-means codebook (LeNet-300-100: 8% of the weights kept, Han et al. 2016, Table 1).
WARM_START_SHARED = ((0.9, 4, 1.0, "unstructured"), (0.8, 5, 1.0, "unstructured"))


# Optuna's own guidance: TPE for studies of 100 to 1,000 trials, NSGA-II for 100 to 10,000
# (optuna.readthedocs.io, reference/samplers). TPE's ask reads every trial: about 0.7 s at
# 10,000 trials on the digits space, where NSGA-II's takes 0.2 s (benchmarks/driver_scale.py).
AUTO_TPE_MAX_TRIALS = 1000

SAMPLER_FACTORIES: dict[str, Callable[[int | None], optuna.samplers.BaseSampler]] = {
    # Multivariate TPE models the interaction of the knobs (bits x sparsity of one layer).
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed),
    # Gaussian-process expected hypervolume improvement: slow per trial, for small studies.
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=8),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


def sampler_name(name: str, trials: int) -> str:
    """The sampler a study uses: ``auto`` is TPE up to ``AUTO_TPE_MAX_TRIALS`` trials, NSGA-II above."""
    if name != "auto":
        return name
    return "tpe" if trials <= AUTO_TPE_MAX_TRIALS else "nsga2"


def make_sampler(name: str, seed: int | None, trials: int = 0) -> optuna.samplers.BaseSampler:
    return SAMPLER_FACTORIES[sampler_name(name, trials)](seed)


def check_ray_address(address: str | None, source: str = "--ray-address") -> None:
    """Fail fast on a Ray address nobody listens on (ray.init would wait a long time)."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"Ray address '{address}' is not host:port ({source}): e.g. 10.0.0.5:6379, or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SearchError(
            f"Ray address {address} is unreachable ({reason}) ({source}): start the head with 'ray start --head' or fix the address"
        ) from None


def prepare(config: StudyConfig) -> SearchSpace:
    """Validate the task and resolve the space against the model, before training or storage."""
    check_url(config.storage)
    search = config.search
    check_rungs(search.pruner, search.rungs, config.finetune.steps, config.source)
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
    defaults = TaskSpec()
    for key in PROTOCOL_IGNORED_KEYS:  # the function's own splits make these meaningless: never ignored in silence
        if getattr(config.task, key) != getattr(defaults, key):
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


def check_existing(study: optuna.Study, config: StudyConfig, space: SearchSpace, url: str) -> None:
    """Refuse to mix trials of a different task or space into one study."""
    attrs = study.user_attrs
    packed_with = attrs.get("artifact_format", 1)  # studies before the attribute were packed in format 1
    if packed_with != FORMAT_VERSION and _optuna.count_trials(study, (TrialState.COMPLETE,)):
        raise StorageError(
            f"study '{study.study_name}' sized its trials with artifact format {packed_with}; this version packs format "
            f"{FORMAT_VERSION}, whose files are smaller, so new sizes would not compare with its front: pass --new-study, "
            "or continue it with the version that made it"
        )
    expected = pareto.directions(task_metric(config))
    if list(study.directions) != expected:
        raise StorageError(
            f"study '{study.study_name}' in {mask_url(url)} has other objectives "
            f"({[d.name.lower() for d in study.directions]}): choose another --name or pass --new-study"
        )
    task = config.task.resolved().to_dict()
    stored = None if attrs.get("task") is None else TaskSpec.from_dict(attrs["task"]).to_dict()
    # How the architecture is rebuilt (a build hook added later) does not make another task.
    diff = [k for k in task if stored is not None and k not in ("build", "input_shape") and stored[k] != task[k]]
    if diff:
        raise StorageError(
            f"study '{study.study_name}' was created for another task (differs in {', '.join(diff)}): "
            "choose another --name, pass --new-study, or use the config it was created with"
        )
    if attrs.get("space") not in (None, space.to_dict()):
        old = attrs["space"]
        diff = sorted(set(old) ^ set(space.to_dict())) or [n for n in old if old[n] != space.to_dict().get(n)]
        raise StorageError(
            f"study '{study.study_name}' was created with another search space (differs at layer "
            f"{', '.join(diff[:3])}): choose another --name, pass --new-study, or use the space it was created with"
        )
    old_finetune = (attrs.get("config") or {}).get("finetune")
    new_finetune = config.to_dict()["finetune"]
    if old_finetune is not None and old_finetune != new_finetune:
        diff = [f"{k} {old_finetune.get(k)!r} -> {v!r}" for k, v in new_finetune.items() if old_finetune.get(k) != v]
        raise StorageError(
            f"study '{study.study_name}' was fine-tuned differently (finetune: {', '.join(diff)}): its trials would not "
            "compare; choose another --name, pass --new-study, or use the finetune section it was created with"
        )
    old_deploy = (attrs.get("config") or {}).get("deploy")
    new_deploy = {k: v for k, v in config.to_dict()["deploy"].items() if k in DEPLOY_IDENTITY}
    if old_deploy is not None and {k: old_deploy.get(k) for k in DEPLOY_IDENTITY} != new_deploy:
        diff = [f"{k} {old_deploy.get(k)!r} -> {new_deploy[k]!r}" for k in DEPLOY_IDENTITY if old_deploy.get(k) != new_deploy[k]]
        raise StorageError(
            f"study '{study.study_name}' was measured on another deploy target ({', '.join(diff)}): its latencies would not "
            "compare; choose another --name, pass --new-study, or use the deploy section it was created with"
        )


# Set when a new study is described, "artifact_dir" last; the warm start's trials come after.
DESCRIBING_ATTRS = ("task", "space", "config", "artifact_dir")


def half_created(study: optuna.Study, metric: MetricInfo = TOP1) -> bool:
    """Created with our directions and not fully described: no trial run yet, and the metric
    names or one of the describing attributes missing. A driver killed in between leaves one;
    so does a user who creates the study and enqueues plans of their own before searching."""
    started = _optuna.count_trials(study, (TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL, TrialState.PRUNED))
    return (
        list(study.directions) == pareto.directions(metric)
        and not started
        and (not study.metric_names or any(k not in study.user_attrs for k in DESCRIBING_ATTRS))
    )


def open_study(storage: optuna.storages.BaseStorage, config: StudyConfig, space: SearchSpace) -> tuple[optuna.Study, StudyConfig]:
    """The study to search in, and the config with the name it got (``new_study`` may rename)."""
    cfg = config
    sampler = make_sampler(cfg.search.sampler, cfg.search.seed, cfg.search.trials)
    if cfg.search.new_study:
        taken = {s.study_name for s in storage.get_all_studies()}
        name, k = cfg.name, 2
        while name in taken:
            name, k = f"{cfg.name}-{k}", k + 1
        if name != cfg.name:
            log.warning("study '%s' exists; starting a new study '%s'", cfg.name, name)
        cfg = replace(cfg, name=name)
    try:
        study = optuna.create_study(study_name=cfg.name, storage=storage, sampler=sampler, directions=pareto.directions(task_metric(cfg)))
        _faults.checkpoint("study-created")
    except optuna.exceptions.DuplicatedStudyError:  # an existing study (maybe another driver's, just made)
        study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler)
        if not half_created(study, task_metric(cfg)):
            check_existing(study, cfg, space, cfg.storage)
            task = cfg.task.resolved().to_dict()
            if study.user_attrs.get("task") != task:  # the same task, rebuilt another way (task.build): keep the newest
                study.set_user_attr("task", task)
            return study, cfg
        # Created but never described (a driver killed in between, or a user who enqueued plans
        # first): finish the job.
        log.warning(
            "study '%s' exists but was never described (a driver stopped early, or it was made outside autocompress); describing it", study.study_name
        )
    describe(study, cfg, space)
    return study, cfg


def describe(study: optuna.Study, cfg: StudyConfig, space: SearchSpace) -> None:
    """Name the objectives, record what defines the study (``DESCRIBING_ATTRS``), queue the warm start."""
    with warnings.catch_warnings():  # experimental since 3.2, stable in practice; keep output clean
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(pareto.objectives(task_metric(cfg)))
    study.set_user_attr("task", cfg.task.resolved().to_dict())
    study.set_user_attr("artifact_format", FORMAT_VERSION)  # sizes compare only within one packer
    _faults.checkpoint("study-described")
    study.set_user_attr("space", space.to_dict())
    # Stored to reproduce the run; the storage URL without its password (the database and
    # optuna-dashboard's API show every attribute to whoever can read them).
    study.set_user_attr("config", {**cfg.to_dict(), "storage": mask_url(cfg.storage)})
    study.set_user_attr("artifact_dir", str(Path(cfg.artifact_dir).resolve()))
    if cfg.search.warm_start:
        for sparsity, bits, rank, mode, quant_mode in warm_start_plans(space, cfg.search.trials):
            study.enqueue_trial(space.uniform_params(sparsity, bits, rank, mode, quant_mode), skip_if_exists=True)


def warm_start_plans(space: SearchSpace, trials: int) -> tuple[tuple[float, int, float, str, str], ...]:
    """The uniform plans a new study queues first: at most one per trial."""
    plans = [(*p, "uniform") for p in WARM_START + (WARM_START_CHANNEL if space.allows_channel else ())]
    plans += [(*p, "kmeans") for p in (WARM_START_SHARED if space.allows_sharing else ())]
    return tuple(plans[:trials])
