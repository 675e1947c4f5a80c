"""Pareto analysis over the study's objectives (accuracy up, size and latency down)."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

OBJECTIVES = ("accuracy", "size_bytes", "latency_ms")
DIRECTIONS = ("maximize", "minimize", "minimize")


def dominates(a: list[float], b: list[float], directions: tuple[str, ...] = DIRECTIONS) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and strictly better somewhere."""
    sign = [1.0 if d == "minimize" else -1.0 for d in directions]
    a_ = [s * v for s, v in zip(sign, a)]
    b_ = [s * v for s, v in zip(sign, b)]
    return all(x <= y for x, y in zip(a_, b_)) and any(x < y for x, y in zip(a_, b_))


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated COMPLETE trials (Optuna's own non-dominated sort)."""
    return list(study.best_trials)


def front_rows(study: optuna.Study, test_accuracy: dict[int, float] | None = None) -> list[dict[str, Any]]:
    """One row per Pareto trial, smallest first, with ratios against the stored baseline.

    Args:
        test_accuracy: trial number -> test-split accuracy, shown beside the validation one.
    """
    baseline = study.user_attrs.get("baseline", {})
    rows = []
    for t in front(study):
        accuracy, size_bytes, latency_ms = t.values
        row: dict[str, Any] = {
            "trial": t.number,
            "accuracy": accuracy,
            "accuracy_drop": None,
            "size_bytes": int(size_bytes),
            "compression_ratio": None,
            "latency_ms": latency_ms,
            "speedup": None,
            "params": t.user_attrs.get("metrics", {}).get("params"),
            "nonzeros": t.user_attrs.get("metrics", {}).get("nonzeros"),
            "plan": t.user_attrs.get("plan", {}),
        }
        if test_accuracy is not None and t.number in test_accuracy:
            row["test_accuracy"] = test_accuracy[t.number]
            if "test_accuracy" in baseline:
                row["test_accuracy_drop"] = round(100.0 * (baseline["test_accuracy"] - test_accuracy[t.number]), 3)
        if baseline:
            row["accuracy_drop"] = round(100.0 * (baseline["accuracy"] - accuracy), 3)
            row["compression_ratio"] = baseline["size_bytes"] / size_bytes
            row["speedup"] = baseline["latency_ms"] / latency_ms
        rows.append(row)
    return sorted(rows, key=lambda r: (r["size_bytes"], -r["accuracy"]))
