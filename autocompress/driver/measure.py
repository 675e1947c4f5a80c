"""The baseline, measured once per study by a worker on the deploy target the trials use."""

from __future__ import annotations

from typing import Any

from autocompress.baseline import resolve_max_drop
from autocompress.config import ParetoConfig
from autocompress.deploy.target import DeployConfig
from autocompress.errors import SearchError
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
        "size_bytes": result.size_bytes,
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
