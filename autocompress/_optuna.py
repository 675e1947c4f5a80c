"""The one place that reaches past Optuna's public API; each use says why.

Optuna has renamed private attributes before: a change there breaks this module only.
"""

from __future__ import annotations

import collections
import datetime
import json
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import optuna
from optuna._hypervolume import compute_hypervolume  # noqa: F401  (re-exported: no public equivalent)
from optuna.artifacts import ArtifactMeta

# The system-attribute key under which Optuna and optuna-dashboard list an artifact
# (optuna.artifacts._upload.ARTIFACTS_ATTR_PREFIX).
ARTIFACT_ATTR_PREFIX = "artifacts:"


def artifact_listing(meta: ArtifactMeta) -> dict[str, str]:
    """The system attribute that lists an artifact on its study or trial, as
    ``upload_artifact`` writes it."""
    return {ARTIFACT_ATTR_PREFIX + meta.artifact_id: json.dumps(asdict(meta))}


def register_artifact(owner: optuna.Trial | optuna.Study, meta: ArtifactMeta) -> None:
    """List an artifact already written to the store on its study or trial, as
    ``upload_artifact`` does, which lists it before writing the file (a crash mid-write would
    leave a listed, missing file)."""
    ((key, value),) = artifact_listing(meta).items()
    if isinstance(owner, optuna.Study):
        owner._storage.set_study_system_attr(owner._study_id, key, value)
    else:
        owner.storage.set_trial_system_attr(owner._trial_id, key, value)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """A study's storage: Optuna offers no public accessor, and frozen trials need it."""
    return study._storage


def fail_with_reason(study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.Trial, reason: str) -> None:
    """Set a RUNNING trial's ``fail_reason`` and fail it, through the storage: a trial another
    driver asked is only a frozen trial here, with no ``Trial`` object to write through."""
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


def _rdb(study_or_storage: Any) -> Any:
    """The database storage under Optuna's cache, or None for another storage (in-memory,
    journal, gRPC) or when the internals used below have moved: callers then take Optuna's
    public path."""
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models
    from optuna.storages._rdb import storage as rdb

    storage = getattr(study_or_storage, "_storage", study_or_storage)
    backend = getattr(storage, "_backend", storage)
    needed = (getattr(rdb, "_create_scoped_session", None), getattr(models, "TrialParamModel", None), getattr(backend, "_set_trial_param", None))
    return backend if isinstance(backend, RDBStorage) and all(x is not None for x in needed) else None


def _attr_rows(session: Any, model: Any, trial_id: int, attrs: dict[str, Any]) -> None:
    """Upsert ``attrs`` as one DELETE and one multi-row INSERT: the same on every SQL dialect,
    where Optuna issues a lookup and an upsert per key."""
    import sqlalchemy as sa

    if not attrs:
        return
    table = model.__table__
    session.execute(sa.delete(table).where(table.c.trial_id == trial_id, table.c.key.in_(list(attrs))))
    session.execute(sa.insert(table), [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()])


def _write_trial(backend: Any, trial_id: int, params: list[tuple[Any, ...]], user: dict[str, Any], system: dict[str, Any]) -> None:
    """A RUNNING trial's parameters and attributes, in one transaction."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models
    from optuna.storages._rdb import storage as rdb

    with rdb._create_scoped_session(backend.scoped_session, True) as s:
        row = s.execute(sa.select(models.TrialModel.state, models.TrialModel.study_id).where(models.TrialModel.trial_id == trial_id)).one_or_none()
        if row is None:
            raise KeyError(f"trial {trial_id} is not in the storage")
        backend.check_trial_is_updatable(trial_id, row.state)
        if params:
            rows = []
            for name, value, distribution, previous in params:
                if previous is None:  # the name's first use in this process: as the study has it
                    stored = s.execute(
                        sa.select(models.TrialParamModel.distribution_json)
                        .join(models.TrialModel)
                        .where(models.TrialModel.study_id == row.study_id, models.TrialParamModel.param_name == name)
                        .limit(1)
                    ).scalar_one_or_none()
                    previous = optuna.distributions.json_to_distribution(stored) if stored else None
                if previous is not None:
                    optuna.distributions.check_distribution_compatibility(previous, distribution)
                rows.append(
                    {
                        "trial_id": trial_id,
                        "param_name": name,
                        "param_value": value,
                        "distribution_json": optuna.distributions.distribution_to_json(distribution),
                    }
                )
            s.execute(sa.insert(models.TrialParamModel.__table__), rows)
        _attr_rows(s, models.TrialUserAttributeModel, trial_id, user)
        _attr_rows(s, models.TrialSystemAttributeModel, trial_id, system)


def set_trial_attrs(trial: optuna.Trial, user: dict[str, Any], system: dict[str, Any] | None = None) -> None:
    """Write a trial's attributes in one transaction where the storage is a database (Optuna
    commits each ``set_user_attr`` on its own: a dozen commits per trial); one call per
    attribute elsewhere."""
    backend = _rdb(trial.storage)
    if backend is None:
        for key, value in user.items():
            trial.set_user_attr(key, value)
        for key, value in (system or {}).items():
            trial.storage.set_trial_system_attr(trial._trial_id, key, value)
        return
    _write_trial(backend, trial._trial_id, [], user, system or {})


def constraint_attrs(name: str, violation: float) -> dict[str, Any]:
    """The system attributes of a named constraint (<= 0 is feasible): the one
    ``Trial.set_constraint`` writes, and the older ``constraints`` list, the only one
    optuna-dashboard 0.21 reads. Written with the trial's other attributes, not in commits
    of their own."""
    from optuna.trial import _trial

    key = getattr(_trial, "_CONSTRAINTS_KEY", "constraints")
    return {f"{key}:{name}": float(violation), "constraints": [float(violation)]}


def complete_trial(study: optuna.Study, trial: optuna.Trial, values: list[float], user: dict[str, Any], system: dict[str, Any]) -> None:
    """Store a trial's attributes, its values and its COMPLETE state in one transaction: what
    ``set_trial_attrs`` then ``study.tell`` do in about twenty queries and three commits (tell
    reads the trial whole twice). The sampler's ``after_trial`` runs first, as in ``tell``."""
    from optuna.samplers import BaseSampler
    from optuna.storages._rdb import models
    from optuna.storages._rdb import storage as rdb

    backend = _rdb(study)
    finite = all(math.isfinite(v) for v in values)
    if backend is None or not finite or getattr(backend, "_set_trial_value_without_commit", None) is None:
        set_trial_attrs(trial, user, system)
        study.tell(trial, values)
        return
    if type(study.sampler).after_trial is not BaseSampler.after_trial:  # the default does nothing
        study.sampler.after_trial(study, study._storage.get_trial(trial._trial_id), optuna.trial.TrialState.COMPLETE, values)
    with rdb._create_scoped_session(backend.scoped_session) as s:
        model = models.TrialModel.find_or_raise_by_id(trial._trial_id, s, for_update=True)
        backend.check_trial_is_updatable(trial._trial_id, model.state)
        _attr_rows(s, models.TrialUserAttributeModel, trial._trial_id, user)
        _attr_rows(s, models.TrialSystemAttributeModel, trial._trial_id, system)
        for objective, value in enumerate(values):
            backend._set_trial_value_without_commit(s, model, objective, float(value))
        model.state = optuna.trial.TrialState.COMPLETE
        model.datetime_complete = datetime.datetime.now()


_held = threading.local()  # (trial id, [held parameter writes]) while a thread samples


def _hold_param_writes(backend: Any) -> None:
    """Make the storage's parameter writes holdable, once per storage object: a thread inside
    ``sample_then_write`` keeps them for one transaction, any other write goes through."""
    if getattr(backend, "_autocompress_holds_params", False):
        return
    write = backend._set_trial_param

    def held_or_written(trial_id: int, name: str, value: float, distribution: Any, previous: Any) -> None:
        held = getattr(_held, "trial", None)
        if held is not None and held[0] == trial_id:
            held[1].append((name, value, distribution, previous))
        else:
            write(trial_id, name, value, distribution, previous)

    backend._set_trial_param = held_or_written
    backend._autocompress_holds_params = True


T = TypeVar("T")


def sample_then_write(trial: optuna.Trial, sample: Callable[[optuna.Trial], T], user: Callable[[T], dict[str, Any]]) -> T:
    """Run ``sample(trial)`` (which suggests every parameter), then write the parameters it
    drew and ``user(result)`` as user attributes in one transaction. Optuna commits each
    suggestion on its own: sixteen layers' knobs were sixteen commits. A failure while sampling
    writes nothing; the RUNNING trial is failed by the caller or recovered as stale."""
    backend = _rdb(trial.storage)
    if backend is None:
        result = sample(trial)
        set_trial_attrs(trial, user(result))
        return result
    _hold_param_writes(backend)
    held: list[tuple[Any, ...]] = []
    _held.trial = (trial._trial_id, held)
    try:
        result = sample(trial)
    finally:
        _held.trial = None
    _write_trial(backend, trial._trial_id, held, user(result), {})
    return result


def state_counts(study: optuna.Study) -> collections.Counter[optuna.trial.TrialState]:
    """The study's trials by state: one GROUP BY on a database (Optuna reads every unfinished
    trial whole to count them), a listing elsewhere."""
    from optuna.storages._rdb import models

    backend = _rdb(study)
    if backend is None:
        return collections.Counter(t.state for t in study.get_trials(deepcopy=False))
    import sqlalchemy as sa

    query = sa.select(models.TrialModel.state, sa.func.count()).where(models.TrialModel.study_id == study._study_id).group_by(models.TrialModel.state)
    with backend.engine.connect() as conn:
        return collections.Counter({state: int(n) for state, n in conn.execute(query)})


def ask(study: optuna.Study, queue_empty: bool) -> optuna.Trial:
    """``study.ask()``; when the caller has just counted no WAITING trial, without Optuna's
    search of the queue, which reads every unfinished trial whole on each ask."""
    if not queue_empty or _rdb(study) is None or not hasattr(study, "_thread_local"):
        return study.ask()
    study._thread_local.cached_all_trials = None  # as ask does: samplers see the latest trials
    return optuna.Trial(study, study._storage.create_new_trial(study._study_id))


def count_trials(study: optuna.Study, states: tuple[optuna.trial.TrialState, ...]) -> int:
    """How many of the study's trials are in ``states`` (one query on a database)."""
    counts = state_counts(study)
    return sum(counts[state] for state in states)


@dataclass(frozen=True)
class TrialRow:
    """What the Pareto analysis reads of a trial: the attributes of ``FrozenTrial`` it uses."""

    number: int
    trial_id: int
    state: optuna.trial.TrialState
    values: list[float] | None
    datetime_complete: datetime.datetime | None


def trial_rows(study: optuna.Study, states: tuple[optuna.trial.TrialState, ...] | None = None) -> list[TrialRow]:
    """Every trial's number, state, values and completion time, in number order: two queries
    on a database, where ``get_trials`` reads every attribute of every trial (seconds per
    thousand trials with their plans and logs)."""
    from optuna.storages._rdb import models

    backend = _rdb(study)
    if backend is None:
        return [TrialRow(t.number, t._trial_id, t.state, t.values, t.datetime_complete) for t in study.get_trials(deepcopy=False, states=states)]
    import sqlalchemy as sa

    trials, values = models.TrialModel.__table__.c, models.TrialValueModel.__table__.c
    query = sa.select(trials.trial_id, trials.number, trials.state, trials.datetime_complete).where(trials.study_id == study._study_id)
    if states is not None:
        query = query.where(trials.state.in_(states))
    by_trial: dict[int, list[tuple[int, float]]] = collections.defaultdict(list)
    with backend.engine.connect() as conn:
        rows = conn.execute(query.order_by(trials.number)).all()
        ids = sa.select(trials.trial_id).where(trials.study_id == study._study_id).scalar_subquery()
        for trial_id, objective, value, kind in conn.execute(
            sa.select(values.trial_id, values.objective, values.value, values.value_type).where(values.trial_id.in_(ids))
        ):
            by_trial[trial_id].append((objective, models.TrialValueModel.stored_repr_to_value(value, kind)))
    out = []
    for trial_id, number, state, completed in rows:
        stored = sorted(by_trial.get(trial_id, []))
        out.append(TrialRow(number, trial_id, state, [v for _, v in stored] if stored else None, completed))
    return out


def trials_by_number(study: optuna.Study, numbers: Iterable[int]) -> dict[int, optuna.trial.FrozenTrial]:
    """The named trials whole (those the study has), each read alone: a report needs its front's
    attributes, not the study's."""
    storage = study._storage
    out = {}
    for number in numbers:
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        except KeyError:
            continue
        out[number] = storage.get_trial(trial_id)
    return out


def intermediate_values(study: optuna.Study, states: tuple[optuna.trial.TrialState, ...]) -> dict[int, dict[int, float]]:
    """Trial number -> its intermediate values by step, for the trials in ``states`` (one query on
    a database): what a pruner learns from when a search resumes."""
    from optuna.storages._rdb import models

    backend = _rdb(study)
    if backend is None:
        return {t.number: dict(t.intermediate_values) for t in study.get_trials(deepcopy=False, states=states)}
    import sqlalchemy as sa

    trials, inter = models.TrialModel.__table__.c, models.TrialIntermediateValueModel.__table__.c
    query = (
        sa.select(trials.number, inter.step, inter.intermediate_value, inter.intermediate_value_type)
        .join_from(models.TrialModel.__table__, models.TrialIntermediateValueModel.__table__, trials.trial_id == inter.trial_id)
        .where(trials.study_id == study._study_id, trials.state.in_(states))
    )
    out: dict[int, dict[int, float]] = collections.defaultdict(dict)
    with backend.engine.connect() as conn:
        for number, step, value, kind in conn.execute(query):
            out[number][step] = float(models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, kind))
    return dict(out)
