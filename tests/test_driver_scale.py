"""The driver's incremental analysis against a full recomputation, on a real study grown by the
real Driver with the benchmark's synthetic runner (instant results; Optuna, SQLite and the
project's tables all real)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from autocompress import _optuna
from autocompress.config import load_config
from autocompress.driver import Driver
from autocompress.pareto import study_analysis
from benchmarks.driver_scale import SyntheticRunner, study_file


def _last_snapshot(url: str) -> tuple[list[int], float, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT MAX(snapshot) FROM autocompress_front")).scalar_one()
        front = [r[0] for r in conn.execute(sa.text("SELECT trial_number FROM autocompress_front WHERE snapshot = :n"), {"n": n})]
        hv = conn.execute(sa.text("SELECT hypervolume FROM autocompress_hypervolume WHERE n_complete = :n"), {"n": n}).scalar_one()
    engine.dispose()
    return sorted(front), hv, n


def test_the_driver_s_incremental_front_equals_a_full_analysis_and_survives_a_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scale.db'}"
    for target in (30, 60):  # the second run resumes: its state is rebuilt from the stored trials
        config = load_config(study_file(tmp_path, url, "random", target))
        driver = Driver(config, runner=SyntheticRunner(capacity=4), progress=False)
        study = driver.run()
        full = study_analysis(study)
        front, hv, n = _last_snapshot(url)
        assert n == target == len(full.points)
        assert front == sorted(full.front) and len(front) > 1
        assert hv == pytest.approx(full.hypervolume, rel=1e-12)
        assert {"ask", "sample", "tell", "artifacts", "analysis", "tables"} <= set(driver.timings)  # each part was timed
    assert len(optuna.load_study(study_name="scale", storage=url).trials) == 60


def _draw(trial: optuna.Trial) -> dict[str, object]:
    return {
        "sparsity": trial.suggest_float("fc.sparsity", 0.0, 0.9, step=0.05),
        "bits": trial.suggest_categorical("fc.bits", [2, 4, 8, 32]),
        "rank": trial.suggest_float("fc.rank", 0.05, 1.0, log=True),
        "channels": trial.suggest_int("conv.keep", 1, 16),
    }


def _stored(trial: optuna.trial.FrozenTrial) -> tuple[object, ...]:
    return (trial.state, trial.values, trial.params, trial.distributions, trial.user_attrs, trial.system_attrs)


def test_one_transaction_writes_store_what_optuna_s_own_calls_store(tmp_path: Path) -> None:
    """The driver's batched writes (a trial's parameters with its owner and plan; its attributes,
    constraint, values and state at the end) leave the same trial as Optuna's public calls,
    and the light reads equal get_trials."""
    directions = ["maximize", "minimize", "minimize"]
    fast = optuna.create_study(storage=f"sqlite:///{tmp_path / 'fast.db'}", directions=directions, sampler=optuna.samplers.RandomSampler(seed=3))
    plain = optuna.create_study(storage=f"sqlite:///{tmp_path / 'plain.db'}", directions=directions, sampler=optuna.samplers.RandomSampler(seed=3))
    user = {"metrics": {"accuracy_drop": 0.4, "latency_ms": 1.5}, "drop_points": 0.4}
    for number in range(3):
        values = [0.9 - number / 100, 1000.0 + number, 1.5]
        trial = _optuna.ask(fast, queue_empty=True)
        drawn = _optuna.sample_then_write(trial, _draw, lambda d: {"driver_id": "d1", "plan": d})
        _optuna.complete_trial(fast, trial, values, user, _optuna.constraint_attrs("max_accuracy_drop", number - 1.5))
        other = plain.ask()
        assert _draw(other) == drawn
        other.set_user_attr("driver_id", "d1")
        other.set_user_attr("plan", drawn)
        for key, value in user.items():
            other.set_user_attr(key, value)
        other.set_constraint("max_accuracy_drop", number - 1.5)
        plain._storage.set_trial_system_attr(other._trial_id, "constraints", [number - 1.5])
        plain.tell(other, values)
    assert [_stored(t) for t in fast.trials] == [_stored(t) for t in plain.trials]

    # A queued plan is popped (the caller counted a WAITING trial), a failed and a running trial
    # are listed by the light reads as get_trials lists them.
    fast.enqueue_trial({"fc.sparsity": 0.5, "fc.bits": 4, "fc.rank": 0.5, "conv.keep": 3})
    queued = _optuna.ask(fast, queue_empty=False)
    assert _optuna.sample_then_write(queued, _draw, lambda d: {})["channels"] == 3
    fast.tell(queued, state=optuna.trial.TrialState.FAIL)
    _optuna.sample_then_write(_optuna.ask(fast, queue_empty=True), _draw, lambda d: {})
    seen = [(t.number, t.state, t.values, t.datetime_complete) for t in fast.get_trials(deepcopy=False)]
    assert [(r.number, r.state, r.values, r.datetime_complete) for r in _optuna.trial_rows(fast)] == seen
    assert _optuna.state_counts(fast) == {optuna.trial.TrialState.COMPLETE: 3, optuna.trial.TrialState.FAIL: 1, optuna.trial.TrialState.RUNNING: 1}
    assert set(_optuna.trials_by_number(fast, [1, 4, 99])) == {1, 4}

    # A parameter drawn from another distribution than the study's is refused, and nothing of
    # that trial's sampling is written.
    def clash(trial: optuna.Trial) -> int:
        trial.suggest_float("conv.extra", 0.0, 1.0)
        return trial.suggest_int("fc.bits", 2, 8)

    trial = _optuna.ask(fast, queue_empty=True)
    with pytest.raises(ValueError):
        _optuna.sample_then_write(trial, clash, lambda d: {"plan": d})
    assert fast._storage.get_trial(trial._trial_id).params == {}


def test_asking_ahead_in_a_thread_keeps_the_count_exact_and_stops_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers in other processes: the next trial is asked in a thread while they run. The
    study ends with exactly the target, every freed worker's wait is recorded, and an error in
    the thread stops the search with no trial left RUNNING."""
    url = f"sqlite:///{tmp_path / 'scale.db'}"
    config = load_config(study_file(tmp_path, url, "tpe", 40))
    driver = Driver(config, runner=SyntheticRunner(capacity=4, trial_seconds=0.02), progress=False)
    study = driver.run()
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 40 and len(states) == 40
    assert len(driver.handoffs) == 40 - 4  # every result but the last four handed a worker its next trial
    assert driver.timings["ahead_ask"] > 0  # the thread asked (the first four were asked inline)

    from autocompress.space import SearchSpace

    drawn = SearchSpace.sample
    calls = {"n": 0}

    def fails_on_the_sixth(self: SearchSpace, trial: optuna.Trial) -> object:
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("sampler broke")
        return drawn(self, trial)

    monkeypatch.setattr(SearchSpace, "sample", fails_on_the_sixth)
    config = load_config(study_file(tmp_path, url, "tpe", 80))
    with pytest.raises(RuntimeError, match="sampler broke"):
        Driver(config, runner=SyntheticRunner(capacity=4, trial_seconds=0.02), progress=False).run()
    trials = optuna.load_study(study_name="scale", storage=url).trials
    assert not [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    reasons = [t.user_attrs.get("fail_reason", "") for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert any("sampler broke" in r for r in reasons) and len(reasons) == 5  # the broken one and the four in flight


def test_every_sampler_name_makes_a_sampler_and_auto_follows_the_study_size() -> None:
    from autocompress.config import SAMPLERS
    from autocompress.driver.setup import AUTO_TPE_MAX_TRIALS, SAMPLER_FACTORIES, make_sampler

    assert set(SAMPLERS) == {*SAMPLER_FACTORIES, "auto"}
    for name in SAMPLER_FACTORIES:
        study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=make_sampler(name, 0))
        for k in range(3):
            trial = study.ask()
            _draw(trial)
            study.tell(trial, [0.9 - k / 10, 100.0 + k, 1.0])
        assert len(study.best_trials) >= 1
    assert isinstance(make_sampler("auto", 0, AUTO_TPE_MAX_TRIALS), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("auto", 0, AUTO_TPE_MAX_TRIALS + 1), optuna.samplers.NSGAIISampler)
