"""The warm start: the uniform plans a new study queues first, the space's one-shot
sensitivity (cached per task, space and deploy target) and the ladder of plans per size
target it steers. ``autocompress sensitivity`` calls this room alone, without a study."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from autocompress import sensitivity, tables
from autocompress.config import StudyConfig
from autocompress.deploy.target import DEPLOY_IDENTITY
from autocompress.plan import MetricInfo
from autocompress.runners import Runner, make_runner
from autocompress.space import SearchSpace

# Uniform plans tried first (sparsity, bits, rank fraction, sparsity mode): known points at the
# safe end, then the moderate region where an accuracy limit of about a point is usually met
# (8 bits with light sparsity, 4 bits dense), and with channel pruning in the space, two
# structured ones at the aggressive end.
WARM_START = (
    (0.0, 8, 1.0, "unstructured"),
    (0.5, 6, 1.0, "unstructured"),
    (0.7, 4, 1.0, "unstructured"),
    (0.25, 8, 1.0, "unstructured"),
    (0.0, 4, 1.0, "unstructured"),
)
WARM_START_CHANNEL = ((0.5, 4, 1.0, "channel"), (0.75, 4, 1.0, "channel"))
# Deep Compression's recipe where the space shares weights: most weights pruned, the rest on a
# 4- or 5-bit k-means codebook (LeNet-300-100: 8% of the weights kept, Han et al. 2016, Table 1).
WARM_START_SHARED = ((0.9, 4, 1.0, "unstructured"), (0.8, 5, 1.0, "unstructured"))
LADDER_HEADROOM = 0.98  # a ladder plan packs, before fine-tuning, within this share of its size target


def warm_start_plans(space: SearchSpace, trials: int) -> tuple[tuple[float, int, float, str, str], ...]:
    """The uniform plans a new study queues first: at most one per trial."""
    plans = [(*p, "uniform") for p in WARM_START + (WARM_START_CHANNEL if space.allows_channel else ())]
    plans += [(*p, "kmeans") for p in (WARM_START_SHARED if space.allows_sharing else ())]
    return tuple(plans[:trials])


class WarmStart:
    """The sensitivity phase and the ladder, on a started runner."""

    def __init__(self, config: StudyConfig, runner: Runner, metric: MetricInfo, say: Callable[[str], None]) -> None:
        self.config, self.runner, self.metric, self.say = config, runner, metric, say

    def cache_path(self, space: SearchSpace) -> Path:
        cfg = self.config
        identity = {k: v for k, v in cfg.to_dict()["deploy"].items() if k in DEPLOY_IDENTITY}
        return Path(cfg.cache_dir) / f"sensitivity-{sensitivity.cache_key(cfg.task.resolved().key(), space, identity)}.json"

    def cached(self, space: SearchSpace) -> tuple[dict[str, Any], list[sensitivity.Row]] | None:
        path = self.cache_path(space)
        found = sensitivity.read_cache(path)
        if found is not None:
            self.say(f"sensitivity: cached at {path}")
        return found

    def measure(self, space: SearchSpace, trials: int | None = None) -> tuple[dict[str, Any], list[sensitivity.Row]]:
        """The space's one-shot sensitivity: from the cache (same task, space and deploy target),
        else measured on the workers and cached."""
        cached = self.cached(space)
        if cached is not None:
            return cached
        path = self.cache_path(space)
        share, workers = self.config.search.sensitivity_share, self.runner.capacity
        budget = None if trials is None else (lambda trial_s: share * trials * trial_s / workers)
        reference, rows = sensitivity.measure(space, self.runner.one_shot, self.config.deploy.precision, self.metric, self.say, workers, budget)
        sensitivity.write_cache(path, reference, rows)
        agreement = reference["agreement"]
        if agreement["probes"]:
            gap = agreement["max_gap"]
            self.say(
                f"  torch form and deployed form agree within {gap:.3g} {self.metric.drop_unit()} on {agreement['probes']} timed probe(s)"
                + (" (the one-shot drops are rough: the ladder's estimates too)" if gap > 1.0 else "")
            )
        self.say(f"  done ({reference['seconds']:.1f} s), cached at {path}")
        return reference, rows

    def run(self, study: optuna.Study, space: SearchSpace, engine: Any, study_id: int, targets: tuple[float, ...]) -> None:
        """The sensitivity, recorded for the study, and the warm start's ladder: plans meeting each
        size target (checked by packing them, before fine-tuning) queued after the uniform ones."""
        start = time.monotonic()
        _, rows = self.measure(space, self.config.search.trials)
        tables.record_sensitivity(engine, study_id, [r.to_dict() for r in rows])
        # The phase's cost, next to the trials' in the report (a cached sensitivity costs nothing).
        study.set_user_attr("sensitivity_seconds", round(time.monotonic() - start, 2))  # measured or read from the cache
        stored = study.user_attrs["baseline"]
        baseline_bytes = int(stored.get("packed_bytes", stored["size_bytes"]))  # the ladder plans packed sizes
        queued = []
        for target in targets:
            plan = self._ladder_plan(space, rows, baseline_bytes, target)
            if plan is None:
                self.say(f"  ladder: no plan reaches {target:g}x smaller within the space")
                continue
            queued.append(plan)
            study.enqueue_trial(plan["params"], user_attrs={"ladder_target": target}, skip_if_exists=True)
        if queued:
            points = self.metric.scale == 100.0
            summary = ", ".join(
                f"{p['target']:g}x (one-shot drop {p['estimated_drop']:.1f} pts)"
                if points
                else f"{p['target']:g}x (one-shot drop {p['estimated_drop']:.3g} {self.metric.name})"
                for p in queued
            )
            self.say(f"  warm start: ladder plans for {summary}")
        study.set_user_attr("ladder", queued)

    def _ladder_plan(self, space: SearchSpace, rows: list[sensitivity.Row], baseline_bytes: int, target: float) -> dict[str, Any] | None:
        """A plan that packs within 2% below ``target`` (fine-tuned codes compress a little
        differently), or None."""
        limit = baseline_bytes / target * LADDER_HEADROOM
        shrink = LADDER_HEADROOM
        for _ in range(4):  # the sizes are estimates from knobs measured alone: check, tighten
            found = sensitivity.ladder(space, rows, baseline_bytes, [target], shrink)
            if not found:
                return None
            size = self.runner.one_shot([(space.plan_from_params(found[0].params), False)])[0]["size_bytes"]
            if size <= limit:
                return {**found[0].to_dict(), "one_shot_bytes": size}
            shrink *= limit / size * LADDER_HEADROOM
        return None


def measure_sensitivity(config: StudyConfig, say: Callable[[str], None]) -> tuple[SearchSpace, dict[str, Any], list[sensitivity.Row]]:
    """``autocompress sensitivity``: the space's sensitivity alone (cached or measured on the
    workers), without a study."""
    from autocompress.driver.checks import prepare_and_say, task_metric
    from autocompress.tasks import build_task

    space = prepare_and_say(config, say)
    runner = make_runner(config.search)
    room = WarmStart(config, runner, task_metric(config), say)
    cached = room.cached(space)
    if cached is not None:
        return space, *cached
    runner.connect(config.deploy)
    try:
        task = build_task(config.task, config.cache_dir, say=say, trainer=runner.trainer(config.search.device))
        runner.start(task, config.finetune, config.deploy, config.search.device)
        return space, *room.measure(space)
    finally:
        runner.close()
