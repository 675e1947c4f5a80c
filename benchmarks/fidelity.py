"""Multi-fidelity search against the plain search, in the same wall-clock budget.

Two arms per task and seed, run one after the other on the same machine (their order
alternates between seeds, so that load drifting during the run falls on both):

- ``plain``: no pruner, no sensitivity (the uniform warm start alone): the search as it was.
- ``fidelity``: ``search.pruner: front`` and the sensitivity phase with its ladder of plans
  (its measuring time counted in the budget: each run starts with an empty sensitivity cache).

Each arm's hypervolume is read along the run from its trials' completion times (the analysis'
own hypervolume: drop, size and latency relative to the study's baseline, 1-point limit). Printed:
the ratio of final hypervolumes (target >= 1.2), the share of the budget the fidelity arm took
to reach the plain arm's final hypervolume (target <= 60%), and trials per hour (complete,
pruned) of each arm.

On LeNet-5 with Debian's Fashion-MNIST, also the plain-PyTorch recipes a user would try first,
with the same fine-tuning budget where they fine-tune: 8-bit weights (round to nearest), 4-bit
weight-only round to nearest on the Linear layers, and 50% / 80% global magnitude pruning, then
fine-tuning, then 8-bit weights. Each is packed by the same packer (file bytes) and scored on
the test split; the searches' best ratios within 0.5 and 1 point of test drop are set beside them.

Usage: python -m benchmarks.fidelity [--budget SECONDS] [--seeds 3] [--tasks digits-cnn,lenet5] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

from autocompress import artifact, pareto
from autocompress.config import load_config
from autocompress.driver import Driver
from autocompress.evaluate import Evaluator
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.stats import accuracy
from autocompress.tasks import build_task, correct_of

REPO = Path(__file__).resolve().parents[1]
TASKS: dict[str, dict[str, Any]] = {
    # The default study's task, with its fine-tuning.
    "digits-cnn": {"task": {"model": "digits-cnn", "seed": 0}, "finetune": {"steps": 150, "lr": 0.0005}, "budget": 180.0},
    # studies/fashion-lenet5.yaml: real Fashion-MNIST from /usr/share/datasets/fashion-mnist.
    "lenet5": {
        "task": {"model": "lenet5", "dataset": "fashion-mnist", "train_epochs": 5, "batch_size": 128, "max_eval_samples": 2000},
        "finetune": {"steps": 200, "batch_size": 128},
        "budget": 300.0,  # a trial takes several times a digits one
    },
}
ARMS = {"plain": {"pruner": "none", "sensitivity": False}, "fidelity": {"pruner": "front", "sensitivity": True}}


def _config(folder: Path, task: str, arm: str, seed: int, budget: float, cache: Path, steps: int | None) -> Path:
    spec = TASKS[task]
    config = {
        "name": f"{task}-{arm}-{seed}",
        "storage": f"sqlite:///{folder / 'fidelity.db'}",
        "cache_dir": str(cache),
        "artifact_dir": str(folder / "artifacts"),
        "space": str(REPO / "search_spaces/default.yaml"),
        "task": spec["task"],
        "finetune": {**spec["finetune"], **({"steps": steps} if steps else {})},
        "search": {"trials": 10_000, "workers": 0, "seed": seed, "timeout": budget, **ARMS[arm]},
        "pareto": {"max_accuracy_drop": 1.0},
    }
    path = folder / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _history(study: optuna.Study, started: float) -> list[tuple[float, float]]:
    """(seconds from the run's start, hypervolume of the trials complete by then), per trial."""
    baseline = study.user_attrs["baseline"]
    constraint = pareto.study_constraint(study)
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.datetime_complete)
    front = pareto.FrontState(baseline, constraint)
    out = []
    for t in trials:
        front.add_values(t.number, list(t.values))
        out.append((t.datetime_complete.timestamp() - started, front.analysis().hypervolume))
    return out


def _best_ratios(study: optuna.Study) -> dict[str, float | None]:
    """The front's best compression ratio whose test-split drop is within 0.5 and 1 point."""
    baseline = study.user_attrs["baseline"]
    tests = study.user_attrs.get("test_accuracy", {})
    out: dict[str, float | None] = {"0.5": None, "1": None}
    for number, test in tests.items():
        trial = study.trials[int(number)]
        drop = 100 * (baseline["test_accuracy"] - test)
        ratio = baseline["size_bytes"] / trial.values[1]
        for limit in out:
            if drop <= float(limit) and (out[limit] is None or ratio > out[limit]):  # type: ignore[operator]
                out[limit] = round(ratio, 2)
    return out


def run_arm(folder: Path, task: str, arm: str, seed: int, budget: float, baselines: Path, steps: int | None) -> dict[str, Any]:
    cache = folder / f"cache-{task}-{arm}-{seed}"
    shutil.copytree(baselines, cache, ignore=shutil.ignore_patterns("sensitivity-*"))  # the baseline, not the sensitivity
    config = load_config(_config(folder, task, arm, seed, budget, cache, steps))
    started = time.time()
    driver = Driver(config, progress=False)
    study = driver.run()
    seconds = time.time() - started
    history = _history(study, started)
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    return {
        "task": task,
        "arm": arm,
        "seed": seed,
        "seconds": round(seconds, 1),
        "hypervolume": history[-1][1] if history else 0.0,
        "history": [(round(t, 1), round(hv, 5)) for t, hv in history],
        **counts,
        "complete_per_hour": round(3600 * counts["complete"] / seconds, 1),
        "pruned_per_hour": round(3600 * counts["pruned"] / seconds, 1),
        "best_test_ratio": _best_ratios(study),
    }


def recipes(folder: Path, task: str, baselines: Path, steps: int | None) -> list[dict[str, Any]]:
    """The plain-PyTorch recipes, packed and scored on the test split like the search's trials."""
    spec = TASKS[task]
    config = load_config(_config(folder, task, "plain", 0, 60, baselines, steps))
    built = build_task(config.task, baselines)
    base_model = built.build_model()
    layers = {n: m for n, m in base_model.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}
    linear = [n for n, m in layers.items() if isinstance(m, torch.nn.Linear)]

    def global_sparsity(share: float) -> dict[str, float]:
        # torch.nn.utils.prune.global_unstructured's threshold, read as each layer's share.
        weights = torch.cat([m.weight.detach().abs().flatten() for m in layers.values()])
        threshold = weights.kthvalue(max(1, int(share * len(weights)))).values
        return {n: round(float((m.weight.detach().abs() <= threshold).float().mean()), 4) for n, m in layers.items()}

    plans: dict[str, tuple[CompressionPlan, int]] = {
        "8-bit weights, round to nearest": (CompressionPlan({n: LayerPlan(bits=8) for n in layers}), 0),
        "4-bit Linear weights, round to nearest": (CompressionPlan({n: LayerPlan(bits=4) for n in linear}), 0),
    }
    for share in (0.5, 0.8):
        sparsity = global_sparsity(share)
        plans[f"{int(share * 100)}% global magnitude pruning + fine-tune + 8-bit"] = (
            CompressionPlan({n: LayerPlan(sparsity=sparsity[n], bits=8) for n in layers}),
            config.finetune.steps,
        )
    test_base = accuracy(correct_of(base_model, built.data.x_test, built.data.y_test).numpy())
    out = []
    base_bytes = None
    for name, (plan, ft_steps) in plans.items():
        finetune = dataclasses.replace(config.finetune, steps=ft_steps)
        evaluator = Evaluator(built, finetune, config.deploy, "cpu")
        if base_bytes is None:
            base_bytes = evaluator.baseline().size_bytes
        result = evaluator.evaluate(plan)
        model = artifact.loads(result.artifact)
        with torch.no_grad():
            test = accuracy(correct_of(model, built.data.x_test, built.data.y_test).numpy())
        out.append(
            {"recipe": name, "ratio": round(base_bytes / result.size_bytes, 2), "test_drop": round(100 * (test_base - test), 2), "steps": ft_steps}
        )
        print(f"  {spec['task']['model']} {name}: {out[-1]['ratio']}x, test drop {out[-1]['test_drop']:+.2f} pts", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, help="seconds per search (default: 180 for digits-cnn, 300 for lenet5)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", default="digits-cnn,lenet5")
    parser.add_argument("--quick", action="store_true", help="a smoke run: digits-cnn, one seed, 40 s, 40 fine-tuning steps")
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    steps = None
    if args.quick:
        tasks, args.seeds, args.budget, steps = ["digits-cnn"], 1, 40.0, 40
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for task in tasks:
            baselines = folder / f"baselines-{task}"
            build_task(load_config(_config(folder, task, "plain", 0, 60, baselines, steps)).task, baselines)  # trained once, outside the budget
            for seed in range(args.seeds):
                order = list(ARMS) if seed % 2 == 0 else list(reversed(ARMS))
                for arm in order:
                    run = run_arm(folder, task, arm, seed, args.budget or TASKS[task]["budget"], baselines, steps)
                    runs.append(run)
                    print(
                        f"{task} seed {seed} {arm}: HV {run['hypervolume']:.4f}, {run['complete']} complete, {run['pruned']} pruned "
                        f"in {run['seconds']:.0f} s; best test ratio within 0.5 / 1 pt: {run['best_test_ratio']}",
                        flush=True,
                    )
            summary[task] = _summarise([r for r in runs if r["task"] == task], args.budget or TASKS[task]["budget"])
            summary[task]["budget_s"] = args.budget or TASKS[task]["budget"]
            if task == "lenet5":
                summary[task]["recipes"] = recipes(folder, task, baselines, steps)
    return {"seeds": args.seeds, "runs": runs, "summary": summary}


def _summarise(runs: list[dict[str, Any]], budget: float) -> dict[str, Any]:
    by_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["arm"]] = r
    rows = []
    for seed, arms in sorted(by_seed.items()):
        plain, fid = arms["plain"], arms["fidelity"]
        reached = next((t for t, hv in fid["history"] if hv >= plain["hypervolume"] > 0), None)
        rows.append(
            {
                "seed": seed,
                "hv_plain": plain["hypervolume"],
                "hv_fidelity": fid["hypervolume"],
                "hv_ratio": round(fid["hypervolume"] / plain["hypervolume"], 3) if plain["hypervolume"] else None,
                "reach_share": None if reached is None else round(reached / budget, 3),
                "complete_per_hour": (plain["complete_per_hour"], fid["complete_per_hour"]),
                "pruned_per_hour": fid["pruned_per_hour"],
                "best_test_ratio": (plain["best_test_ratio"], fid["best_test_ratio"]),
            }
        )
    ratios = [r["hv_ratio"] for r in rows if r["hv_ratio"] is not None]
    return {"per_seed": rows, "mean_hv_ratio": round(sum(ratios) / len(ratios), 3) if ratios else None}


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
