"""The baseline, measured once per study by a worker on the deploy target the trials use."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from autocompress import _faults, _optuna
from autocompress.baseline import Baseline, objective_bytes, resolve_max_drop
from autocompress.config import ParetoConfig, StudyConfig
from autocompress.deletion import plan_deletion
from autocompress.deploy.target import DeployConfig
from autocompress.driver.telling import Teller
from autocompress.errors import AutocompressError, SearchError
from autocompress.plan import Result
from autocompress.runners import Runner
from autocompress.stats import accuracy, chance_accuracy, pack_correct
from autocompress.tasks import Task, correct_of


def measure_baseline(task: Task, runner: Runner, deploy: DeployConfig, pareto_config: ParetoConfig | None = None) -> tuple[dict[str, Any], Result]:
    """The uncompressed model's numbers (its fp32 artifact from the same packer, its deployed
    form on the deploy target) and the result, measured by a worker: on the target the trials use.
    A protocol task's test split is scored there too (its data opens only on the workers)."""
    result = runner.baseline()
    if result.error:
        raise SearchError(f"the baseline model cannot be measured: {result.error}")
    metric = task.metric_info
    scores: dict[str, Any]
    if task.data is None:
        scores = {
            "accuracy": result.accuracy,
            "test_accuracy": result.test_score,
            # Per-sample metric rows, to pair each trial's drop with them (a paired bootstrap).
            "val_scores": result.val_scores,
            "test_scores": result.test_scores,
            "val_count": int(result.val_scores.split(":")[1]) if result.val_scores else None,
            "num_classes": task.num_classes,
            # The best constant prediction's score (a built-in metric's chance level): a trial
            # no better is never feasible. None: a metric of the user's own, no chance check.
            "chance_score": result.chance_score,
        }
    else:
        test_correct = correct_of(task.build_model(), task.data.x_test, task.data.y_test).numpy()
        scores = {
            "accuracy": result.accuracy,
            "test_accuracy": accuracy(test_correct),
            # Per-image correctness, to pair each trial's drop with it (stats.paired_drop), and the
            # most common class's share: a trial no better than it is never on the front.
            "val_correct": result.val_correct,
            "test_correct": pack_correct(test_correct),
            "val_count": len(task.data.y_val),
            "chance_accuracy": chance_accuracy(task.data.y_val.numpy()),
        }
    pareto_config = pareto_config or ParetoConfig()
    numbers = {
        **scores,
        "metric": metric.to_dict(),
        # The feasibility limit in the metric's units, resolved once against this baseline.
        "max_drop": resolve_max_drop(pareto_config.max_drop, pareto_config.max_accuracy_drop, metric, result.accuracy),
        # The size objective (pareto.size), recorded here: every trial is sized the same way.
        "size_objective": pareto_config.size,
        "size_bytes": objective_bytes(result.size_bytes, result.onnx_bytes, pareto_config.size),
        "packed_bytes": result.size_bytes,
        "latency_ms": result.latency_ms,
        "latency_cv": result.latency_cv,
        "latency_capped": result.latency_capped,
        "latency_backend": result.latency_backend,
        "latency_node": result.latency_node,
        "onnx_bytes": result.onnx_bytes,
        "deploy": deploy.describe(result.worker.get("target")),
        "params": result.params,
        "macs": result.macs,
    }
    if task.trained_by:  # trained by this search or an earlier one: where (host, device, Ray node)
        numbers["trained_by"] = task.trained_by
    return numbers, result


def establish_baseline(cfg: StudyConfig, task: Task, runner: Runner, teller: Teller, say: Callable[[str], None]) -> None:
    """The baseline measured, said, checked against chance (a baseline at chance stops the search
    and removes the study it just created, unless allowed) and stored."""
    start = time.monotonic()
    say(f"measuring the baseline on the deploy target ({cfg.deploy.runtime} {cfg.deploy.precision})")
    baseline, result = measure_baseline(task, runner, cfg.deploy, cfg.pareto)
    metric, limit = task.metric_info, baseline["max_drop"]
    say(
        f"  {metric.name} {metric.format(baseline['accuracy'])} ({metric.better} is better), "
        f"{baseline['size_bytes'] / 1024:.1f} KB, {baseline['latency_ms']:.3f} ms ({time.monotonic() - start:.1f} s); "
        + (f"feasible: a drop of at most {limit:.4g} {metric.drop_unit()}" if limit is not None else "no drop limit")
    )
    if task.protocol is not None:  # in-memory classification keeps its binomial test, said in the docs
        chance = baseline.get("chance_score")
        say(
            f"  chance level: {metric.name} {metric.format(chance)} by the best constant prediction; a trial no better is never feasible"
            if chance is not None
            else f"  chance level: off (no constant prediction is known for {metric.name}, a metric of the task's own)"
        )
    base = Baseline.of(baseline)
    if base.at_chance(base.accuracy):
        if not cfg.search.allow_chance_baseline:
            _abandon(cfg, teller.study)
            raise SearchError(chance_baseline_error(cfg, base))
        baseline["at_chance"] = True  # searched anyway, as asked: reports mark the study
        say("  warning: the baseline is no better than chance (search.allow_chance_baseline): drops compare with a model that has not learned")
    _faults.checkpoint("baseline-measured")
    teller.store_baseline(baseline, result)


def _abandon(config: StudyConfig, study: optuna.Study) -> None:
    """A study this search just created, with no trial run: removed whole, so fixing the
    baseline and running the same command starts clean (a study with trials is left)."""
    states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL, TrialState.PRUNED)
    if _optuna.count_trials(study, states):
        return
    with contextlib.suppress(AutocompressError, KeyError):  # another driver of the study removed it first
        plan_deletion(config.storage, study.study_name).run()


def chance_baseline_error(config: StudyConfig, baseline: Baseline) -> str:
    """One line: what the baseline measured, what chance scores, and the fix for where its weights came from."""
    from autocompress.tasks.custom import is_custom, task_protocol
    from autocompress.tasks.spec import TaskSpec

    spec, metric = config.task, baseline.metric
    if spec.weights is not None:
        fix = f"check that checkpoint {spec.weights} (task.weights) was saved after training"
    elif task_protocol(spec) is not None:
        fix = f"task function '{spec.model}' returned an untrained model: train it there, or point task.weights at a checkpoint"
    elif is_custom(spec.model) and spec.train_epochs == TaskSpec().train_epochs:
        fix = (
            f"task function '{spec.model}' returned an untrained model: train it there, point task.weights at a checkpoint, "
            "or set task.train_epochs so autocompress trains it"
        )
    else:
        fix = f"autocompress trained it for {spec.train_epochs} epochs without it learning: raise task.train_epochs or lower task.train_lr"
    if baseline.val_count is not None and baseline.val_count < 100:
        fix += f" (or give it more than {baseline.val_count} validation samples: so few cannot show a model above chance)"
    return (
        f"the baseline scores {metric.name} {metric.format(baseline.accuracy)} on the validation split, no better than chance "
        f"({baseline.chance_text()}), so every trial would be compared with a model that has not learned: {fix}; "
        "or set search.allow_chance_baseline: true (--allow-chance-baseline) to search it anyway"
    )
