"""Two workers sharing one GPU, as ``--workers 2 --gpus-per-worker 0.5`` runs them: every stored
latency CV, and the uniform 8-bit plan (the baseline's own architecture) against the baseline.

Each worker is a process holding an Evaluator on ``cuda`` (what a Ray actor holds), fine-tuning
and timing ResNet-18 (32x32) trials at the same time as the other; the device lock and the paired
timing are the same code a search runs. Needs a CUDA GPU; not part of ``all``.

    python -m benchmarks.gpu_paired [--steps 300] [--runtime torch]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import statistics
import sys
import time
from typing import Any

from benchmarks.scratch import scratch

SPEC = {
    "model": "torchvision:resnet18",
    "dataset": "fakedata",
    "image_size": 32,
    "train_epochs": 1,
    "max_train_samples": 1024,
    "max_eval_samples": 512,
}


def _plans(model: Any) -> list[tuple[str, Any]]:
    from benchmarks.deploy import uniform

    return [
        ("uniform 8 bits", uniform(model, 8)),
        ("8 bits, 50% channels", uniform(model, 8, 0.5)),
        ("uniform 8 bits (again)", uniform(model, 8)),
        ("4 bits, 25% channels", uniform(model, 4, 0.25)),
        ("uniform 8 bits (third)", uniform(model, 8)),
    ]


def worker(index: int, cache: str, steps: int, runtime: str, device: str, out: Any) -> None:
    import torch

    from autocompress.deploy.target import DeployConfig
    from autocompress.evaluate import Evaluator, FinetuneConfig
    from autocompress.tasks import TaskSpec, build_task

    torch.set_num_threads(4)
    task = build_task(TaskSpec(**SPEC), cache)
    evaluator = Evaluator(task, FinetuneConfig(steps=steps, batch_size=128, lr=1e-3), DeployConfig(runtime=runtime, max_seconds=3.0), device)
    if index == 0:
        base = evaluator.baseline()
        out.put(
            {
                "worker": index,
                "trial": "baseline",
                "latency_ms": base.latency_ms,
                "cv": base.latency_cv,
                "capped": base.latency_capped,
                "error": base.error,
            }
        )
    for name, plan in _plans(task.build_model()):
        start = time.time()
        r = evaluator.evaluate(plan)
        out.put(
            {
                "worker": index,
                "trial": name,
                "speedup": 1 / r.latency_ratio if r.ok else None,
                "cv": r.latency_cv,
                "capped": r.latency_capped,
                "backend": r.latency_backend,
                "seconds": round(time.time() - start, 1),
                "error": r.error,
                "timing_window": r.windows.get("timing"),
            }
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps per trial (keeps the other worker busy)")
    p.add_argument("--runtime", default="torch", help="torch or onnxruntime (needs onnxruntime-gpu for cuda)")
    p.add_argument("--device", default="cuda", help="cuda (the point of it), or cpu for a dry run")
    args = p.parse_args(argv)
    import torch

    from autocompress.tasks import TaskSpec, build_task

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run this on a GPU machine")
    cache = str(scratch("gpu-paired-"))
    build_task(TaskSpec(**SPEC), cache)  # the baseline, trained once before the workers start
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(i, cache, args.steps, args.runtime, args.device, out)) for i in range(2)]
    for proc in procs:
        proc.start()
    rows = []
    while any(proc.is_alive() for proc in procs) or not out.empty():
        try:
            row = out.get(timeout=5)
        except queue.Empty:  # keep waiting while a worker lives
            continue
        rows.append(row)
        print(json.dumps(row), flush=True)
    cvs = [r["cv"] for r in rows if r.get("cv") is not None and not r.get("error")]
    eight = [r["speedup"] for r in rows if r["trial"].startswith("uniform 8 bits") and r.get("speedup")]
    summary = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "runtime": args.runtime,
        "rows": rows,
        "max_cv": max(cvs) if cvs else None,
        "median_cv": statistics.median(cvs) if cvs else None,
        "uniform_8bit_speedups": eight,
        "all_8bit_within_0.9_1.1": bool(eight) and all(0.9 <= s <= 1.1 for s in eight),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
