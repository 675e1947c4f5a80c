"""Study configuration: ``studies/*.yaml`` plus command-line flags, validated once, up front."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from autocompress._schema import from_mapping, read_yaml
from autocompress.baseline import SIZE_OBJECTIVES
from autocompress.deploy.target import LEGACY_LATENCY_KEYS, DeployConfig, from_legacy_latency
from autocompress.errors import ConfigError
from autocompress.storage import DEFAULT_STORAGE
from autocompress.tasks.custom import add_import_path, is_custom
from autocompress.tasks.spec import TaskSpec

DEFAULT_CONFIG = Path("studies/default.yaml")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")  # study names become file names
SAMPLERS = ("auto", "tpe", "nsga2", "gp", "random")
PRUNERS = ("none", "front", "median", "hyperband")  # keys of fidelity.PRUNERS


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = field(default=150, metadata={"min": 0, "max": 10_000_000})  # optimizer steps after compression; 0 skips
    lr: float = field(default=5e-4, metadata={"min": 0.0, "max": 1.0})  # Adam, cosine-annealed to 0
    batch_size: int = field(default=64, metadata={"min": 1, "max": 1 << 16})
    log_every: int = field(default=10, metadata={"min": 1, "max": 10_000_000})  # record the loss every this many steps
    # Knowledge distillation from the uncompressed baseline: this share of the loss is the KL
    # divergence to its softened outputs (Hinton et al. 2015); 0 trains on the labels alone.
    distill: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    temperature: float = field(default=4.0, metadata={"min": 1.0, "max": 100.0})


@dataclass(frozen=True)
class SearchConfig:
    trials: int = field(default=20, metadata={"min": 1, "max": 1_000_000})  # target number of COMPLETE trials
    workers: int = field(default=2, metadata={"min": 0, "max": 4096})  # trials in flight; 0 runs in-process
    sampler: str = field(default="auto", metadata={"choices": SAMPLERS})  # auto: TPE up to 1,000 trials, NSGA-II above
    seed: int | None = field(default=None, metadata={"min": 0, "max": 2**32 - 1})  # sampler seed; None draws one
    warm_start: bool = True  # enqueue uniform plans first so the front starts from known points
    new_study: bool = False  # never resume: a taken name becomes NAME-2, NAME-3, ...
    max_failures_in_a_row: int = field(default=10, metadata={"min": 1, "max": 1_000_000})  # then stop the search
    # Seconds from the start of this run: no trial starts after it (those in flight finish);
    # a later run resumes toward ``trials``. None: run until ``trials`` are complete.
    timeout: float | None = field(default=None, metadata={"min": 1.0, "max": 1e8})
    ray_address: str | None = None  # join this Ray cluster (else RAY_ADDRESS, else a local Ray)
    cpus_per_worker: float = field(default=1.0, metadata={"min": 0.0, "max": 1024.0})  # Ray actor resources
    gpus_per_worker: float = field(default=0.0, metadata={"min": 0.0, "max": 64.0})
    max_retries: int = field(default=1, metadata={"min": 0, "max": 100})  # re-runs of a trial whose worker died
    trial_timeout: float | None = field(default=None, metadata={"min": 1.0, "max": 1e8})  # seconds, then FAIL
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})  # where workers evaluate
    # Multi-fidelity trials: workers report validation accuracy at these fine-tuning steps
    # (rungs; 0 is before fine-tuning) and the driver stops a trial that cannot pay off.
    # front: cannot reach the front at its size and latency (or the accuracy constraint);
    # median, hyperband: Optuna's pruners on the accuracy alone. PRUNED trials do not count
    # toward ``trials``.
    pruner: str = field(default="none", metadata={"choices": PRUNERS})
    # Before the first trial, each group's knobs measured one value at a time without fine-tuning
    # (cached per task, space and deploy target), and the warm start given plans that spend
    # the least of that sensitivity at each of these sizes (times smaller than the baseline).
    sensitivity: bool = True
    # The phase's bound: its estimated seconds (printed before it starts) may take at most this
    # share of the search's (trials x a trial's measurement alone, over the workers: a lower
    # bound, fine-tuning comes on top); past it, probes are measured untimed.
    sensitivity_share: float = field(default=0.25, metadata={"min": 0.0, "max": 1.0})
    ladder: tuple[float, ...] = field(default=(4.0, 8.0, 16.0, 32.0), metadata={"min": 1.0, "max": 1e6})
    rungs: tuple[int, ...] | None = field(
        default=None, metadata={"min": 0, "max": 10_000_000}
    )  # None: 0, 1/4 and 1/2 of finetune.steps (hyperband: 1/27, 1/9, 1/3)
    # A baseline no better than chance stops the search before anything is spent on it (every
    # drop would be measured against a model that has not learned); True searches anyway, and
    # the report marks the study.
    allow_chance_baseline: bool = False


@dataclass(frozen=True)
class ParetoConfig:
    # Trials losing more accuracy than this (points, vs the baseline) are infeasible; None = off.
    # One point by default: a front reaching down to useless models hides the trials users ship.
    max_accuracy_drop: float | None = field(default=1.0, metadata={"min": 0.0, "max": 100.0})
    # The same limit for any metric, in its direction: a number in the metric's units (points for
    # top-1/top-k) or a share of the baseline's score ("2%"). None: max_accuracy_drop for point
    # metrics, 1% of the baseline's score for every other metric.
    max_drop: str | float | None = None
    # What the size objective counts: "packed", the .acz artifact's bytes (the codes entropy-coded);
    # "deployed", the bytes of the file the deploy target runs (an ONNX runtime's .onnx file;
    # the packed artifact itself for torch). A study records its choice; every report shows both.
    size: str = field(default="packed", metadata={"choices": SIZE_OBJECTIVES})

    def __post_init__(self) -> None:
        # Checked here, before a search starts (a share is resolved against the baseline later).
        value = self.max_drop
        if (isinstance(value, str) and not re.fullmatch(r"\s*\d+(\.\d+)?\s*%\s*", value)) or (isinstance(value, float) and value < 0):
            raise ConfigError(
                f"key 'pareto.max_drop' is {value!r}: give a drop of 0 or more in the metric's units, or a share of the baseline such as '2%'"
            )


@dataclass(frozen=True)
class StudyConfig:
    name: str = "autocompress"  # Optuna study name; re-using it resumes the study
    storage: str = DEFAULT_STORAGE  # SQLAlchemy URL; a relative sqlite path is from the current folder
    task: TaskSpec = field(default_factory=TaskSpec)
    space: str | None = None  # space YAML, relative to the config file; None = built-in default
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)  # where latency and accuracy are measured
    pareto: ParetoConfig = field(default_factory=ParetoConfig)
    cache_dir: str = "studies/baselines"  # trained baselines, keyed by task spec
    artifact_dir: str = "studies/artifacts"  # every trial's packed model (optuna-dashboard shows them)
    source: str = field(default="(built-in defaults)", compare=False, metadata={"internal": True})  # where it was read from

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read a study config and apply flag overrides (``{"search.trials": 8, "name": "x"}``).

    With no path, ``studies/default.yaml`` is used when present, else the built-in defaults.
    The space path is made relative to the config file's folder.
    """
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is None:
        config = StudyConfig()
    else:
        path = Path(path)
        data, deprecation = _legacy_latency(read_yaml(path), path)
        config = from_mapping(StudyConfig, data, where=str(path))
        if deprecation:  # after validation: a mistake still gets its one error line
            print(deprecation, file=sys.stderr)
        if config.space is not None and not Path(config.space).is_absolute():
            config = replace(config, space=os.path.normpath(path.parent / config.space))
        config = replace(config, source=str(path))
        if is_custom(config.task.model) or is_custom(config.task.dataset):
            add_import_path(str(path.parent))  # a task module may sit next to its config
    for key, value in (overrides or {}).items():
        if value is not None:
            config = _override(config, key, value)
    if not NAME_PATTERN.fullmatch(config.name):
        where = "--name" if (overrides or {}).get("name") is not None else str(path or "the built-in defaults")
        raise ConfigError(
            f"study name {config.name[:60]!r} is not allowed (key 'name', {where}): use letters, digits, '-', '_' and '.', "
            "at most 100 characters, not starting with '.' (it names files such as NAME-trialN.acz)"
        )
    return config


def _legacy_latency(data: Any, path: Path) -> tuple[Any, str]:
    """Read an older config's ``latency:`` section as ``deploy:``; the deprecation line to print."""
    if not isinstance(data, dict) or "latency" not in data:
        return data, ""
    section = data["latency"]
    if "deploy" in data:
        raise ConfigError(f"both 'latency' and 'deploy' are given ({path}): move the 'latency' keys under 'deploy' and delete 'latency'")
    if not isinstance(section, dict):
        raise ConfigError(f"'latency' must be a mapping of keys to values, got {section!r} ({path}): fix its layout")
    unknown = [k for k in section if k not in LEGACY_LATENCY_KEYS]
    if unknown:
        raise ConfigError(
            f"unknown key 'latency.{unknown[0]}' ({path}): 'latency' is deprecated; use 'deploy' (keys: {', '.join(DeployConfig.__dataclass_fields__)})"
        )
    warning = f"warning: 'latency:' is deprecated ({path}): move its keys under 'deploy:'" + (
        " and write 'precision' for 'backend'" if "backend" in section else ""
    )
    return {**{k: v for k, v in data.items() if k != "latency"}, "deploy": from_legacy_latency(section)}, warning


def _override(config: StudyConfig, key: str, value: Any) -> StudyConfig:
    section, _, name = key.rpartition(".")
    target = getattr(config, section) if section else config
    # Validate the one key through the same schema as the file, then graft it on.
    checked = from_mapping(type(target), {name: value}, where=f"--{name.replace('_', '-')}", prefix=f"{section}." if section else "")
    updated = replace(target, **{name: getattr(checked, name)})
    if not section:
        return cast(StudyConfig, updated)
    return replace(config, **{section: updated})  # type: ignore[arg-type]  # mypy cannot type a ** keyword by its name
