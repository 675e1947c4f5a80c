"""Non-dominated sorting, hypervolume, knee and constraints against small fronts worked by hand."""

from __future__ import annotations

import itertools

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from autocompress.pareto import FrontState, analyse, dominates_loss, hypervolume, hypervolume_history, knee_index, non_dominated

BASELINE = {"accuracy": 0.9, "size_bytes": 1000, "latency_ms": 1.0}


def _trial(number: int, accuracy: float, size: int, latency: float) -> optuna.trial.FrozenTrial:
    t = create_trial(values=[accuracy, size, latency], state=TrialState.COMPLETE)
    t.number = number
    return t


def test_non_dominated_by_hand() -> None:
    losses = np.array([[1, 5], [2, 3], [3, 3], [4, 1], [5, 5], [2, 3]], dtype=float)
    # (3,3) is dominated by (2,3); (5,5) by everything; the duplicate (2,3) pair dominates neither.
    assert non_dominated(losses).tolist() == [True, True, False, True, False, True]


def test_hypervolume_by_hand() -> None:
    ref = np.array([1.0, 1.0])
    assert hypervolume(np.array([[0.5, 0.5]]), ref) == pytest.approx(0.25)
    # two boxes 0.8x0.2 and 0.2x0.8 overlapping in 0.2x0.2: 0.16 + 0.16 - 0.04
    assert hypervolume(np.array([[0.2, 0.8], [0.8, 0.2]]), ref) == pytest.approx(0.28)
    # a point outside the reference adds nothing; a dominated point adds nothing
    assert hypervolume(np.array([[0.5, 0.5], [1.5, 0.1], [0.6, 0.6]]), ref) == pytest.approx(0.25)
    ref3 = np.array([1.0, 1.0, 1.0])
    assert hypervolume(np.array([[0.5, 0.5, 0.5]]), ref3) == pytest.approx(0.125)
    assert hypervolume(np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5]]), ref3) == pytest.approx(0.25 + 0.25 - 0.125)
    assert hypervolume(np.zeros((0, 3)), ref3) == 0.0


def test_knee_is_closest_to_the_ideal_point() -> None:
    front = np.array([[0.0, 1.0], [0.3, 0.3], [1.0, 0.0]])
    assert knee_index(front) == 1


def test_analysis_in_baseline_relative_terms() -> None:
    trials = [
        _trial(0, 0.90, 250, 1.0),  # 4x, no loss
        _trial(1, 0.89, 100, 1.0),  # 10x, 1 point lost
        _trial(2, 0.88, 200, 1.1),  # dominated by trial 1
        _trial(3, 0.70, 20, 0.5),  # 50x but 20 points lost: outside the 10-point reference
    ]
    analysis = analyse(trials, BASELINE)
    assert analysis.front == [3, 1, 0]  # smallest first; trial 3 is still non-dominated
    assert analysis.reference == pytest.approx([0.10, 1.0, 2.0])
    # Losses (drop, size ratio, latency ratio): t0 (0, .25, 1), t1 (.01, .1, 1); t3 is outside.
    # Union of two boxes to (0.1, 1, 2): 0.1*0.75*1 + 0.09*0.9*1 - 0.09*0.75*1
    assert analysis.hypervolume == pytest.approx(0.075 + 0.081 - 0.0675)
    assert analysis.projections["accuracy-size"] == [0, 1, 3]


def test_constraint_keeps_infeasible_trials_out_of_the_front() -> None:
    trials = [_trial(0, 0.90, 250, 1.0), _trial(1, 0.89, 100, 1.0), _trial(2, 0.85, 50, 1.0)]
    analysis = analyse(trials, BASELINE, max_accuracy_drop=2.0)
    assert analysis.front == [1, 0]
    assert [p.feasible for p in analysis.points] == [True, True, False]
    assert analysis.reference[0] == pytest.approx(0.02)


def test_nothing_feasible_names_the_closest_trials() -> None:
    trials = [_trial(0, 0.80, 250, 1.0), _trial(1, 0.85, 100, 1.0), _trial(2, 0.50, 50, 1.0), _trial(3, 0.7, 60, 1.0)]
    analysis = analyse(trials, BASELINE, max_accuracy_drop=1.0)
    assert analysis.front == [] and analysis.hypervolume == 0.0 and analysis.knee is None
    assert analysis.closest == [1, 0, 3]


def test_hypervolume_history_never_falls() -> None:
    trials = [_trial(i, 0.9 - 0.01 * (i % 3), 1000 // (i + 2), 1.0) for i in range(8)]
    for t in trials:
        t.datetime_complete = t.datetime_start
    history = [hv for _, hv in hypervolume_history(trials, BASELINE)]
    assert len(history) == 8 and all(b >= a for a, b in itertools.pairwise(history)) and history[-1] > 0


def test_a_trial_at_chance_level_is_never_on_the_front() -> None:
    """With no constraint at all, a model no better than always answering the most common class
    (10% of 360 images here) stays off the front; 15% is beyond luck and may stay."""
    baseline = {**BASELINE, "chance_accuracy": 0.1, "val_count": 360}
    trials = [_trial(0, 0.90, 250, 1.0), _trial(1, 0.11, 10, 1.0), _trial(2, 0.15, 12, 1.0)]
    analysis = analyse(trials, baseline, max_accuracy_drop=None)
    assert [p.at_chance for p in analysis.points] == [False, True, False]
    assert analysis.front == [2, 0] and analysis.knee in (0, 2)


def test_the_default_constraint_is_one_point_and_the_knee_is_feasible(tmp_path) -> None:
    from autocompress.config import StudyConfig, load_config

    assert StudyConfig().pareto.max_accuracy_drop == 1.0
    (tmp_path / "none.yaml").write_text("pareto: {max_accuracy_drop: null}\n")
    assert load_config(tmp_path / "none.yaml").pareto.max_accuracy_drop is None  # null turns it off
    trials = [_trial(0, 0.90, 250, 1.0), _trial(1, 0.895, 100, 1.0), _trial(2, 0.80, 5, 0.2)]
    analysis = analyse(trials, BASELINE, StudyConfig().pareto.max_accuracy_drop)
    assert analysis.front == [1, 0] and analysis.knee in (0, 1)  # trial 2, 10 points lost, is not the knee


def _brute_non_dominated(losses: np.ndarray) -> np.ndarray:
    """The definition, pairwise: row j is kept unless some row dominates it."""
    return np.array([not any(dominates_loss(a, b) for a in losses) for b in losses], dtype=bool)


def test_the_sweep_keeps_exactly_the_non_dominated_rows_ties_and_duplicates_included() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 40, 200):
        losses = rng.integers(0, 5, size=(n, 3)).astype(float)  # few values: many ties and duplicates
        assert non_dominated(losses).tolist() == _brute_non_dominated(losses).tolist()


def _random_trials(n: int, seed: int) -> list[optuna.trial.FrozenTrial]:
    """Trials with ties, exact duplicates, infeasible drops and chance-level accuracies."""
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        if i and rng.random() < 0.1:  # an exact duplicate of an earlier trial's values
            accuracy, size, latency = trials[int(rng.integers(0, i))].values
        else:
            accuracy = float(rng.choice([0.9, 0.895, 0.89, 0.88, 0.85, 0.5, 0.1]) - rng.integers(0, 3) * 0.001)
            size, latency = float(rng.integers(10, 400)), float(rng.choice([0.5, 0.8, 1.0, 1.2]))
        trials.append(_trial(i, accuracy, int(size), latency))
    return trials


@pytest.mark.parametrize("max_drop", [None, 1.0, 3.0])
def test_the_incremental_front_equals_a_full_recomputation_after_every_trial(max_drop: float | None) -> None:
    baseline = {**BASELINE, "chance_accuracy": 0.1, "val_count": 360}
    trials = _random_trials(300, seed=int(max_drop or 0))
    state = FrontState(baseline, max_drop)
    for k in range(1, len(trials) + 1):
        state.add(trials[:k])  # fed the whole study each time, as the driver is: seen trials are skipped
        full, inc = analyse(trials[:k], baseline, max_drop), state.analysis()
        assert inc.front == full.front and inc.knee == full.knee
        assert inc.hypervolume == pytest.approx(full.hypervolume, rel=1e-12, abs=1e-15)
        assert inc.closest == full.closest and inc.feasible_count == full.feasible_count
    # A resumed driver rebuilds the same state from the stored trials in one call, in any order.
    resumed = FrontState(baseline, max_drop)
    resumed.add(list(reversed(trials)))
    assert resumed.analysis().front == state.analysis().front and resumed.knee == state.knee
    assert resumed.hypervolume == pytest.approx(state.hypervolume, rel=1e-12, abs=1e-15)
