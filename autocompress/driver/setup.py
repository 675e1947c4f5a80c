"""Study setup: a study opened or created, checked against the config, described, and seeded
(the checks before anything starts are in ``checks``).

``open_study`` creates a study (or takes over one that a killed driver left half-created) or
refuses an existing one made for another task, space, fine-tuning or deploy target.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autocompress import _faults, _optuna, pareto
from autocompress.artifact import FORMAT_VERSION
from autocompress.config import StudyConfig
from autocompress.deploy.target import DEPLOY_IDENTITY
from autocompress.driver.checks import task_metric
from autocompress.driver.warm_start import warm_start_plans
from autocompress.errors import StorageError
from autocompress.plan import TOP1, MetricInfo
from autocompress.space import SearchSpace
from autocompress.storage import mask_url
from autocompress.tasks import TaskSpec

log = logging.getLogger(__name__)

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
    sized_by = (attrs.get("baseline") or {}).get("size_objective", "packed")
    if attrs.get("baseline") and sized_by != config.pareto.size:
        raise StorageError(
            f"study '{study.study_name}' sizes its trials by {sized_by} bytes (pareto.size), not {config.pareto.size}: its front "
            f"would not compare; set pareto.size {sized_by}, choose another --name, or pass --new-study"
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
    stored = cfg.to_dict()
    address = stored["search"].get("ray_address")
    stored["search"]["ray_address"] = mask_url(address) if address else address
    study.set_user_attr("config", {**stored, "storage": mask_url(cfg.storage)})
    study.set_user_attr("artifact_dir", str(Path(cfg.artifact_dir).resolve()))
    if cfg.search.warm_start:
        for sparsity, bits, rank, mode, quant_mode in warm_start_plans(space, cfg.search.trials):
            study.enqueue_trial(space.uniform_params(sparsity, bits, rank, mode, quant_mode), skip_if_exists=True)
