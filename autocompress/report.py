"""Reports of a study's Pareto front: a terminal table and JSON rows."""

from __future__ import annotations

import json
import sys
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from autocompress import _optuna
from autocompress.baseline import Baseline
from autocompress.deploy.timing import MIN_ROUNDS
from autocompress.errors import StorageError
from autocompress.front_rows import front_rows
from autocompress.pareto import OBJECTIVES, Analysis, study_analysis
from autocompress.plan import MetricInfo
from autocompress.stats import BOOTSTRAP_RESAMPLES, unpack_correct, unpack_rows


def make_console() -> Console:
    """A console that does not squeeze tables to 80 columns when output goes to a file or pipe."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def check_study(study: optuna.Study) -> None:
    """Refuse studies that are not autocompress searches (other tools share the same storage)."""
    names = list(study.metric_names or [])
    if len(names) != len(OBJECTIVES) or names[1:] != list(OBJECTIVES[1:]) or len(study.directions) != len(OBJECTIVES):
        raise StorageError(
            f"study '{study.study_name}' is not an autocompress search (objectives {study.metric_names}): "
            "pass the name of a study made by 'autocompress search'"
        )


def plan_summary(plan: dict[str, dict[str, Any]]) -> str:
    """A compact per-layer summary: ``fc1 s0.80/4b/r16``; ``4k`` a 4-bit k-means codebook,
    ``tern`` ternary, ``t8x4`` Tucker-2 ranks, ``a32`` activation bits (output x input), ``:taylor`` the pruning criterion when not l1."""
    parts = []
    for name, lp in plan.items():
        bits = (
            "fp32"
            if lp["bits"] >= 32
            else "tern"
            if lp.get("quant_mode") == "ternary"
            else f"{lp['bits']}{'k' if lp.get('quant_mode') == 'kmeans' else 'b'}"
        )
        rank = ""
        if lp.get("rank"):
            rank = f"/t{lp['rank']}x{lp.get('rank_in')}" if lp.get("lowrank_mode") == "tucker" else f"/r{lp['rank']}"
        mode = "c" if lp.get("structured") else "s"  # c: channels removed, s: single weights
        criterion = f":{lp['importance']}" if lp.get("importance", "l1") != "l1" and lp["sparsity"] else ""
        act = f"/a{lp['act_bits']}" if lp.get("act_bits") is not None else ""
        parts.append(f"{name} {mode}{lp['sparsity']:.2f}{criterion}/{bits}{rank}{act}")
    return " ".join(parts)


def deploy_target(study: optuna.Study) -> str:
    """What the study's latencies were measured on: ``onnxruntime int8 cpu, 1 thread, batch 32``."""
    baseline = study.user_attrs.get("baseline", {})
    if "deploy" in baseline:
        return str(baseline["deploy"])
    return f"torch {baseline.get('latency_backend', 'fp32')} (an older study: eager PyTorch, timed unpaired)"


def checked_analysis(study: optuna.Study) -> Analysis:
    """The study's Pareto analysis, after checking it is an autocompress search with a baseline."""
    check_study(study)
    if "baseline" not in study.user_attrs:
        raise StorageError(f"study '{study.study_name}' has no baseline yet: run 'autocompress search' with this name first")
    return study_analysis(study)


def shown_trials(study: optuna.Study, analysis: Analysis) -> list[int]:
    """The trials a report shows (the front, or the closest when none is feasible) that have a model."""
    trials = _optuna.trials_by_number(study, analysis.front or analysis.closest)
    return [n for n, t in trials.items() if "artifact_id" in t.user_attrs]


def report_rows(study: optuna.Study, analysis: Analysis) -> list[dict[str, Any]]:
    """The front's rows (or the closest trials when none is feasible), with the test-split
    accuracies the study holds. Reading only: re-checks are written by the driver at the end of
    a search, or by ``report --recheck``."""
    stored = study.user_attrs.get("test_accuracy", {})
    tests = {n: stored[str(n)] for n in shown_trials(study, analysis) if str(n) in stored}
    return front_rows(study, analysis, tests)


def print_report(study: optuna.Study, console: Console | None = None) -> None:
    console = console or make_console()
    analysis = checked_analysis(study)
    rows = report_rows(study, analysis)
    stored = study.user_attrs.get("baseline")
    states = _optuna.state_counts(study)
    counts = ", ".join(f"{states[s]} {s.name.lower()}" for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) if states[s])
    if states[TrialState.PRUNED]:
        counts += " (pruned: stopped at a fine-tuning rung, never on the front)"
    console.print(f"study [bold]{study.study_name}[/bold]: {counts or 'no trials'}; Pareto front: {len(analysis.front)} trials")
    metric = Baseline.of(stored).metric if stored else MetricInfo()
    unit = metric.drop_unit()
    if stored:
        baseline = Baseline.of(stored)
        test = "nan" if baseline.test_accuracy is None else metric.format(baseline.test_accuracy)
        console.print(f"metric: {metric.name}, {metric.better} is better; a drop is how much worse, in {unit}")
        console.print(
            f"baseline: {metric.name} {metric.format(baseline.accuracy)} (test {test}), {baseline.size_bytes / 1024:.1f} KB, {baseline.latency_ms:.3f} ms"
        )
        if stored.get("size_objective") == "deployed":
            console.print("size: the deployed file's bytes (pareto.size deployed: the file the deploy target runs); packed sizes beside them")
        if stored.get("at_chance"):
            console.print(
                "[bold red]warning[/bold red]: the baseline is no better than chance (searched anyway: search.allow_chance_baseline); "
                "drops compare with a model that has not learned"
            )
        console.print(f"deploy target: {deploy_target(study)}; latency and {metric.name} measured on it, speedups paired with the baseline there")
        phases = phase_line(study.user_attrs)
        if phases:
            console.print(phases)
    if analysis.max_accuracy_drop is not None:
        console.print(
            f"constraint: {metric.name} drop <= {analysis.max_accuracy_drop:.4g} {unit}; {analysis.feasible_count} of {len(analysis.points)} trials feasible"
        )
    if not analysis.points:
        console.print("no complete trials yet: run 'autocompress search' with this study name")
        return
    if not analysis.front:
        console.print(f"[bold]no trial meets the constraint[/bold]; the closest trials (least {metric.name} lost):")
    else:
        ref = analysis.reference
        knee = f"; knee: trial {analysis.knee}" if analysis.knee is not None else ""
        console.print(
            f"hypervolume {analysis.hypervolume:.4f} (reference: {metric.scale * ref[0]:.4g} {unit} lost, baseline size, {ref[2]:g}x baseline latency){knee}"
        )
    points = metric.scale == 100.0
    short = "acc" if metric.is_accuracy else metric.name
    table = Table(show_lines=False)
    # Both files when they differ (an ONNX runtime's file beside the packed artifact); "size" is the objective.
    deployed = any(r.get("deployed_bytes") not in (None, r.get("packed_bytes")) for r in rows)
    sized_by = stored.get("size_objective", "packed") if stored else "packed"
    for col, justify in (
        ("trial", "right"),
        (f"val {short}{' %' if points else ''}", "right"),
        ("drop pts" if points else "drop", "right"),
        (f"test {short}{' %' if points else ''}", "right"),
        ("test drop", "right"),
        (f"{sized_by} KB" if deployed else "size KB", "right"),
        *([("packed KB" if sized_by == "deployed" else "deployed KB", "right")] if deployed else []),
        ("ratio", "right"),
        ("latency ms", "right"),
        ("speedup", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        mark = " (knee)" if r["knee"] else ("" if r["feasible"] else " (infeasible)")
        table.add_row(
            f"{r['trial']}{mark}",
            _value(r["score"], points),
            drop_text(r, "score_drop", points),
            _value(r["test_score"], points) if "test_score" in r else "",
            drop_text(r, "test_score_drop", points),
            f"{r['size_bytes'] / 1024:.2f}",
            *([_kb(r.get("packed_bytes" if sized_by == "deployed" else "deployed_bytes"))] if deployed else []),
            f"{r['compression_ratio']:.1f}x",
            f"{r['latency_ms']:.3f}{' ~' if r.get('latency_unstable') else ''}",
            f"{r['speedup']:.2f}x",
        )
    console.print(table)
    if any(f"{k}_interval" in r for r in rows for k in ("score_drop", "test_score_drop")):
        n_val, n_test = (_count((stored or {}).get(f"{split}_correct") or (stored or {}).get(f"{split}_scores")) for split in ("val", "test"))
        how = (
            "McNemar's exact test"
            if any(r.get("score_drop_method") == "mcnemar" for r in rows)
            else f"paired bootstrap, {BOOTSTRAP_RESAMPLES} resamples, seeded"
        )
        console.print(f"[..] 95% interval of a drop, paired on the same {n_val} validation / {n_test} test samples; ≈ within noise ({how})")
    unchecked = [str(r["trial"]) for r in rows if "test_score" not in r]
    if unchecked:
        console.print(
            f"test split not re-checked for trial {', '.join(unchecked)} (the search stopped early): autocompress report {study.study_name} --recheck"
        )
    for line in unstable_notes(rows, study):
        console.print(line)
    console.print("plans (layer s=sparsity or c=channel share[:criterion] / bits (k = k-means codebook) / r=rank or t=Tucker ranks):")
    for r in rows:
        console.print(f"  trial {r['trial']}: {plan_summary(r['plan'])}", highlight=False, soft_wrap=True)


def phase_line(attrs: dict[str, Any]) -> str | None:
    """The warm start's sensitivity phase beside the trials, in wall seconds; None before both are known."""
    sens, trials = attrs.get("sensitivity_seconds"), attrs.get("trials_seconds")
    if not isinstance(trials, (int, float)) or not trials:
        return None
    if not isinstance(sens, (int, float)):
        return f"time: trials {trials:.1f} s (no sensitivity phase)"
    return f"time: sensitivity phase {sens:.1f} s before the first trial ({sens / trials:.0%} of the trials' {trials:.1f} s)"


def unstable_notes(rows: list[dict[str, Any]], study: optuna.Study) -> list[str]:
    """One line per latency marked ``~``: the CV it reached against the threshold, after how many
    rounds in how many seconds, and other processes' load only where it was measured."""
    deploy = (study.user_attrs.get("config") or {}).get("deploy") or {}
    threshold, cap = deploy.get("threshold"), deploy.get("max_seconds")
    lines = []
    for r in rows:
        if not r.get("latency_unstable"):
            continue
        cv, rounds, seconds, others = r.get("latency_cv"), r.get("latency_rounds"), r.get("latency_seconds"), r.get("latency_others_cores")
        seen = f"CV {cv:.3f}" if isinstance(cv, (int, float)) else "a CV"
        seen += f" (threshold {threshold:g})" if isinstance(threshold, (int, float)) else " above the threshold"
        if rounds:
            short = rounds < MIN_ROUNDS  # the cap came before the rounds a CV is trusted after
            seen += f" after {rounds} rounds{f' of the {MIN_ROUNDS} needed' if short else ''}"
        if isinstance(seconds, (int, float)) and seconds:
            seen += f" in {seconds:.1f} s"
        load = (
            f"; other processes kept {others:.1f} cores busy meanwhile"
            if isinstance(others, (int, float))
            else "; the machine's load was not measured (a study from before)"
        )
        fix = f": raise deploy.max_seconds (now {cap:g} s)" if isinstance(cap, (int, float)) else ": raise deploy.max_seconds"
        lines.append(f"~ trial {r['trial']}: latency {seen}, when the time cap ended it{load}{fix}")
    return lines


def _count(packed: str | None) -> int:
    if not packed:
        return 0
    vector = unpack_rows(packed) if str(packed).startswith("f4:") else unpack_correct(packed)
    return 0 if vector is None else len(vector)


def _kb(size: Any) -> str:
    return f"{size / 1024:.2f}" if isinstance(size, (int, float)) else ""


def _value(value: float, points: bool) -> str:
    return f"{100 * value:.2f}" if points else f"{value:.4g}"


def drop_text(row: dict[str, Any], key: str, points: bool = True) -> str:
    """``+0.56 [-0.28,+1.39] ≈``: the drop, its paired 95% interval, and ≈ when within noise."""
    if key not in row:
        return ""
    text = f"{row[key]:+.2f}" if points else f"{row[key]:+.3g}"
    if f"{key}_interval" in row:
        low, high = row[f"{key}_interval"]
        inner = f"{low:+.1f},{high:+.1f}" if points else f"{low:+.3g},{high:+.3g}"
        text += f" [{inner}]{' ≈' if row[f'{key}_within_noise'] else ''}"
    return text


def report_json(study: optuna.Study) -> str:
    return json.dumps(report_rows(study, checked_analysis(study)), indent=2)
