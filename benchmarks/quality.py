"""Search quality against the anchors, on digits-mlp (the LeNet-300-100 shape on digits).

1. Deep Compression's anchor: LeNet-300-100 was 40x smaller at no accuracy loss, tuned by hand
   (Han, Mao, Dally, ICLR 2016, Table 1). Target: within 100 trials, a Pareto point at least
   40x smaller than the fp32 baseline (packed artifact bytes, everything counted) whose
   test-split accuracy drop is at most 0.5 points.
2. Hypervolume after the same number of trials against random sampling over the same space,
   for several seeds (target: mean ratio >= 1.15), and every uniform baseline (one global
   sparsity x one bit-width, same fine-tuning) dominated or matched by the search's front in
   (validation accuracy, size).

Usage: python -m benchmarks.quality [--trials 100] [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from autocompress import pareto
from autocompress.config import load_config
from autocompress.driver import run_search
from autocompress.evaluate import Evaluator
from autocompress.plan import FULL_PRECISION_BITS, CompressionPlan, LayerPlan
from autocompress.recheck import test_accuracies
from autocompress.tasks import build_task
from benchmarks.scratch import scratch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "studies/digits-mlp.yaml"  # the study config every search here starts from
UNIFORM_SPARSITY = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
UNIFORM_BITS = (2, 3, 4, 6, 8, FULL_PRECISION_BITS)
ANCHOR_RATIO = 40.0
ANCHOR_DROP_POINTS = 0.5
QUICK_STEPS = 100  # fine-tuning steps in a smoke run


def study_config(folder: Path, name: str, trials: int, sampler: str, seed: int, steps: int | None = None, **search: Any) -> Path:
    """studies/digits-mlp.yaml with this run's name, storage, sampler and seed."""
    config = yaml.safe_load(CONFIG.read_text())
    if steps is not None:
        config["finetune"]["steps"] = steps
    config.update(
        {
            "name": name,
            "storage": f"sqlite:///{folder / 'quality.db'}",
            "cache_dir": str(folder / "baselines"),
            "artifact_dir": str(folder / "artifacts"),
            "space": str((CONFIG.parent / config["space"]).resolve()),
        }
    )
    config["search"].update({"trials": trials, "sampler": sampler, "seed": seed, **search})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(folder: Path, name: str, trials: int, sampler: str, seed: int, steps: int | None = None, **search: Any) -> tuple[optuna.Study, float]:
    start = time.perf_counter()
    study = run_search(load_config(study_config(folder, name, trials, sampler, seed, steps, **search)), progress=False)
    return study, time.perf_counter() - start


def anchor(study: optuna.Study) -> dict[str, Any]:
    """The smallest front point whose test-split drop is within the anchor's budget."""
    analysis = pareto.study_analysis(study)
    tests = test_accuracies(study, analysis.front)
    base = study.user_attrs["baseline"]
    rows = []
    for p in map(analysis.point, analysis.front):
        rows.append(
            {
                "trial": p.trial,
                "ratio": round(p.compression_ratio, 2),
                "size_bytes": p.size_bytes,
                "val_drop_points": round(p.accuracy_drop, 2),
                "test_drop_points": round(100 * (base["test_accuracy"] - tests[p.trial]), 2),
            }
        )
    within = [r for r in rows if r["test_drop_points"] <= ANCHOR_DROP_POINTS]
    best = max(within, key=lambda r: r["ratio"]) if within else None
    return {
        "best": best,
        "front": sorted(rows, key=lambda r: -r["ratio"]),
        "baseline_bytes": base["size_bytes"],
        "baseline_test_accuracy": base["test_accuracy"],
        "hypervolume": analysis.hypervolume,
    }


def uniform_points(study: optuna.Study, grid: list[tuple[float, int]]) -> list[dict[str, Any]]:
    """Every (sparsity, bits) pair applied to all layers, with the study's own fine-tuning."""
    from autocompress.deploy.target import DeployConfig
    from autocompress.evaluate import FinetuneConfig
    from autocompress.tasks import TaskSpec

    cfg = study.user_attrs["config"]
    task = build_task(TaskSpec(**cfg["task"]), cfg["cache_dir"])
    evaluator = Evaluator(task, FinetuneConfig(**cfg["finetune"]), DeployConfig(**cfg["deploy"]), "cpu")
    layers = list(study.user_attrs["space"])
    points = []
    for sparsity, bits in grid:
        plan = CompressionPlan({n: LayerPlan(sparsity=sparsity, bits=bits) for n in layers if not n.startswith("_")})
        r = evaluator.evaluate(plan)
        points.append({"sparsity": sparsity, "bits": bits, "accuracy": r.accuracy, "size_bytes": r.size_bytes, "latency_ms": r.latency_ms})
    return points


def matched(point: dict[str, Any], trials: list[optuna.trial.FrozenTrial]) -> int | None:
    """A complete trial at least as accurate and at most as large as ``point`` (None if none)."""
    for t in trials:
        if t.values[0] >= point["accuracy"] and t.values[1] <= point["size_bytes"]:
            return t.number
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help=f"10 trials of {QUICK_STEPS} fine-tuning steps, 1 seed, a few uniform points: a smoke run"
    )
    parser.add_argument("--folder", help="keep the studies here (default: a temporary folder)")
    args = parser.parse_args(argv)
    trials, seeds, steps = (10, 1, QUICK_STEPS) if args.quick else (args.trials, args.seeds, None)
    folder = scratch("quality-", args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in range(seeds):
        tpe, tpe_s = run(folder, f"tpe-{seed}", trials, "tpe", seed, steps)
        rnd, rnd_s = run(folder, f"random-{seed}", trials, "random", seed, steps, warm_start=False)
        a = anchor(tpe)
        hv_tpe, hv_rnd = pareto.study_analysis(tpe).hypervolume, pareto.study_analysis(rnd).hypervolume
        runs.append(
            {
                "seed": seed,
                "tpe_seconds": round(tpe_s, 1),
                "random_seconds": round(rnd_s, 1),
                "anchor": a,
                "hypervolume_tpe": hv_tpe,
                "hypervolume_random": hv_rnd,
                "hypervolume_ratio": hv_tpe / hv_rnd if hv_rnd else None,
            }
        )
        best = a["best"]
        print(
            f"seed {seed}: best within {ANCHOR_DROP_POINTS} test points: "
            f"{best['ratio'] if best else '-'}x (trial {best['trial'] if best else '-'}); "
            f"hypervolume {hv_tpe:.4f} vs random {hv_rnd:.4f} ({hv_tpe / hv_rnd:.3f}x); {tpe_s:.0f} s + {rnd_s:.0f} s",
            flush=True,
        )
    first = optuna.load_study(study_name="tpe-0", storage=f"sqlite:///{folder / 'quality.db'}")
    grid = [(sparsity, bits) for sparsity in UNIFORM_SPARSITY for bits in UNIFORM_BITS]
    uniform = uniform_points(first, grid[::6] if args.quick else grid)
    tpe_trials = {
        s: optuna.load_study(study_name=f"tpe-{s}", storage=f"sqlite:///{folder / 'quality.db'}").get_trials(states=(TrialState.COMPLETE,))
        for s in range(seeds)
    }
    for u in uniform:
        u["matched_by"] = {str(s): matched(u, ts) for s, ts in tpe_trials.items()}
    ratios = [r["hypervolume_ratio"] for r in runs if r["hypervolume_ratio"]]
    bests = [r["anchor"]["best"]["ratio"] if r["anchor"]["best"] else 0.0 for r in runs]
    summary = {
        "trials": trials,
        "seeds": seeds,
        "anchor_ratio_per_seed": bests,
        "anchor_met_per_seed": [b >= ANCHOR_RATIO for b in bests],
        "hypervolume_ratio_mean": statistics.mean(ratios) if ratios else None,
        "hypervolume_ratio_stdev": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
        "hypervolume_ratio_per_seed": ratios,
        "uniform_points": len(uniform),
        "uniform_unmatched": [u for u in uniform if any(v is None for v in u["matched_by"].values())],
    }
    print(
        f"anchor (>= {ANCHOR_RATIO:.0f}x at <= {ANCHOR_DROP_POINTS} test points): {bests}; "
        f"hypervolume vs random: {summary['hypervolume_ratio_mean']:.3f}x mean (+- {summary['hypervolume_ratio_stdev']:.3f}); "
        f"uniform baselines not matched: {len(summary['uniform_unmatched'])} of {len(uniform)}"
    )
    result = {"summary": summary, "runs": runs, "uniform": uniform}
    (folder / "quality.json").write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
