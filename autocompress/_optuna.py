"""The one place that reaches past Optuna's public API; each use says why.

Optuna has renamed private attributes before: a change there breaks this module only.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import optuna
from optuna._hypervolume import compute_hypervolume  # noqa: F401  (re-exported: no public equivalent)
from optuna.artifacts import ArtifactMeta

# The system-attribute key under which Optuna and optuna-dashboard list an artifact
# (optuna.artifacts._upload.ARTIFACTS_ATTR_PREFIX).
ARTIFACT_ATTR_PREFIX = "artifacts:"


def register_artifact(owner: optuna.Trial | optuna.Study, meta: ArtifactMeta) -> None:
    """List an artifact already written to the store on its study or trial, as
    ``upload_artifact`` does, which lists it before writing the file (a crash mid-write would
    leave a listed, missing file)."""
    value = json.dumps(asdict(meta))
    if isinstance(owner, optuna.Study):
        owner._storage.set_study_system_attr(owner._study_id, ARTIFACT_ATTR_PREFIX + meta.artifact_id, value)
    else:
        owner.storage.set_trial_system_attr(owner._trial_id, ARTIFACT_ATTR_PREFIX + meta.artifact_id, value)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """A study's storage: Optuna offers no public accessor, and frozen trials need it."""
    return study._storage


def fail_with_reason(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> None:
    """Set a RUNNING trial's ``fail_reason`` and fail it: a trial another driver asked (a frozen
    trial here, no ``Trial`` object) can be written only through the storage."""
    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def dashboard_best_trials_feasible_only() -> None:
    """optuna-dashboard 0.21 badges "Best Trial" on its own Pareto front of the raw values, with
    infeasible trials in it; the dashboard `autocompress dashboard` serves computes it over the
    feasible trials (every recorded constraint value <= 0), as the report's front does."""
    from optuna_dashboard import _app

    front = _app.get_pareto_front_trials
    if getattr(front, "feasible_only", False):
        return

    def feasible_front(trials: Any, directions: Any) -> Any:
        kept = [t for t in trials if all(v <= 0 for v in t.system_attrs.get("constraints") or ())]
        return front(trials=kept, directions=directions)

    feasible_front.feasible_only = True  # type: ignore[attr-defined]
    _app.get_pareto_front_trials = feasible_front


def set_trial_attrs(trial: optuna.Trial, user: dict[str, Any], system: dict[str, Any] | None = None) -> None:
    """Write a trial's attributes in one transaction where the storage is a database (Optuna
    commits each ``set_user_attr`` on its own: a dozen commits per trial); one call per
    attribute elsewhere, or when Optuna's internals have moved."""
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models
    from optuna.storages._rdb import storage as rdb

    backend = getattr(trial.storage, "_backend", trial.storage)  # under Optuna's cache
    write = getattr(backend, "_set_trial_attr_without_commit", None)
    session = getattr(rdb, "_create_scoped_session", None)
    if not isinstance(backend, RDBStorage) or write is None or session is None:
        for key, value in user.items():
            trial.set_user_attr(key, value)
        for key, value in (system or {}).items():
            trial.storage.set_trial_system_attr(trial._trial_id, key, value)
        return
    with session(backend.scoped_session, True) as s:
        for key, value in user.items():
            write(s, models.TrialUserAttributeModel, trial._trial_id, key, value)
        for key, value in (system or {}).items():
            write(s, models.TrialSystemAttributeModel, trial._trial_id, key, value)


def count_trials(study: optuna.Study, states: tuple[optuna.trial.TrialState, ...]) -> int:
    """How many of the study's trials are in ``states``: one COUNT query on a database (Optuna
    reads every unfinished trial whole to count them), a listing elsewhere."""
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models

    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage):
        return len(study.get_trials(deepcopy=False, states=states))
    import sqlalchemy as sa

    query = (
        sa.select(sa.func.count())
        .select_from(models.TrialModel)
        .where(models.TrialModel.study_id == study._study_id, models.TrialModel.state.in_(states))
    )
    with backend.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
