"""The driver's own cost per trial as a study grows: the real Driver, the real Optuna sampler
and the real database, with an evaluator that answers at once.

``SyntheticRunner`` is a runner (the driver's seam for where evaluation happens) whose results
come from a formula of the plan instead of fine-tuning: accuracy falls with fewer bits and more
sparsity, size is the bits kept, latency falls with removed channels. It never touches Optuna,
Ray or the database; everything the driver does with a result (attributes, the artifact file,
tell, the Pareto analysis, the project's tables) runs for real.

The study is grown in segments (to 100, 1k, 5k and 10k trials by default); each segment is one
driver run resuming the study, as a user's would. For each segment it prints the driver's
milliseconds per trial by component (ask: count and sample a new trial under the lock; attrs:
the trial's attributes and Optuna's tell; artifacts: the file; analysis: front and
hypervolume; tables: the project's rows), then the largest number of workers the driver keeps
busy for a given trial length (trial seconds / driver seconds per trial), and the time
``autocompress report`` takes on the final study.

Targets (issue: 10,000-trial studies): driver time per trial at 10,000 trials <= 50 ms, flat
within 2x from 100 to 10,000; report on a 10,000-trial study <= 10 s.

Usage: python -m benchmarks.driver_scale [--trials 100,1000,5000,10000] [--sampler tpe]
       [--storage URL] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

from autocompress import compress
from autocompress.artifact import pack
from autocompress.config import FinetuneConfig, load_config
from autocompress.deploy.target import DeployConfig
from autocompress.plan import CompressionPlan, LayerPlan, Result
from autocompress.runners._base import Runner
from autocompress.search import Driver
from autocompress.stats import pack_correct
from autocompress.tasks import Task

COMPONENTS = ("ask", "sample", "attrs", "artifacts", "analysis", "tables", "heartbeat")


class SyntheticRunner(Runner):
    """Results from a formula of the plan, at once (``capacity`` trials "in flight")."""

    def __init__(self, capacity: int = 8, seed: int = 0) -> None:
        self._capacity = capacity
        self._seed = seed
        self._done: deque[tuple[int, Result]] = deque()
        self._params: dict[str, int] = {}
        self._artifact = b""
        self._val = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def runs_in_background(self) -> bool:
        return False

    def start(self, task: Task, finetune: FinetuneConfig, deploy: DeployConfig, device: str = "auto") -> None:
        model = task.build_model()
        layers = compress.compressible_layers(model)
        self._params = {name: m.weight.numel() for name, m in layers.items()}
        # One real packed model (2 bits, 90% sparse), stored for every trial: the end-of-search
        # re-check and `export` read it like any artifact.
        plan = CompressionPlan({name: LayerPlan(sparsity=0.9, bits=2) for name in layers})
        small = compress.apply(model, plan, example=task.data.x_val[:2])
        self._artifact = pack(small, plan, task.artifact_task(), compress.structure(small)).data
        self._val = len(task.data.y_val)

    def baseline(self) -> Result:
        bits = sum(self._params.values()) * 32
        return Result(
            accuracy=0.97, size_bytes=bits // 8, latency_ms=1.0, val_correct=pack_correct(np.ones(self._val, dtype=bool)), artifact=self._artifact
        )

    def submit(self, trial_number: int, plan: CompressionPlan) -> None:
        rng = np.random.default_rng((self._seed, trial_number))
        total = sum(self._params.values())
        loss = size_bits = channels = 0.0
        for name, n in self._params.items():
            lp = plan.layers.get(name, LayerPlan())
            share = n / total
            loss += share * (0.004 * max(0, 6 - lp.bits) ** 2 + 0.08 * lp.sparsity**3)
            size_bits += n * (1 - lp.sparsity) * lp.bits
            channels += share * lp.sparsity * lp.structured
        accuracy = float(np.clip(0.97 - loss + rng.normal(0, 0.003), 0.0, 1.0))
        ratio = float(max(0.2, 1.0 - 0.6 * channels + rng.normal(0, 0.01)))
        right = np.zeros(self._val, dtype=bool)
        right[: round(accuracy * self._val)] = True
        result = Result(
            accuracy=accuracy,
            size_bytes=int(size_bits / 8) + 512,
            latency_ms=ratio,
            latency_ratio=ratio,
            val_correct=pack_correct(right),
            artifact=self._artifact,
        )
        self._done.append((trial_number, result))

    def next_result(self, timeout: float | None = None) -> tuple[int, Result] | None:
        return self._done.popleft() if self._done else None


def study_file(folder: Path, storage: str, sampler: str, trials: int) -> Path:
    path = folder / "scale.yaml"
    path.write_text(
        f"name: scale\nstorage: {storage}\ncache_dir: {folder / 'baselines'}\nartifact_dir: {folder / 'artifacts'}\n"
        f"task: {{model: digits-cnn, train_epochs: 5}}\n"
        f"search: {{trials: {trials}, workers: 0, sampler: {sampler}, seed: 0, warm_start: true}}\n"
    )
    return path


def grow(folder: Path, storage: str, sampler: str, targets: list[int]) -> list[tuple[int, int, dict[str, float]]]:
    """Run the driver to each target in turn; (from, to, seconds by component) per segment."""
    segments = []
    done = 0
    for target in targets:
        config = load_config(study_file(folder, storage, sampler, target))
        driver = Driver(config, runner=SyntheticRunner(), progress=False)
        driver.run()
        times = dict(driver.timings)
        # "tell" holds the artifact, analysis and table times: attrs is the rest of it.
        times["attrs"] = times.get("tell", 0.0) - sum(times.get(k, 0.0) for k in ("artifacts", "analysis", "tables"))
        segments.append((done, target, times))
        done = target
    return segments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", default="100,1000,5000,10000", help="segment ends, comma-separated")
    parser.add_argument("--sampler", default="tpe", help="tpe, nsga2, gp or random")
    parser.add_argument("--storage", default=None, help="SQLAlchemy URL (default: a SQLite file in a temporary folder)")
    parser.add_argument("--trial-seconds", type=float, default=60.0, help="a trial's length, for the worker count the driver keeps busy")
    parser.add_argument("--quick", action="store_true", help="100 and 300 trials (a smoke run)")
    args = parser.parse_args(argv)
    targets = [100, 300] if args.quick else [int(t) for t in args.trials.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        storage = args.storage or f"sqlite:///{folder / 'scale.db'}"
        segments = grow(folder, storage, args.sampler, targets)
        start = time.perf_counter()
        report = subprocess.run(
            [sys.executable, "-m", "autocompress", "report", "scale", "--storage", storage, "--json"], capture_output=True, text=True, check=False
        )
        report_s = time.perf_counter() - start
    print(f"driver milliseconds per trial, sampler {args.sampler}, storage {'given' if args.storage else 'sqlite'}:")
    print(f"{'trials':>13} " + " ".join(f"{c:>9}" for c in COMPONENTS) + f" {'total':>9} {'workers kept busy':>18}")
    first_total = None
    for lo, hi, times in segments:
        n = hi - lo
        parts = [1000 * times.get(c, 0.0) / n for c in COMPONENTS]
        total = sum(parts)
        first_total = first_total or total
        busy = args.trial_seconds / (total / 1000)
        print(f"{lo:>6}-{hi:<6} " + " ".join(f"{p:9.1f}" for p in parts) + f" {total:9.1f} {busy:>18.0f}")
    last = sum(1000 * segments[-1][2].get(c, 0.0) for c in COMPONENTS) / (segments[-1][1] - segments[-1][0])
    print(f"growth, last segment / first: {last / first_total:.2f}x (target <= 2x); last: {last:.1f} ms per trial (target <= 50 ms)")
    print(f"report on {targets[-1]} trials: {report_s:.1f} s (target <= 10 s){'' if report.returncode == 0 else ' FAILED: ' + report.stderr}")
    return 0 if report.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
