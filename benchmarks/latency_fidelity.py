"""Latency fidelity: do stored trial latencies hold up when measured again, elsewhere?

1. For a finished study (or a fresh small one), re-measure the Pareto trials' latency in a new
   process from their exported artifacts, and print Spearman's rank correlation with the values
   stored during the search (target >= 0.9).
2. Measure the speedup that channel pruning and low-rank factorization give on layers large
   enough to matter, side by side with the dense layer in the same run.

Usage:
    python -m benchmarks.latency_fidelity                       # runs a 16-trial study first
    python -m benchmarks.latency_fidelity --study NAME --storage URL
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import torch
from torch import nn

from autocompress import compress
from autocompress.deploy.target import DeployConfig
from autocompress.plan import CompressionPlan, LayerPlan
from benchmarks.scratch import scratch

SPACE = """
knobs:
  sparsity: {low: 0.0, high: 0.9, step: 0.1}
  sparsity_mode: [unstructured, channel]
  bits: [4, 6, 8, 32]
  rank: {low: 0.2, high: 1.0, step: 0.2}
"""


def torch_ms(model: nn.Module, x: torch.Tensor, config: DeployConfig) -> float:
    """Median ms of one forward pass of a baked model in eager PyTorch, timed alone."""
    from autocompress.deploy.runtimes import runtime
    from autocompress.deploy.timing import time_alone

    return time_alone(runtime("torch").deploy(model, CompressionPlan(), x, "fp32", "cpu"), config.threshold, config.max_seconds).latency_ms


def remeasure_in_fresh_process(study: optuna.Study, numbers: list[int], config: DeployConfig) -> dict[int, float]:
    from autocompress.export import trial_artifact
    from autocompress.tasks import TaskSpec

    spec = TaskSpec(**study.user_attrs["task"]).resolved()
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for n in numbers:
            files[n] = Path(tmp) / f"t{n}.acz"
            files[n].write_bytes(trial_artifact(study, n))
        script = f"""
import json, sys, torch
import autocompress
from autocompress.deploy.target import DeployConfig
from autocompress.tasks import TaskSpec, load_data
from benchmarks.latency_fidelity import torch_ms
x = load_data(TaskSpec(**{spec.to_dict()!r})).x_val[:{config.batch_size}]
cfg = DeployConfig(**{config.__dict__!r})
out = {{}}
for n, path in json.loads(sys.argv[1]).items():
    out[n] = torch_ms(autocompress.load(path), x, cfg)
print(json.dumps(out))
"""
        proc = subprocess.run(
            [sys.executable, "-c", script, json.dumps({n: str(p) for n, p in files.items()})], capture_output=True, text=True, check=True
        )
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def fidelity(study: optuna.Study) -> dict[str, object]:
    from scipy.stats import spearmanr

    config = DeployConfig(**{k: v for k, v in study.user_attrs["config"]["deploy"].items()})
    trials = [t for t in study.best_trials if "artifact_id" in t.user_attrs]
    stored = {t.number: t.values[2] for t in trials}
    again = remeasure_in_fresh_process(study, list(stored), config)
    rho = spearmanr([stored[n] for n in stored], [again[n] for n in stored]).statistic if len(stored) > 2 else float("nan")
    return {"trials": len(stored), "spearman": rho, "stored_ms": stored, "remeasured_ms": again}


def layer_speedups(threads: int = 1) -> list[dict[str, object]]:
    """Dense vs channel-pruned vs factorized on a big Linear and a big Conv2d, one run."""
    torch.manual_seed(0)
    config = DeployConfig(threads=threads, max_seconds=2.0)
    cases = [
        ("linear 2048x2048, batch 64", lambda: nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10)), torch.randn(64, 2048), "0"),
        (
            "conv 128->128 3x3 on 32x32, batch 8",
            lambda: nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 10, 1)),
            torch.randn(8, 128, 32, 32),
            "0",
        ),
    ]
    rows = []
    for label, make, x, layer in cases:
        variants = {
            "dense": CompressionPlan(),
            "channel 50%": CompressionPlan({layer: LayerPlan(sparsity=0.5, structured=True)}),
            "rank 1/4": CompressionPlan({layer: LayerPlan(rank=compress.full_rank(make()[0]) // 4)}),
        }
        times = {}
        for name, plan in variants.items():
            model = compress.bake(compress.apply(make().eval(), plan, example=x[:2]))
            times[name] = torch_ms(model, x, config)
        rows.append(
            {
                "case": label,
                **{f"{k} ms": v for k, v in times.items()},
                "channel speedup": times["dense"] / times["channel 50%"],
                "rank speedup": times["dense"] / times["rank 1/4"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study")
    parser.add_argument("--storage")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="6 trials: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials = 6
    if args.study:
        study = optuna.load_study(study_name=args.study, storage=args.storage)
    else:
        from autocompress.config import load_config
        from autocompress.driver import run_search

        folder = scratch("latency-fidelity-")
        (folder / "space.yaml").write_text(SPACE)
        (folder / "study.yaml").write_text(
            f"name: fidelity\nstorage: sqlite:///{folder / 'f.db'}\nspace: space.yaml\nartifact_dir: {folder / 'artifacts'}\n"
            f"search: {{trials: {args.trials}, workers: 0, seed: 0}}\nfinetune: {{steps: 30}}\n"
        )
        study = run_search(load_config(folder / "study.yaml"), progress=False)
    result = fidelity(study)
    print(f"latency fidelity: {result['trials']} Pareto trials, Spearman rank correlation {result['spearman']:.3f} (target >= 0.9)")
    for n in result["stored_ms"]:
        print(f"  trial {n}: stored {result['stored_ms'][n]:.3f} ms, fresh process {result['remeasured_ms'][n]:.3f} ms")
    print("layer speedups (same run, 1 thread):")
    rows = layer_speedups()
    for row in rows:
        print(
            f"  {row['case']}: dense {row['dense ms']:.2f} ms, channel 50% {row['channel 50% ms']:.2f} ms "
            f"({row['channel speedup']:.2f}x), rank 1/4 {row['rank 1/4 ms']:.2f} ms ({row['rank speedup']:.2f}x)"
        )
    return {"fidelity": {k: v for k, v in result.items()}, "layer_speedups": rows}


if __name__ == "__main__":
    main()
