"""The Python front door: ``autocompress.search(task=...)`` from a script or a notebook.

The task is an object in memory: a function returning the task protocol's mapping (see
:mod:`autocompress.tasks.protocol`), or that mapping itself. It is searched exactly as a study
config would be (the same driver, runners, storage and checks); its functions travel to Ray
workers pickled (closures and classes defined in a notebook included, by value), and the
model's architecture travels with them, so no module has to be importable on the workers.

    import autocompress

    result = autocompress.search(task=make_task, trials=16, workers=2, storage="sqlite:///runs.db")
    print(result.front)            # the Pareto front's rows, in the task's metric
    result.export(result.knee, "model.acz")
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autocompress.config import DeployConfig, FinetuneConfig, ParetoConfig, SearchConfig, StudyConfig
from autocompress.errors import ConfigError
from autocompress.tasks.spec import TaskSpec


@dataclass
class SearchResult:
    """What a search left: the study, its front (rows as ``autocompress report --json`` gives
    them) and the knee."""

    study: optuna.Study
    front: list[dict[str, Any]]
    knee: int | None

    def export(self, trial: int, path: str | Path, format: str = "acz", force: bool = False) -> Path:
        """Write a trial's model: ``acz`` (the packed file the search sized) or ``onnx``."""
        from autocompress.export import export_trial

        written, _ = export_trial(self.study, trial, path, format, None, force)
        return written


def _name_of(task: Any, name: str | None) -> str:
    if name is not None:
        return name
    found = getattr(task, "__qualname__", None) or getattr(task, "__name__", None) or "task"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", str(found))[:80]


def _section(cls: type, given: Any, key: str) -> Any:
    """A config section from a dataclass, a mapping of its keys, or None (its defaults)."""
    from autocompress._schema import from_mapping

    if given is None:
        return cls()
    if isinstance(given, cls):
        return given
    if isinstance(given, Mapping):
        return from_mapping(cls, dict(given), where="autocompress.search()", prefix=f"{key}.")
    raise ConfigError(f"autocompress.search(): '{key}' is {type(given).__name__}: give a mapping of its keys or a {cls.__name__}")


def search(
    task: Callable[[], Any] | Mapping[str, Any],
    *,
    space: str | None = None,
    storage: str = "sqlite:///studies/autocompress.db",
    name: str | None = None,
    trials: int = 16,
    workers: int = 0,
    deploy: DeployConfig | Mapping[str, Any] | None = None,
    finetune: FinetuneConfig | Mapping[str, Any] | None = None,
    pareto: ParetoConfig | Mapping[str, Any] | None = None,
    progress: bool = False,
    artifact_dir: str = "studies/artifacts",
    cache_dir: str = "studies/baselines",
    **search_options: Any,
) -> SearchResult:
    """Search a task held in memory; resumes the study of the same ``name`` in ``storage``.

    Args:
        task: a function of no arguments returning the task protocol's mapping (``model``,
            ``train``/``val``/``test`` factories, ``loss``, ``metric``, ``example_input``...), or
            the mapping itself.
        space: a search-space YAML file (default: the built-in space).
        storage: where the study lives (an SQLAlchemy URL; SQLite by default).
        name: the study's name (default: the task function's name).
        trials: complete trials wanted in the study.
        workers: Ray workers (0 evaluates in this process).
        deploy, finetune, pareto: those config sections, as mappings of their keys.
        progress: show the live progress bar.
        artifact_dir, cache_dir: where trials' packed models and cached measurements go.
        search_options: any other key of the config's ``search`` section (seed, sampler, ...).
    """
    from autocompress.driver import run_search
    from autocompress.pareto import study_analysis
    from autocompress.report import report_rows
    from autocompress.tasks.custom import register_in_memory

    if isinstance(task, Mapping):
        parts = dict(task)
        function: Callable[[], Any] = lambda: parts  # noqa: E731  (the mapping, as a task function returns it)
        label = _name_of(None, name) if name else "task"
    elif callable(task):
        function, label = task, _name_of(task, name)
    else:
        raise ConfigError(f"autocompress.search(): task is {type(task).__name__}: give a function returning the task's mapping, or the mapping")
    target = register_in_memory(label, function)
    search_section = _section(SearchConfig, {"trials": trials, "workers": workers, **search_options}, "search")
    config = StudyConfig(
        name=name or label,
        storage=storage,
        task=TaskSpec(model=target),
        space=space,
        search=search_section,
        finetune=_section(FinetuneConfig, finetune, "finetune"),
        deploy=_section(DeployConfig, deploy, "deploy"),
        pareto=_section(ParetoConfig, pareto, "pareto"),
        artifact_dir=artifact_dir,
        cache_dir=cache_dir,
        source="autocompress.search()",
    )
    study = run_search(config, progress=progress)
    analysis = study_analysis(study)
    return SearchResult(study=study, front=report_rows(study, analysis), knee=analysis.knee)
