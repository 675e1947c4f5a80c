"""The rows a report shows for a study's front: each trial's numbers relative to the baseline,
its held-out (test) score, and the paired 95% interval of its drop on both splits (McNemar's
exact interval for 0/1 scores, a seeded paired bootstrap for any other metric)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna

from autocompress import _optuna
from autocompress.baseline import Baseline
from autocompress.pareto import Analysis
from autocompress.plan import MetricInfo
from autocompress.stats import PairedDrop, bootstrap_drop, is_binary, paired_drop, unpack_correct, unpack_rows


def front_rows(study: optuna.Study, analysis: Analysis, test_accuracy: dict[int, float] | None = None) -> list[dict[str, Any]]:
    """One row per trial to show: the front (smallest first), or the closest when none is feasible."""
    baseline = study.user_attrs.get("baseline", {})
    metric = Baseline.of(baseline).metric if baseline else MetricInfo()
    shown = analysis.front or analysis.closest
    sized_by = baseline.get("size_objective", "packed")
    trials = _optuna.trials_by_number(study, shown)
    rows = []
    for number in shown:
        p = analysis.point(number)
        t = trials[number]
        metrics = t.user_attrs.get("metrics", {})
        row: dict[str, Any] = {
            "trial": number,
            # The metric by name, in its direction: positive drops are worse, in its units.
            "metric": metric.name,
            "higher_is_better": metric.higher_is_better,
            "score": p.accuracy,
            "score_drop": round(p.accuracy_drop, 6),
            "size_bytes": p.size_bytes,  # the size objective (pareto.size)
            # Both files: the packed artifact, and the one the deploy target ran (an ONNX runtime's
            # .onnx; the packed artifact itself for torch).
            "packed_bytes": metrics.get("packed_bytes", p.size_bytes if sized_by == "packed" else None),
            "deployed_bytes": metrics.get("deployed_bytes") or metrics.get("onnx_bytes") or (p.size_bytes if sized_by == "deployed" else None),
            "compression_ratio": p.compression_ratio,
            "latency_ms": p.latency_ms,
            "speedup": p.speedup,
            "feasible": p.feasible,
            "knee": number == analysis.knee,
            "latency_cv": metrics.get("latency_cv"),
            # The time cap ended the measurement above its CV threshold: the number is noisier.
            "latency_unstable": bool(metrics.get("latency_capped")),
            # What the slot saw: its rounds and seconds, and other processes' load when measured.
            "latency_rounds": metrics.get("latency_rounds"),
            "latency_seconds": metrics.get("latency_seconds"),
            "latency_others_cores": metrics.get("latency_others_cores"),
            "latency_backend": metrics.get("latency_backend"),
            "params": metrics.get("params"),
            "nonzeros": metrics.get("nonzeros"),
            "plan": t.user_attrs.get("plan", {}),
        }
        # A user's corpus-level metric: its interval was computed by the driver that held the task.
        stored_val = PairedDrop.from_dict(t.user_attrs.get("val_interval")) if "val_interval" in t.user_attrs else None
        _put_interval(row, "score_drop", paired_interval(metric, baseline, t.user_attrs, "val") or stored_val)
        if test_accuracy is not None and number in test_accuracy:
            row["test_score"] = test_accuracy[number]
            drop = Baseline.of(baseline).test_accuracy_drop(test_accuracy[number]) if baseline else None
            if drop is not None:
                row["test_score_drop"] = round(drop, 6)
            stored = study.user_attrs.get("test_correct", {}).get(str(number)) or t.user_attrs.get("test_scores")
            stored_test = PairedDrop.from_dict(t.user_attrs.get("test_interval")) if "test_interval" in t.user_attrs else None
            _put_interval(row, "test_score_drop", paired_interval(metric, baseline, {"test": stored}, "test") or stored_test)
        if metric.is_accuracy:  # the classification spelling, as before metrics were named
            for key in [k for k in row if "score" in k]:
                row[key.replace("score", "accuracy")] = row[key]
        rows.append(row)
    return rows


def _put_interval(row: dict[str, Any], key: str, paired: PairedDrop | None) -> None:
    if paired is None:
        return
    digits = 3 if paired.method == "mcnemar" else 6
    row[f"{key}_interval"] = [round(paired.low, digits), round(paired.high, digits)]
    row[f"{key}_p"] = round(paired.p_value, 4)
    row[f"{key}_within_noise"] = paired.within_noise
    row[f"{key}_method"] = paired.method


def paired_interval(metric: MetricInfo, baseline: Mapping[str, Any], trial_attrs: Mapping[str, Any], split: str) -> PairedDrop | None:
    """A trial's drop against the baseline on the same samples, with its 95% interval: McNemar's
    exact interval for 0/1 scores (top-1's per-image correctness), a paired bootstrap otherwise
    (recomputing a corpus-level metric on each resample). None when either side's scores were
    never stored (a study from before they were)."""
    if split == "val":
        base_text, trial_text = (
            baseline.get("val_correct") or baseline.get("val_scores"),
            trial_attrs.get("val_correct") or trial_attrs.get("val_scores"),
        )
    else:
        base_text, trial_text = baseline.get("test_correct") or baseline.get("test_scores"), trial_attrs.get("test")
    if not base_text or not trial_text:
        return None
    if str(base_text).startswith("f4:"):
        base, other = unpack_rows(base_text), unpack_rows(trial_text)
    else:
        base, other = unpack_correct(base_text), unpack_correct(trial_text)
    if base is None or other is None or base.shape != other.shape or len(base) == 0:
        return None
    if is_binary(base, other) and metric.scale == 100.0:
        return paired_drop(base.astype(bool), other.astype(bool))
    reduce = _reducer(metric, baseline)
    if reduce is None:
        return None
    return bootstrap_drop(base, other, reduce, metric.drop)


def _reducer(metric: MetricInfo, baseline: Mapping[str, Any]) -> Any:
    """What turns stored rows into the metric: their mean, or a corpus-level built-in's reduce
    (a user's corpus-level reduce lives in their code, which the analyser never imports: its
    interval is computed on the worker and stored with the trial)."""
    if not metric.corpus:
        return lambda rows: float(np.mean(rows))
    from autocompress.tasks.metrics import builtin_metric

    try:
        return builtin_metric(metric.name, {"num_classes": baseline.get("num_classes")}).reduce
    except Exception:  # noqa: BLE001  (not a built-in name: no interval from stored rows)
        return None
