"""Sensitivity: each group's knobs, one value at a time, measured one-shot (no fine-tuning).

For every group of the space and every probed value of its knobs (each bit-width, a grid of
unstructured and channel sparsities, a grid of ranks), the rest of the model left as it is,
a worker reports the validation accuracy of the compressed model as it is (in torch, masks and
quantizers on), its packed size, and, where the knob changes the kernels that run (a rank or
removed channels; bits on an int8 target), its latency paired with the baseline's. Rows are
cached per task, space and deploy target (like the baseline's weights), stored in the study's
``autocompress_sensitivity`` table, printed by ``autocompress sensitivity`` and drawn as a
heatmap in the HTML report.

The warm start then adds a ladder of non-uniform plans: for each size target (4x, 8x, 16x,
32x smaller than the baseline by default), the per-group bit-width and sparsity that minimise
the summed one-shot drops within that many bytes, a multiple-choice knapsack solved exactly on
a grid of the byte budget (as HAWQ-V3 allocates bits with an integer program).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autocompress.outputs import write_atomic
from autocompress.plan import FULL_PRECISION_BITS, TOP1, CompressionPlan, MetricInfo
from autocompress.space import WORD_DEFAULTS, SearchSpace
from autocompress.space_file import allows_channel

LOG = logging.getLogger(__name__)

# Probed values besides every bit-width the space offers (snapped into each knob's range).
SPARSITY_PROBES = (0.25, 0.5, 0.75, 0.9)
CHANNEL_PROBES = (0.25, 0.5, 0.75)
RANK_PROBES = (0.25, 0.5, 0.75)
PROBE_VERSION = 2  # part of the cache key: a new grid is never mixed with an old cache
DEFAULT_LADDER = (4.0, 8.0, 16.0, 32.0)
KNAPSACK_GRID = 2000  # budget cells: sizes are rounded up to 1/2000 of the budget


@dataclass(frozen=True)
class Probe:
    group: str
    knob: str  # bits, sparsity, channel (sparsity with sparsity_mode channel) or rank
    value: float

    @property
    def label(self) -> str:
        if self.knob == "bits":
            return f"{int(self.value)}b"
        return f"{'c' if self.knob == 'channel' else 's' if self.knob == 'sparsity' else 'r'}{self.value:g}"


@dataclass(frozen=True)
class Row:
    """One probe's measurement: accuracy drop in points (one-shot, vs the uncompressed model
    measured the same way), packed bytes saved, latency ratio to the baseline (None: not timed,
    the same kernels run as in the baseline)."""

    group: str
    knob: str
    value: float
    accuracy: float
    drop_points: float
    size_bytes: int
    size_delta: int  # bytes, negative when smaller
    latency_ratio: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


IDENTITY = {"sparsity": 0.0, "sparsity_mode": "unstructured", "bits": FULL_PRECISION_BITS, "rank": 1.0, **WORD_DEFAULTS}


def probes(space: SearchSpace) -> list[Probe]:
    """Every (group, knob, value) that the sensitivity measures."""
    out: list[Probe] = []
    for group, knobs in space.groups.items():
        bits = knobs["bits"]
        for b in bits.choices or ((bits.value,) if bits.value is not None else ()):
            if b != FULL_PRECISION_BITS:
                out.append(Probe(group, "bits", float(b)))
        sparsity = knobs["sparsity"]
        if not sparsity.fixed:
            values = sorted({sparsity.snap(s) for s in SPARSITY_PROBES} - {0.0})
            out += [Probe(group, "sparsity", float(s)) for s in values]
            if allows_channel(knobs["sparsity_mode"]):
                out += [Probe(group, "channel", float(s)) for s in sorted({sparsity.snap(s) for s in CHANNEL_PROBES} - {0.0})]
        rank = knobs["rank"]
        if not rank.fixed:
            out += [Probe(group, "rank", float(r)) for r in sorted({rank.snap(r) for r in RANK_PROBES} - {1.0})]
    return out


def probe_plan(space: SearchSpace, probe: Probe | None) -> CompressionPlan:
    """The plan that sets one group's knob to the probe's value and leaves the rest uncompressed."""
    values = {g: dict(IDENTITY) for g in space.groups}
    if probe is not None:
        if probe.knob == "channel":
            values[probe.group].update(sparsity=probe.value, sparsity_mode="channel")
        else:
            values[probe.group][probe.knob] = int(probe.value) if probe.knob == "bits" else probe.value
    return space.plan_from_values(space.layer_values(values))


def times(probe: Probe, precision: str) -> bool:
    """Whether the probe changes the kernels the deploy target runs (otherwise its latency is
    the baseline's: the same dense float kernels on the baked weights)."""
    return probe.knob in ("channel", "rank") or (probe.knob == "bits" and precision == "int8" and probe.value <= 8)


def timing_of(found: list[Probe], precision: str) -> list[int | None]:
    """For each probe, the probe whose timing it takes (itself when timed alone; None: not timed).
    Every bit-width of 8 or fewer runs the same integer kernels, so a group's bit probes share
    the timing of its widest one: only knobs that change the kernels are timed."""
    widest: dict[str, int] = {}
    for i, p in enumerate(found):
        if p.knob == "bits" and times(p, precision) and (p.group not in widest or p.value > found[widest[p.group]].value):
            widest[p.group] = i
    return [(widest[p.group] if p.knob == "bits" else i) if times(p, precision) else None for i, p in enumerate(found)]


def cache_key(task_key: str, space: SearchSpace, deploy_identity: dict[str, Any]) -> str:
    blob = json.dumps({"task": task_key, "space": space.to_dict(), "deploy": deploy_identity, "version": PROBE_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _json_types(hint: Any) -> tuple[type, ...]:
    """What JSON gives back for a field of this type (a float written as 4 reads back an int)."""
    kinds = set(typing.get_args(hint)) or {hint}
    return tuple(kinds | ({int} if float in kinds else set()))


_ROW_TYPES = {name: _json_types(hint) for name, hint in typing.get_type_hints(Row).items()}  # a cached row's schema


def read_cache(path: Path) -> tuple[dict[str, Any], list[Row]] | None:
    """The cached reference and rows, or None when absent or not of this schema (then measured
    again, after one warning). Plain JSON: reading it runs nothing."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        reference, rows = data["reference"], data["rows"]
        ok = isinstance(reference, dict) and isinstance(rows, list) and isinstance(reference.get("agreement", {}), dict)
        ok = ok and isinstance(reference.get("accuracy"), (int, float)) and isinstance(reference.get("size_bytes"), int)
        ok = ok and all(isinstance(r, dict) and set(r) == set(_ROW_TYPES) for r in rows)
        ok = ok and all(isinstance(r[k], kinds) and not isinstance(r[k], bool) for r in rows for k, kinds in _ROW_TYPES.items())
        if ok:
            return dict(reference), [Row(**r) for r in rows]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        pass
    LOG.warning("ignoring the sensitivity cache %s: it is not one this version wrote; measuring again", path)
    return None


def write_cache(path: Path, reference: dict[str, Any], rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"reference": reference, "rows": [r.to_dict() for r in rows]}).encode())


def measure(
    space: SearchSpace,
    run: Callable[[list[tuple[CompressionPlan, bool]]], list[dict[str, Any]]],
    precision: str,
    metric: MetricInfo = TOP1,
    say: Callable[[str], None] | None = None,
    capacity: int = 1,
    budget: Callable[[float], float] | None = None,
) -> tuple[dict[str, Any], list[Row]]:
    """The reference and a row for every probe; ``run`` measures plans one-shot (on the
    ``capacity`` workers) and returns, per plan, accuracy, size_bytes, latency_ratio (None when
    not timed), deployed_accuracy and seconds. The reference is the uncompressed model measured
    the same way: drops and sizes are relative to it, drops in ``metric``'s direction and units
    (top-1: points). The reference and one timed probe go first; from their seconds ``say``
    gets the phase's estimate before the rest is spent. The reference records the phase's
    seconds and how far the torch form's scores were from the deployed form's where both were
    taken (``agreement``). ``budget(seconds a trial's measurement takes)`` bounds the phase: when
    the estimate exceeds it, the remaining probes are measured untimed (the ladder needs their
    drops and sizes only), and ``say`` says so."""
    say = say or (lambda _line: None)
    start = time.monotonic()
    found = probes(space)
    timing = timing_of(found, precision)
    timed = [i for i, t in enumerate(timing) if t == i]
    first = [(probe_plan(space, None), False), *([(probe_plan(space, found[timed[0]]), True)] if timed else [])]
    head = run(first)
    ref = head[0]
    untimed_s, timed_s = float(ref.get("seconds", 0.0)), float(head[1].get("seconds", 0.0)) if timed else 0.0
    rest = [i for i in range(len(found)) if not (timed and i == timed[0])]
    # Timed probes take turns in the device's exclusive timing slot: only the rest runs in parallel.
    n_timed = sum(timing[i] == i for i in rest)
    estimate = n_timed * timed_s + (len(rest) - n_timed) * untimed_s / max(1, capacity)
    say(
        f"sensitivity: {len(found)} one-shot probes of {len(space.groups)} groups on {capacity} worker(s), {len(timed)} of them timed "
        f"(only knobs that change the kernels that run), about {estimate + untimed_s + timed_s:.0f} s"
    )
    limit = budget(timed_s or untimed_s) if budget is not None else None
    if limit is not None and estimate > limit and len(timed) > 1:
        timing = [t if t == timed[0] else None for t in timing]  # what the first timed probe already gave stays
        estimate = len(rest) * untimed_s / max(1, capacity)
        say(
            f"  over search.sensitivity_share ({limit:.0f} s of the search): the other {len(timed) - 1} timed probes are measured untimed, "
            f"about {estimate:.0f} s (their latency stays unknown; the ladder needs drops and sizes only)"
        )
    got = dict(zip(rest, run([(probe_plan(space, found[i]), timing[i] == i) for i in rest]), strict=True))
    if timed:
        got[timed[0]] = head[1]
    measured = [got[i] for i in range(len(found))]
    gaps = [
        abs(metric.drop(m["deployed_accuracy"], m["accuracy"]))
        for m in measured
        if m.get("deployed_accuracy") is not None and m["accuracy"] is not None
    ]
    ref = {**ref, "seconds": round(time.monotonic() - start, 2), "agreement": {"probes": len(gaps), "max_gap": round(max(gaps), 4) if gaps else None}}
    return ref, [
        Row(
            p.group,
            p.knob,
            p.value,
            m["accuracy"],
            round(metric.drop(ref["accuracy"], m["accuracy"]), 6),
            int(m["size_bytes"]),
            int(m["size_bytes"]) - int(ref["size_bytes"]),
            None if t is None else measured[t]["latency_ratio"],
        )
        for (p, m, t) in zip(found, measured, timing, strict=True)
    ]


def group_bytes(space: SearchSpace) -> dict[str, int]:
    """Each group's weights at 32 bits: what its knobs shrink."""
    out: dict[str, int] = {}
    for ls in space.layers.values():
        out[ls.group] = out.get(ls.group, 0) + 4 * math.prod(ls.weight_shape)
    return out


@dataclass(frozen=True)
class LadderPlan:
    target: float  # times smaller than the baseline's packed size
    params: dict[str, Any]  # Optuna parameters, to enqueue
    estimated_drop: float  # summed one-shot drops of its choices, points
    estimated_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ladder(space: SearchSpace, rows: Iterable[Row], baseline_bytes: int, targets: Iterable[float], shrink: float = 1.0) -> list[LadderPlan]:
    """For each target, the per-group (bits, unstructured sparsity) minimising the summed
    one-shot drops within ``baseline_bytes / target * shrink`` bytes; targets no choice reaches
    are left out. A group's bytes at (bits, sparsity) are its 32-bit bytes scaled by the size
    ratios measured for each knob alone."""
    by_group: dict[str, dict[tuple[str, float], Row]] = {}
    for r in rows:
        by_group.setdefault(r.group, {})[(r.knob, r.value)] = r
    weights = group_bytes(space)
    groups = [g for g in space.groups if g in weights]
    options: dict[str, list[tuple[int, float, float, float]]] = {}  # group -> (bits, sparsity, bytes, drop)
    for g in groups:
        measured = by_group.get(g, {})
        base = weights[g]
        bits = [(FULL_PRECISION_BITS, 1.0, 0.0)] + [
            (int(v), max(0.05, (base + r.size_delta) / base), max(0.0, r.drop_points)) for (k, v), r in measured.items() if k == "bits"
        ]
        sparsities = [(0.0, 1.0, 0.0)] + [
            (v, max(0.01, (base + r.size_delta) / base), max(0.0, r.drop_points)) for (k, v), r in measured.items() if k == "sparsity"
        ]
        options[g] = [(b, s, base * rb * rs, db + ds) for b, rb, db in bits for s, rs, ds in sparsities]
    other = max(0, baseline_bytes - sum(weights[g] for g in groups))  # biases, norms, header: kept
    plans = []
    for target in targets:
        budget = baseline_bytes / target * shrink - other
        if budget <= 0 or not groups:
            continue
        choice = _knapsack([options[g] for g in groups], budget)
        if choice is None:
            continue
        picked = {g: options[g][i] for g, i in zip(groups, choice, strict=True)}
        params: dict[str, Any] = {}
        for g, (b, s, _, _) in picked.items():
            target_values = {**IDENTITY, "bits": b, "sparsity": s}
            for k, knob in space.groups[g].items():
                if not knob.fixed:
                    params[f"{g}.{k}"] = knob.snap(target_values[k])
        plans.append(
            LadderPlan(
                target,
                params,
                round(sum(o[3] for o in picked.values()), 4),
                int(other + sum(o[2] for o in picked.values())),
            )
        )
    return plans


def _knapsack(options: list[list[tuple[int, float, float, float]]], budget: float) -> list[int] | None:
    """Multiple-choice knapsack: one option per group, summed bytes within ``budget``, least
    summed drop; exact on a grid of ``KNAPSACK_GRID`` cells (bytes rounded up). None: nothing fits."""
    cells = KNAPSACK_GRID
    inf = float("inf")
    best = np.full(cells + 1, inf)
    best[0] = 0.0
    picks: list[np.ndarray] = []
    for group in options:
        new = np.full(cells + 1, inf)
        pick = np.full(cells + 1, -1, dtype=np.int64)
        for i, (_, _, size, drop) in enumerate(group):
            cost = math.ceil(size / budget * cells)
            if cost > cells:
                continue
            shifted = np.full(cells + 1, inf)
            shifted[cost:] = best[: cells + 1 - cost] + drop
            better = shifted < new
            new[better], pick[better] = shifted[better], i
        best = new
        picks.append(pick)
    if not np.isfinite(best).any():
        return None
    # Of the plans with the least summed drop, the largest: a target is a budget to spend, and
    # drops measured one knob at a time miss how knobs compound.
    cell = int(np.flatnonzero(best <= best.min() + 1e-9)[-1])
    chosen: list[int] = []
    for group, pick in zip(reversed(options), reversed(picks), strict=True):
        i = int(pick[cell])
        chosen.append(i)
        cell -= math.ceil(group[i][2] / budget * cells)
    return chosen[::-1]


def heat(rows: Iterable[Row]) -> tuple[list[str], list[str], list[list[float | None]]]:
    """Groups (rows), probe labels (columns) and drops in points, for a heatmap or a table."""
    rows = list(rows)
    groups = list(dict.fromkeys(r.group for r in rows))
    order = {"bits": 0, "sparsity": 1, "channel": 2, "rank": 3}
    columns = sorted({(r.knob, r.value) for r in rows}, key=lambda kv: (order[kv[0]], kv[1]))
    labels = [Probe("", k, v).label for k, v in columns]
    cells: dict[tuple[str, str, float], float] = {(r.group, r.knob, r.value): r.drop_points for r in rows}
    return groups, labels, [[cells.get((g, k, v)) for k, v in columns] for g in groups]
