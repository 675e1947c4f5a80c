"""Multi-fidelity trials: the pruners' decisions (every entry of ``fidelity.PRUNERS`` held to one
contract), and real searches that stop trials at rungs, on real Ray and after a real SIGKILL."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

from autocompress import fidelity
from autocompress.cli import main
from autocompress.config import load_config
from autocompress.driver import Driver
from autocompress.fidelity import PRUNERS, FrontPoint, Rung
from autocompress.report import checked_analysis, print_report
from tests.helpers import run_cli, write_study_config

BASELINE = {"accuracy": 0.97, "size_bytes": 100_000, "latency_ms": 1.0}


def _history(n: int, gains: dict[int, float], final: float = 0.96) -> list[tuple[int, TrialState, dict[int, float], float | None]]:
    """``n`` finished trials that gained ``gains[step]`` points of accuracy from each rung on."""
    return [(i, TrialState.COMPLETE, {step: final - gain for step, gain in gains.items()}, final) for i in range(n)]


@pytest.mark.parametrize("name", PRUNERS.names())
def test_every_pruner_learns_judges_and_forgets(name: str) -> None:
    """The registry's contract: each pruner builds from the same inputs, learns from a study's
    finished trials, judges reports at every rung, and takes every way a trial ends."""
    # Hyperband's brackets promote at 5 and 15 (its smallest rung times powers of 3).
    pruner = fidelity.make_pruner(name, BASELINE, 1.0, (0, 5, 15), 20)
    low = [(n, TrialState.COMPLETE, {0: 0.04, 5: 0.3, 15: 0.5}, 0.55) for n in (7, 8)]  # started low, ended low
    pruner.start([*_history(6, {0: 0.3, 5: 0.05, 15: 0.01}), (6, TrialState.PRUNED, {0: 0.2}, None), *low])
    decisions = {}
    for number, accuracy in ((10, 0.05), (11, 0.97)):
        decisions[number] = [pruner.decide(number, Rung(step, accuracy, 50_000, 0.5), []) for step in (0, 5, 15)]
        assert all(d is None or isinstance(d, str) for d in decisions[number])
    assert not any(decisions[11])  # better than the finished trials at every rung: never stopped
    if name != "none":
        assert any(decisions[10])  # 5% where the finished trials had 66% to 95%: stopped
    pruner.finished(10, TrialState.PRUNED, {0: 0.05}, None)
    pruner.finished(11, TrialState.COMPLETE, {0: 0.97, 5: 0.97, 15: 0.97}, 0.97)
    pruner.finished(12, TrialState.FAIL, {}, None)


def test_the_front_rule_stops_what_cannot_reach_the_limit_or_the_front() -> None:
    rule = fidelity.FrontRule(BASELINE, max_drop=1.0)
    assert rule.decide(0, Rung(0, 0.1, 1000, 0.5), []) is None  # nothing learned yet: nobody is judged
    # Finished trials: three started at 55% and gained 30 points, three at 90% and gained 6.
    rule.start([(n, TrialState.COMPLETE, {0: 0.55, 5: 0.83}, 0.85) for n in range(3)])
    rule.start([(n, TrialState.COMPLETE, {0: 0.90, 5: 0.94}, 0.96) for n in range(3, 6)])
    # 60% + at most 30 points (the most any trial as low gained) = 90%: over the 1-point limit.
    why = rule.decide(1, Rung(0, 0.60, 1000, 0.5), [])
    assert why is not None and "1-point limit" in why and "90.00%" in why
    assert rule.decide(1, Rung(0, 0.92, 1000, 0.5), []) is None  # may reach 100%
    # No finished trial was as low as 40%: a recovery never seen is not ruled out.
    assert rule.decide(1, Rung(0, 0.40, 1000, 0.5), []) is None
    front = [FrontPoint(7, accuracy=0.965, size_bytes=800, latency_ms=0.4)]
    # 94.5% + 2 points (the most trials as low at step 5 gained) = 96.5% at best, and trial 7
    # has that in fewer bytes and less time.
    why = rule.decide(2, Rung(5, 0.945, 1000, 0.5), front)
    assert why is not None and "trial 7" in why
    assert rule.decide(2, Rung(5, 0.945, 700, 0.5), front) is None  # smaller than trial 7
    assert rule.decide(2, Rung(5, 0.945, 1000, 0.3), front) is None  # faster than trial 7
    assert rule.decide(2, Rung(5, 0.95, 1000, 0.5), front) is None  # may beat trial 7's accuracy


def test_optunas_pruners_judge_accuracy_alone_and_relearn_a_resumed_study() -> None:
    median = fidelity.make_pruner("median", BASELINE, None, (0, 5), 10)
    median.start(_history(fidelity.MIN_HISTORY, {5: 0.05}))  # 91% at step 5
    assert median.decide(1, Rung(5, 0.80, 0, None), []) is not None
    assert median.decide(2, Rung(5, 0.93, 0, None), []) is None


@pytest.mark.e2e
def test_a_search_on_ray_trains_its_baseline_on_a_worker_and_stores_pruned_trials_that_really_stopped(tmp_path: Path, ray_local) -> None:
    """The baseline (no weights, no cache) trains on a Ray worker, a line per epoch. Then workers
    report at rungs through Ray, the driver stores each report as an intermediate value and
    stops trials: each PRUNED trial fine-tuned fewer steps than the budget, holds the rungs it
    reached, and none is on the front; PRUNED trials do not count toward the target."""
    config = write_study_config(
        tmp_path,
        tmp_path / "baselines",
        # Random plans from the first trial: some start low and end low, which is what lets the
        # rule judge the next ones as low.
        {"trials": 8, "workers": 2, "seed": 3, "pruner": "front", "rungs": [0, 6], "sampler": "random", "warm_start": False},
        storage=f"sqlite:///{tmp_path / 's.db'}",
        artifact_dir=str(tmp_path / "artifacts"),
        task={"model": "digits-mlp", "train_epochs": 8},
        finetune={"steps": 12},
        deploy={"max_seconds": 0.05},
    )
    lines: list[str] = []
    driver = Driver(load_config(config), progress=False, say=lines.append)
    study = driver.run()
    trained_by = study.user_attrs["baseline"]["trained_by"]
    assert trained_by["node_id"] in {node["NodeID"] for node in ray_local.nodes()} and trained_by["pid"] != os.getpid()
    assert any(line.strip().startswith(f"training on Ray node {trained_by['node_id'][:12]}") for line in lines)
    assert any(line.strip().startswith("epoch 8/8: loss") and "validation accuracy" in line for line in lines)
    assert any(line.strip().startswith("data: digits: ") for line in lines)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(complete) == 8
    assert pruned and driver.pruned == len(pruned)
    for trial in pruned:
        steps = trial.user_attrs["finetune_steps"]
        assert steps < 12  # the worker really stopped
        reached = sorted(trial.intermediate_values)
        assert reached and reached == [r["step"] for r in trial.user_attrs["rungs"]] and max(reached) <= steps
        assert trial.user_attrs["pruned_at"] in (0, 6) and trial.user_attrs["prune_reason"]
        assert trial.user_attrs["size_bytes"] > 0 and trial.user_attrs["latency_ms"] > 0  # measured before fine-tuning
        assert trial.constraints["max_accuracy_drop"] > 0  # never feasible
    for trial in complete:
        assert sorted(trial.intermediate_values) == [0, 6] and trial.user_attrs["finetune_steps"] == 12
        # The accuracy limit reaches the samplers as Optuna's constraint (they read FrozenTrial.constraints).
        assert trial.constraints["max_accuracy_drop"] == pytest.approx(trial.user_attrs["metrics"]["accuracy_drop"] - 1.0)
    analysis = checked_analysis(study)
    shown = set(analysis.front) | set(analysis.closest)  # the front, or the closest when none is feasible
    assert shown and not shown & {t.number for t in pruned}


@pytest.mark.e2e
def test_a_pruning_search_killed_mid_trial_resumes_to_exact_counts(tmp_path: Path, cache_dir: Path) -> None:
    """SIGKILL right after a rung's report is stored (the trial RUNNING, with an intermediate
    value); the resumed search fails and re-queues it, relearns from the stored rungs, and ends
    with exactly the target of COMPLETE trials."""
    config = write_study_config(
        tmp_path,
        cache_dir,
        {"trials": 6, "workers": 0, "seed": 3, "pruner": "front", "rungs": [0, 3], "sampler": "random", "warm_start": False},
        storage=f"sqlite:///{tmp_path / 's.db'}",
        artifact_dir=str(tmp_path / "artifacts"),
        task={"model": "digits-mlp"},
        finetune={"steps": 6},
        deploy={"max_seconds": 0.05},
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    killed = run_cli("search", str(config), "--no-progress", cwd=tmp_path, env={"AUTOCOMPRESS_KILL_AT": "rung-reported:9"})
    assert killed.returncode == -9, killed.stderr
    before = optuna.load_study(study_name="autocompress", storage=url)
    running = before.get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1 and running[0].intermediate_values  # killed mid-trial, a rung stored

    assert main(["search", str(config), "--no-progress"]) == 0  # the resume, in this process
    study = optuna.load_study(study_name="autocompress", storage=url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 6
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert study.trials[running[0].number].state == TrialState.FAIL
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert all(t.user_attrs["finetune_steps"] < 6 for t in pruned)
    console = Console(record=True, width=200)
    print_report(study, console)
    assert (f"{len(pruned)} pruned" in console.export_text()) == bool(pruned)
