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


def set_trial_system_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    """optuna-dashboard 0.21 reads constraints only from the old ``constraints`` system attribute."""
    trial.storage.set_trial_system_attr(trial._trial_id, key, value)


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
