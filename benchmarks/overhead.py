"""Orchestration overhead: the same N evaluations four ways, side by side in one run.

(a) a plain loop calling the evaluator: the limit;
(b) autocompress in-process (``--workers 0``);
(c) autocompress with 2 Ray workers;
(d) Ray Tune with ``OptunaSearch`` (multi-objective, the same plans as points to evaluate, the
    same evaluator, SQLite storage like autocompress's).

Each run's wall time goes from its first evaluation's start to its last one's end (start-up of
Ray, the baseline and Tune's experiment set-up excluded alike), and is reported per worker as
``wall * workers / loop``: 1.00 means no overhead at all. Targets: (c) <= 1.05, and (c) no
slower than (d).

The evaluations are those of studies/digits-mlp.yaml (its fine-tuning: 2000 steps with
distillation, about 3 s each here).

Usage: python -m benchmarks.overhead [--evaluations 24] [--steps N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from autocompress.config import load_config
from autocompress.deploy.target import DeployConfig
from autocompress.driver import prepare, run_search
from autocompress.evaluate import Evaluator, FinetuneConfig
from autocompress.space import SearchSpace
from autocompress.tasks import Task, build_task
from benchmarks.quality import study_config
from benchmarks.scratch import scratch

_EVALUATORS: dict[str, Evaluator] = {}  # one per Tune worker process, like one per Ray actor


def sampled_params(space: SearchSpace, n: int, seed: int) -> list[dict[str, Any]]:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        space.sample(trial)
        out.append(dict(trial.params))
    return out


def config_file(folder: Path, name: str, workers: int, n: int, steps: int | None) -> Path:
    """studies/digits-mlp.yaml for ``n`` random trials (the plans come from outside) on ``workers``."""
    return study_config(folder, name, n, "random", 0, steps, workers=workers, warm_start=False)


def span(starts: list[float], ends: list[float]) -> float:
    return max(ends) - min(starts)


def loop(task: Task, space: SearchSpace, params: list[dict[str, Any]], finetune: FinetuneConfig, latency: DeployConfig) -> float:
    evaluator = Evaluator(task, finetune, latency, "cpu")
    evaluator.evaluate(space.plan_from_params(params[0]))  # warm-up, as every runner's first call has
    start = time.perf_counter()
    for p in params:
        evaluator.evaluate(space.plan_from_params(p))
    return time.perf_counter() - start


def autocompress_run(folder: Path, name: str, workers: int, params: list[dict[str, Any]], steps: int | None) -> float:
    config = load_config(config_file(folder, name, workers, len(params), steps))
    study = optuna.create_study(study_name=name, storage=config.storage, directions=["maximize", "minimize", "minimize"])
    for p in params:
        study.enqueue_trial(p)
    study = run_search(config, progress=False)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == len(params), f"{name}: {len(done)} of {len(params)} complete"
    return span([t.datetime_start.timestamp() for t in done], [t.datetime_complete.timestamp() for t in done])


class _DefineByRun:
    """The space as OptunaSearch's define-by-run function (a class: Tune pickles its searcher)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> None:
        self.space.sample(trial)


def _tune_trainable(
    config: dict[str, Any],
    payload: Any = None,
    space: SearchSpace | None = None,
    finetune: FinetuneConfig | None = None,
    latency: DeployConfig | None = None,
) -> None:
    from ray import tune

    start = time.time()
    evaluator = _EVALUATORS.get("task")
    if evaluator is None:
        evaluator = _EVALUATORS["task"] = Evaluator(Task.from_payload(payload), finetune, latency, "cpu")  # type: ignore[arg-type]
    assert space is not None
    result = evaluator.evaluate(space.plan_from_params(config))
    tune.report(
        {"accuracy": result.accuracy, "size_bytes": result.size_bytes, "latency_ms": result.latency_ms, "eval_start": start, "eval_end": time.time()}
    )


def tune_run(folder: Path, task: Task, space: SearchSpace, params: list[dict[str, Any]], finetune: FinetuneConfig, latency: DeployConfig) -> float:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        searcher = OptunaSearch(
            space=_DefineByRun(space),  # define-by-run, as autocompress samples
            metric=["accuracy", "size_bytes", "latency_ms"],
            mode=["max", "min", "min"],
            points_to_evaluate=params,
            sampler=optuna.samplers.RandomSampler(seed=0),
            storage=optuna.storages.RDBStorage(f"sqlite:///{folder / 'tune.db'}"),
            study_name="tune",
        )
        trainable = tune.with_resources(
            tune.with_parameters(_tune_trainable, payload=task.payload(), space=space, finetune=finetune, latency=latency), {"cpu": 1}
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=len(params), max_concurrent_trials=2, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(folder / "tune"), name="overhead", verbose=0),
        )
        results = tuner.fit()
        frames = [r.metrics for r in results if r.metrics and "eval_end" in r.metrics]
        assert len(frames) == len(params), f"tune: {len(frames)} of {len(params)} evaluations reported"
        return span([m["eval_start"] for m in frames], [m["eval_end"] for m in frames])
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaluations", type=int, default=24)
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps per evaluation (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="8 evaluations of 100 steps: a smoke run")
    parser.add_argument("--no-tune", action="store_true", help="skip (d), e.g. without ray[tune] installed")
    args = parser.parse_args(argv)
    n, steps = (8, 100) if args.quick else (args.evaluations, args.steps)
    folder = scratch("overhead-")
    config = load_config(config_file(folder, "probe", 0, n, steps))
    torch.set_num_threads(config.deploy.threads)  # (a) and (b) run here: one thread, as each Ray worker has
    space = prepare(config)
    task = build_task(config.task, config.cache_dir)
    params = sampled_params(space, n, seed=0)
    finetune, latency = config.finetune, config.deploy
    rows: dict[str, dict[str, float]] = {}
    limit = loop(task, space, params, finetune, latency)
    rows["a_loop"] = {"workers": 1, "wall_s": limit}
    rows["b_inprocess"] = {"workers": 1, "wall_s": autocompress_run(folder, "inprocess", 0, params, steps)}
    rows["c_ray_2_workers"] = {"workers": 2, "wall_s": autocompress_run(folder, "ray2", 2, params, steps)}
    if not args.no_tune:
        rows["d_ray_tune_2_workers"] = {"workers": 2, "wall_s": tune_run(folder, task, space, params, finetune, latency)}
    for name, row in rows.items():
        row["per_worker_ratio"] = row["wall_s"] * row["workers"] / limit
        print(f"{name:22s} {row['wall_s']:7.1f} s wall, {row['workers']} worker(s): {row['per_worker_ratio']:.3f}x the loop per worker", flush=True)
    c = rows["c_ray_2_workers"]["per_worker_ratio"]
    d = rows.get("d_ray_tune_2_workers", {}).get("per_worker_ratio")
    print(
        f"(c) within 5% of the limit: {'yes' if c <= 1.05 else 'no'} ({100 * (c - 1):+.1f}%); "
        + (f"(c) vs (d): {c / d:.3f} ({'no slower' if c <= d else 'slower'})" if d else "(d) skipped")
    )
    result = {"evaluations": n, "steps": config.finetune.steps, "rows": rows}
    (folder / "overhead.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
