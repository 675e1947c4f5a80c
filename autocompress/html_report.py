"""A self-contained HTML report of a study: plotly is inlined, so it opens offline.

Sections: summary and front table; the front in 2-D projections (accuracy-size,
accuracy-latency) and in 3-D; hypervolume after each trial (optuna-dashboard has none);
a per-layer heatmap of the front's plans (sparsity and its criterion, bits and codebooks, rank as a
fraction of full rank and Tucker-2 ranks); the
sensitivity heatmap (each group's one-shot drop per knob value) when the search measured it.
The baseline is marked in every scatter plot.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from autocompress import _optuna
from autocompress.baseline import Baseline
from autocompress.outputs import check_output, write_atomic
from autocompress.pareto import PROJECTIONS, Analysis, hypervolume_history
from autocompress.plan import MetricInfo
from autocompress.report import checked_analysis, deploy_target, drop_text, plan_summary, report_rows, unstable_notes


def _axes(metric: MetricInfo) -> dict[int, tuple[str, Any]]:
    """Each objective's axis: its title and what a point shows on it (the task's metric first)."""
    scale = 100.0 if metric.scale == 100.0 else 1.0
    first = f"{metric.name} %" if scale == 100.0 else f"{metric.name} ({metric.better} is better)"
    return {0: (first, lambda p: scale * p.accuracy), 1: ("size KB", lambda p: p.size_bytes / 1024), 2: ("latency ms", lambda p: p.latency_ms)}


def _projection_figure(analysis: Analysis, baseline: Baseline) -> go.Figure:
    names = list(PROJECTIONS)
    metric = baseline.metric
    AXES = _axes(metric)
    fig = make_subplots(rows=1, cols=2, subplot_titles=[n.replace("accuracy", metric.name).replace("-", " vs ") for n in names])
    base = {k: fn(baseline) for k, (_, fn) in AXES.items()}
    for col, name in enumerate(names, start=1):
        i, j = PROJECTIONS[name]
        (xi, fx), (_, fy) = AXES[j], AXES[i]
        show = col == 1
        # Two traces, so the legend names the infeasible marker (over the constraint, or at chance level).
        for feasible, label, color, symbol in ((True, "trials", "#9aa5b1", "circle"), (False, "infeasible trials", "#e4572e", "x")):
            pts = [p for p in analysis.points if p.feasible == feasible]
            fig.add_trace(
                go.Scatter(
                    x=[fx(p) for p in pts],
                    y=[fy(p) for p in pts],
                    mode="markers",
                    name=label,
                    legendgroup=label,
                    showlegend=show and bool(pts),
                    marker={"color": color, "symbol": symbol, "size": 7},
                    text=[f"trial {p.trial}{'' if feasible else (' (at chance level)' if p.at_chance else ' (infeasible)')}" for p in pts],
                    hoverinfo="text+x+y",
                ),
                row=1,
                col=col,
            )
        front = sorted((analysis.point(n) for n in analysis.projections.get(name, [])), key=fx)
        fig.add_trace(
            go.Scatter(
                x=[fx(p) for p in front],
                y=[fy(p) for p in front],
                mode="lines+markers",
                name="Pareto front",
                legendgroup="front",
                showlegend=show,
                line={"shape": "hv", "color": "#1f77b4"},
                marker={"size": 10, "color": "#1f77b4"},
                text=[f"trial {p.trial}: {p.compression_ratio:.1f}x, {_drop(p.accuracy_drop, metric)}" for p in front],
                hoverinfo="text",
            ),
            row=1,
            col=col,
        )
        if analysis.knee is not None:
            k = analysis.point(analysis.knee)
            fig.add_trace(
                go.Scatter(
                    x=[fx(k)],
                    y=[fy(k)],
                    mode="markers",
                    name="knee",
                    legendgroup="knee",
                    showlegend=show,
                    marker={"symbol": "star", "size": 16, "color": "#f2a541"},
                    text=[f"knee: trial {k.trial}"],
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
        fig.add_trace(
            go.Scatter(
                x=[base[j]],
                y=[base[i]],
                mode="markers",
                name="baseline",
                legendgroup="baseline",
                showlegend=show,
                marker={"symbol": "diamond", "size": 13, "color": "black"},
                text=["baseline"],
                hoverinfo="text",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=xi, type="log" if j == 1 else "linear", row=1, col=col)
        fig.update_yaxes(title_text=AXES[i][0], row=1, col=col)
    fig.update_layout(height=460, title="Pareto front, 2-D projections (each panel's own front)")
    return fig


def _drop(drop: float, metric: MetricInfo) -> str:
    return f"{drop:+.2f} pts" if metric.scale == 100.0 else f"{drop:+.3g} {metric.name}"


def _figure_3d(analysis: Analysis, baseline: Baseline) -> go.Figure:
    title, value = _axes(baseline.metric)[0]
    pts = analysis.points
    front = [analysis.point(n) for n in analysis.front]
    fig = go.Figure(
        [
            go.Scatter3d(
                x=[p.size_bytes / 1024 for p in pts],
                y=[p.latency_ms for p in pts],
                z=[value(p) for p in pts],
                mode="markers",
                name="trials",
                marker={"size": 3, "color": "#9aa5b1"},
                text=[f"trial {p.trial}" for p in pts],
            ),
            go.Scatter3d(
                x=[p.size_bytes / 1024 for p in front],
                y=[p.latency_ms for p in front],
                z=[value(p) for p in front],
                mode="markers",
                name="Pareto front",
                marker={"size": 6, "color": "#1f77b4"},
                text=[f"trial {p.trial}" for p in front],
            ),
            go.Scatter3d(
                x=[baseline.size_bytes / 1024],
                y=[baseline.latency_ms],
                z=[value(baseline)],
                mode="markers",
                name="baseline",
                marker={"size": 7, "color": "black", "symbol": "diamond"},
            ),
        ]
    )
    fig.update_layout(height=560, title="Pareto front in 3-D", scene={"xaxis_title": "size KB", "yaxis_title": "latency ms", "zaxis_title": title})
    return fig


def _hypervolume_figure(study: optuna.Study, analysis: Analysis) -> go.Figure:
    history = hypervolume_history(_optuna.trial_rows(study), study.user_attrs["baseline"], analysis.max_accuracy_drop)
    fig = go.Figure(go.Scatter(x=[n for n, _ in history], y=[hv for _, hv in history], mode="lines", line={"shape": "hv"}, name="hypervolume"))
    fig.update_layout(height=360, title="Hypervolume after each complete trial", xaxis_title="complete trials", yaxis_title="hypervolume")
    return fig


def _heatmap_figure(study: optuna.Study, rows: list[dict[str, Any]]) -> go.Figure:
    params = {n: t.params for n, t in _optuna.trials_by_number(study, [r["trial"] for r in rows]).items()}
    group_of = study.user_attrs.get("space", {}).get("_groups", {})  # grouped spaces share parameters
    layers = list(rows[0]["plan"])
    labels = [f"trial {r['trial']}" for r in rows]
    titles = [
        "sparsity (c = channels; criterion when not l1)",
        "bits (32 = float; k = k-means codebook; a = activation bits)",
        "rank / full rank (t = Tucker-2 out x in)",
    ]
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, subplot_titles=titles)
    for col, knob in enumerate(("sparsity", "bits", "rank"), start=1):
        z, text = [], []
        for r in rows:
            zr, tr = [], []
            for layer in layers:
                lp = r["plan"][layer]
                if knob == "sparsity":
                    zr.append(lp["sparsity"])
                    criterion = f" {lp['importance']}" if lp.get("importance", "l1") != "l1" and lp["sparsity"] else ""
                    tr.append(f"{lp['sparsity']:.2f}{'c' if lp.get('structured') else ''}{criterion}")
                elif knob == "bits":
                    zr.append(lp["bits"] if lp["bits"] < 32 else 16)
                    shown = "tern" if lp.get("quant_mode") == "ternary" else f"{lp['bits']}{'k' if lp.get('quant_mode') == 'kmeans' else ''}"
                    tr.append(shown + (f" a{lp['act_bits']}" if lp.get("act_bits") is not None else ""))
                else:
                    rank = lp.get("rank")
                    # the sampled parameter is the fraction of full rank (absent: not searched)
                    zr.append(params[r["trial"]].get(f"{group_of.get(layer, layer)}.rank", 1.0) if rank is not None else 1.0)
                    tucker = lp.get("lowrank_mode") == "tucker"
                    tr.append("full" if rank is None else f"t{rank}x{lp.get('rank_in')}" if tucker else str(rank))
            z.append(zr)
            text.append(tr)
        fig.add_trace(
            go.Heatmap(
                z=z, x=layers, y=labels, text=text, texttemplate="%{text}", showscale=False, colorscale="Blues" if knob != "bits" else "Blues_r"
            ),
            row=1,
            col=col,
        )
    fig.update_layout(height=160 + 28 * max(1, len(rows)), title="Per-layer plans of the front")
    return fig


def _sensitivity_figure(study: optuna.Study, metric: MetricInfo) -> go.Figure | None:
    """Each group's one-shot accuracy drop for each probed knob value (the study's
    ``autocompress_sensitivity`` rows); None when the search measured none."""
    from autocompress import sensitivity, tables

    backend = _optuna._rdb(study)
    found = tables.sensitivity_rows(backend.engine, study._study_id) if backend is not None else []
    if not found:
        return None
    groups, labels, z = sensitivity.heat(sensitivity.Row(**r) for r in found)
    points = metric.scale == 100.0
    text = [["" if v is None else (f"{v:.1f}" if points else f"{v:.3g}") for v in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=groups,
            text=text,
            texttemplate="%{text}",
            colorscale="Reds",
            zmin=0,
            colorbar={"title": "drop pts" if points else "drop"},
            hoverongaps=False,
        )
    )
    fig.update_layout(
        height=160 + 28 * len(groups),
        title=f"Sensitivity: {metric.name} drop in {metric.drop_unit()} with one group's knob at one value, before fine-tuning (b = bits, s = sparsity, c = channels, r = rank)",
        yaxis={"autorange": "reversed"},
    )
    return fig


def _value(value: float, points: bool) -> str:
    return f"{100 * value:.2f}" if points else f"{value:.4g}"


def write_html(study: optuna.Study, path: str | Path, force: bool = False) -> Path:
    check_output(path, force, "--html")
    analysis = checked_analysis(study)
    rows = report_rows(study, analysis)
    baseline = Baseline.of(study.user_attrs["baseline"])
    figures = [_projection_figure(analysis, baseline), _figure_3d(analysis, baseline), _hypervolume_figure(study, analysis)]
    if rows:
        figures.append(_heatmap_figure(study, rows))
    sensitive = _sensitivity_figure(study, baseline.metric)
    if sensitive is not None:
        figures.append(sensitive)
    parts = []
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False, div_id=f"plot-{i}"))
    metric = baseline.metric
    points = metric.scale == 100.0
    cells = []
    for r in rows:
        test = _value(r["test_score"], points) if "test_score" in r else ""
        cells.append(
            f"<tr><td>{r['trial']}{' (knee)' if r['knee'] else ''}</td><td>{_value(r['score'], points)}</td>"
            f"<td>{html.escape(drop_text(r, 'score_drop', points))}</td><td>{test}</td><td>{html.escape(drop_text(r, 'test_score_drop', points))}</td>"
            f"<td>{r['size_bytes'] / 1024:.2f}</td>"
            f"<td>{r['compression_ratio']:.1f}x</td><td>{r['latency_ms']:.3f}{' ~' if r.get('latency_unstable') else ''}</td><td>{r['speedup']:.2f}x</td>"
            f"<td><code>{html.escape(plan_summary(r['plan']))}</code></td></tr>"
        )
    table_rows = "".join(cells)
    short = ("acc %" if metric.is_accuracy else f"{metric.name} %") if points else metric.name
    constraint = (
        ""
        if analysis.max_accuracy_drop is None
        else f"; constraint: drop &le; {analysis.max_accuracy_drop:.4g} {html.escape(metric.drop_unit())}, {analysis.feasible_count} of {len(analysis.points)} feasible"
    )
    headline = (
        f"Pareto front: {len(analysis.front)} trials, hypervolume {analysis.hypervolume:.4f}"
        if analysis.front
        else "No trial meets the constraint; the closest trials are listed"
    )
    notes = "".join(f'<p class="latency-note">{html.escape(line)}</p>' for line in unstable_notes(rows, study))
    chance_warning = (
        '<p id="chance-baseline"><b>Warning:</b> the baseline is no better than chance (searched anyway: search.allow_chance_baseline); '
        "drops compare with a model that has not learned.</p>"
        if baseline.attrs.get("at_chance")
        else ""
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>autocompress: {html.escape(study.study_name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:last-child{{text-align:left}}</style></head>
<body>
<h1>autocompress study <code>{html.escape(study.study_name)}</code></h1>
<p id="summary" data-front="{len(analysis.front)}" data-trials="{len(analysis.points)}">{len(analysis.points)} complete trials.
Metric: <b id="metric">{html.escape(metric.name)}</b>, {metric.better} is better.
Baseline: {html.escape(metric.name)} {metric.format(baseline.accuracy)}, {baseline.size_bytes / 1024:.1f} KB, {baseline.latency_ms:.3f} ms{constraint}.</p>
{chance_warning}
<p id="deploy">Deploy target: <b>{html.escape(deploy_target(study))}</b>. The metric and latency are those of the form that ships there; each
speedup is the median ratio of the trial timed alternately with the baseline in one slot. A latency marked ~ kept a CV above
the threshold until the time cap. Get a trial's file with <code>autocompress export {html.escape(study.study_name)} --trial N --format onnx</code>.</p>
<h2>{headline}</h2>
<p>A drop ({html.escape(metric.drop_unit())}, positive = worse) is followed by its 95% interval, paired with the baseline on the same samples
({"McNemar's exact test" if any(r.get("score_drop_method") == "mcnemar" for r in rows) else "a paired bootstrap"}); &asymp; marks a drop within noise (the interval holds 0).</p>
<table><tr><th>trial</th><th>val {html.escape(short)}</th><th>{"drop pts" if points else "drop"}</th><th>test {html.escape(short)}</th><th>test drop</th><th>size KB</th><th>ratio</th><th>latency ms</th><th>speedup</th><th>plan</th></tr>
{table_rows}</table>
{notes}
{"".join(parts)}
</body></html>
"""
    path = Path(path)
    write_atomic(path, page.encode(), force, "--html")
    return path
