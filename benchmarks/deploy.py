"""Deploy targets side by side: the same plans on eager PyTorch fp32, ONNX Runtime fp32 and int8,
OpenVINO fp32 and int8 (CPU, 1 thread, batch 32), each timed paired with that target's own
baseline. ONNX Runtime int8 runs integer kernels only where they time faster (per layer, and the
whole model against its float kernels); OpenVINO compiles the same QDQ file.

Three parts, one run:

* ``targets``: baseline ms and the speedup of uniform plans (8 bits; 8 bits with 50% of the
  channels; 4 bits) on digits-cnn (8x8), LeNet-5 (28x28) and ResNet-18 (32x32). Latency does not
  depend on the weights' values, so models are untrained here; accuracy comes in ``search``.
* ``honesty``: the uniform 8-bit plan (the baseline's own architecture) on the fp32 targets,
  timed while another process keeps a core busy: the paired ratio should stay in 0.9..1.1.
* ``front``: ResNet-18 on sklearn's digits (32x32 RGB, real labels) searched on ONNX Runtime
  int8: the fastest front trial within 1 test point (test split re-checked on the int8 files).
* ``search``: a short search of LeNet-5 on the ONNX Runtime int8 target (FakeData is all this
  machine ships at 28x28 without Debian's Fashion-MNIST), then each front trial re-measured in a
  fresh process, paired with the baseline: Spearman of stored vs re-measured latency, and every
  stored CV.

    python -m benchmarks deploy [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from autocompress import compress
from autocompress.deploy.runtimes import runtime
from autocompress.deploy.timing import time_alone, time_paired
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.tasks import MODELS
from benchmarks.scratch import scratch

MODELS_TIMED = {"digits-cnn": (1, 8, 8), "lenet5": (1, 28, 28), "torchvision:resnet18": (3, 32, 32)}
TARGETS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8"))


def uniform(model: torch.nn.Module, bits: int, channel: float = 0.0) -> CompressionPlan:
    layers = list(compress.compressible_layers(model))
    last = layers[-1]
    return CompressionPlan({n: LayerPlan(sparsity=channel if n != last else 0.0, structured=channel > 0 and n != last, bits=bits) for n in layers})


PLANS = {"8 bits": lambda m: uniform(m, 8), "8 bits, 50% channels": lambda m: uniform(m, 8, 0.5), "4 bits": lambda m: uniform(m, 4)}


def _model(name: str, shape: tuple[int, ...]) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS.get(name).factory(num_classes=10, input_shape=shape).eval()


def deployed(name: str, shape: tuple[int, ...], plan_fn: Any, rt: str, precision: str, x: torch.Tensor) -> Any:
    model = _model(name, shape)
    plan = plan_fn(model) if plan_fn else CompressionPlan()
    compress.apply(model, plan, example=x[:2])
    compress.bake(model)
    return runtime(rt).deploy(model, plan, x, precision, "cpu", 1, [x, torch.randn_like(x)])


def targets(max_seconds: float) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    rows = []
    for name, shape in MODELS_TIMED.items():
        x = torch.randn(32, *shape)
        for rt, precision in TARGETS:
            base = deployed(name, shape, None, rt, precision, x)
            row: dict[str, Any] = {"model": name, "target": f"{rt} {precision}", "baseline_ms": time_alone(base, 0.05, max_seconds).latency_ms}
            for label, plan_fn in PLANS.items():
                cand = deployed(name, shape, plan_fn, rt, precision, x)
                t = time_paired(base, cand, 0.05, max_seconds)
                row[label] = {"speedup": round(1 / t.ratio, 3), "cv": round(t.cv, 4), "capped": t.capped, "backend": cand.backend}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _burn(stop: Any) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10000))


def honesty(max_seconds: float, repeats: int) -> list[dict[str, Any]]:
    """Uniform 8 bits vs the baseline on fp32 targets, with a busy core beside."""
    torch.set_num_threads(1)
    stop = multiprocessing.Event()
    load = multiprocessing.Process(target=_burn, args=(stop,), daemon=True)
    load.start()
    rows = []
    try:
        for name in ("digits-cnn", "lenet5"):
            shape = MODELS_TIMED[name]
            x = torch.randn(32, *shape)
            for rt in ("torch", "onnxruntime"):
                base = deployed(name, shape, None, rt, "fp32", x)
                cand = deployed(name, shape, PLANS["8 bits"], rt, "fp32", x)
                ratios = [1 / time_paired(base, cand, 0.05, max_seconds).ratio for _ in range(repeats)]
                row = {
                    "model": name,
                    "target": f"{rt} fp32",
                    "speedups": [round(r, 3) for r in ratios],
                    "within_0.9_1.1": all(0.9 <= r <= 1.1 for r in ratios),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        stop.set()
        load.join(timeout=10)
    return rows


def search(trials: int, steps: int) -> dict[str, Any]:
    """A LeNet-5 search on ONNX Runtime int8, then a fresh-process re-measurement of its front."""
    import optuna
    from scipy.stats import spearmanr

    from autocompress.config import load_config
    from autocompress.driver import run_search

    folder = scratch("deploy-bench-")
    (folder / "study.yaml").write_text(
        json.dumps(
            {
                "name": "deploy-bench",
                "storage": f"sqlite:///{folder / 's.db'}",
                "artifact_dir": str(folder / "artifacts"),
                "cache_dir": str(folder / "baselines"),
                "task": {
                    "model": "lenet5",
                    "dataset": "fakedata",
                    "image_size": 28,
                    "channels": 1,
                    "train_epochs": 3,
                    "max_train_samples": 2000,
                    "max_eval_samples": 500,
                },
                # FakeData is noise: no model learns it, and latency fidelity is the point here.
                "search": {"trials": trials, "workers": 0, "seed": 0, "allow_chance_baseline": True},
                "finetune": {"steps": steps, "lr": 0.001},
                "deploy": {"runtime": "onnxruntime", "precision": "int8", "max_seconds": 1.0},
            }
        )
    )
    start = time.perf_counter()
    study = run_search(load_config(folder / "study.yaml"), progress=False)
    wall = time.perf_counter() - start
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    cvs = [t.user_attrs["metrics"]["latency_cv"] for t in complete]
    front = [t.number for t in study.best_trials]
    again = remeasure(study, front)
    stored = {n: study.trials[n].values[2] for n in front}
    rho = spearmanr([stored[n] for n in front], [again[n] for n in front]).statistic if len(front) > 2 else float("nan")
    baseline = study.user_attrs["baseline"]
    fastest = max(complete, key=lambda t: t.user_attrs["metrics"]["speedup"])
    return {
        "trials": len(complete),
        "wall_s": round(wall, 1),
        "front": front,
        "spearman": rho,
        "stored_ms": stored,
        "remeasured_ms": again,
        "max_cv": max(cvs),
        "median_cv": statistics.median(cvs),
        "capped": sum(t.user_attrs["metrics"]["latency_capped"] for t in complete),
        "baseline_cv": baseline["latency_cv"],
        "fastest_speedup": fastest.user_attrs["metrics"]["speedup"],
        "fastest_trial": fastest.number,
        "note": "FakeData: accuracies are not meaningful here; latency fidelity is the point",
    }


def int8_front(trials: int, steps: int, epochs: int = 12, smoke: bool = False) -> dict[str, Any]:
    """ResNet-18 on real data (sklearn's digits at 32x32 RGB) searched on the ONNX Runtime int8
    target: the fastest front trial within 1 test point of the baseline, against the target's
    baseline (no layer at <= 8 bits, so ONNX Runtime's fp32 kernels), paired."""
    import optuna

    from autocompress.config import load_config
    from autocompress.driver import run_search
    from autocompress.pareto import study_analysis
    from autocompress.report import report_rows

    folder = scratch("deploy-front-")
    (folder / "study.yaml").write_text(
        json.dumps(
            {
                "name": "int8-front",
                "storage": f"sqlite:///{folder / 's.db'}",
                "artifact_dir": str(folder / "artifacts"),
                "cache_dir": str(folder / "baselines"),
                "task": {"model": "torchvision:resnet18", "dataset": "digits", "image_size": 32, "channels": 3, "train_epochs": epochs},
                # A smoke run trains one epoch: the code path is the point, not a learnt baseline.
                "search": {"trials": trials, "workers": 0, "seed": 0, "allow_chance_baseline": smoke},
                "finetune": {"steps": steps, "lr": 0.001, "distill": 0.5},
                "deploy": {"runtime": "onnxruntime", "precision": "int8", "max_seconds": 1.0},
            }
        )
    )
    start = time.perf_counter()
    study = run_search(load_config(folder / "study.yaml"), progress=False)
    wall = time.perf_counter() - start
    rows = report_rows(study, study_analysis(study))  # the front, test split re-checked on the int8 files
    within = [r for r in rows if r.get("test_accuracy_drop", 99) <= 1.0]
    best = max(within, key=lambda r: r["speedup"], default=None)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return {
        "trials": len(complete),
        "wall_s": round(wall, 1),
        "baseline": study.user_attrs["baseline"],
        "front": [
            {
                k: r.get(k)
                for k in ("trial", "accuracy_drop", "test_accuracy_drop", "speedup", "compression_ratio", "latency_cv", "latency_backend", "plan")
            }
            for r in rows
        ],
        "best_within_1pt": None
        if best is None
        else {k: best.get(k) for k in ("trial", "accuracy_drop", "test_accuracy_drop", "speedup", "compression_ratio", "latency_backend")},
        "max_cv": max(t.user_attrs["metrics"]["latency_cv"] for t in complete),
    }


def remeasure(study: Any, numbers: list[int]) -> dict[int, float]:
    """Each trial's stored ONNX file timed again in a fresh process, paired with the baseline's."""
    from optuna.artifacts import FileSystemArtifactStore

    store = FileSystemArtifactStore(study.user_attrs["artifact_dir"])
    baseline = study.user_attrs["baseline"]
    with tempfile.TemporaryDirectory() as tmp:
        files = {"baseline": str(Path(tmp) / "b.onnx")}
        with store.open_reader(baseline["onnx_artifact_id"]) as r:
            Path(files["baseline"]).write_bytes(r.read())
        for n in numbers:
            files[str(n)] = str(Path(tmp) / f"{n}.onnx")
            with store.open_reader(study.trials[n].user_attrs["onnx_artifact_id"]) as r:
                Path(files[str(n)]).write_bytes(r.read())
        script = f"""
import json, sys, torch
from pathlib import Path
from autocompress.deploy.runtimes import runtime
from autocompress.deploy.timing import time_paired
torch.set_num_threads(1)
files = json.loads(sys.argv[1]); x = torch.randn(32, 1, 28, 28); ort = runtime("onnxruntime")
base = ort.load_onnx(Path(files.pop("baseline")).read_bytes(), x, "cpu", 1)
print(json.dumps({{n: {baseline["latency_ms"]!r} * time_paired(base, ort.load_onnx(Path(p).read_bytes(), x, "cpu", 1), 0.05, 1.0).ratio for n, p in files.items()}}))
"""
        out = subprocess.run([sys.executable, "-c", script, json.dumps(files)], capture_output=True, text=True, check=True).stdout
    return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: short timings, a 3-trial search")
    p.add_argument("--part", action="append", choices=PARTS, help="run only these parts (default: all)")
    args = p.parse_args(argv)
    seconds = 0.2 if args.quick else 1.0
    run = {
        "targets": lambda: targets(seconds),
        "honesty": lambda: honesty(seconds, 2 if args.quick else 5),
        "search": lambda: search(3 if args.quick else 16, 20 if args.quick else 300),
        "front": lambda: int8_front(2 if args.quick else 12, 10 if args.quick else 200, 1 if args.quick else 12, smoke=args.quick),
    }
    return {part: run[part]() for part in (args.part or PARTS)}


PARTS = ("targets", "honesty", "search", "front")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2, default=str))
