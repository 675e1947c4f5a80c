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

Each sampler's own ask time is measured apart, on in-memory studies of 1k, 5k and 10k trials:
the driver runs the default (random) so the table shows the driver's work alone.

Usage: python -m benchmarks.driver_scale [--trials 100,1000,5000,10000] [--sampler random]
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
from typing import Any

import numpy as np
import torch

from autocompress import compress
from autocompress.artifact import pack
from autocompress.config import FinetuneConfig, load_config
from autocompress.deploy.target import DeployConfig
from autocompress.driver import Driver
from autocompress.fidelity import NO_REPORTING, Reporting
from autocompress.plan import CompressionPlan, LayerPlan, Result
from autocompress.runners._base import Referee, Runner
from autocompress.stats import pack_correct
from autocompress.tasks import Task
from autocompress.tasks.trainer import Trainer, local_trainer

COMPONENTS = ("ask", "sample", "attrs", "artifacts", "analysis", "tables", "heartbeat", "wait")


class SyntheticRunner(Runner):
    """Results from a formula of the plan (``capacity`` trials "in flight"): at once, or
    ``trial_seconds`` after submission, as from workers in other processes."""

    def __init__(self, capacity: int = 8, seed: int = 0, trial_seconds: float = 0.0) -> None:
        self._capacity = capacity
        self._seed = seed
        self._trial_seconds = trial_seconds
        self._done: deque[tuple[float, int, Result]] = deque()
        self._params: dict[str, int] = {}
        self._artifact = b""
        self._val = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def runs_in_background(self) -> bool:
        return self._trial_seconds > 0

    def one_shot(self, items: list[tuple[CompressionPlan, bool]]) -> list[dict[str, Any]]:
        raise NotImplementedError("the synthetic runner has no sensitivity: run with search.sensitivity off")

    def trainer(self, device: str) -> Trainer:
        return local_trainer(torch.device("cpu"))

    def start(
        self,
        task: Task,
        finetune: FinetuneConfig,
        deploy: DeployConfig,
        device: str = "auto",
        reporting: Reporting = NO_REPORTING,
        referee: Referee | None = None,
    ) -> None:
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
        self._done.append((time.perf_counter() + self._trial_seconds, trial_number, result))

    def next_result(self, timeout: float | None = None) -> tuple[int, Result] | None:
        if not self._done:
            return None
        wait = self._done[0][0] - time.perf_counter()
        if wait > (timeout or 0.0):
            time.sleep(timeout or 0.0)
            return None
        time.sleep(max(0.0, wait))
        _, number, result = self._done.popleft()
        return number, result


def study_file(folder: Path, storage: str, sampler: str, trials: int) -> Path:
    path = folder / "scale.yaml"
    path.write_text(
        f"name: scale\nstorage: {storage}\ncache_dir: {folder / 'baselines'}\nartifact_dir: {folder / 'artifacts'}\n"
        f"task: {{model: digits-cnn, train_epochs: 5}}\n"
        f"search: {{trials: {trials}, workers: 0, sampler: {sampler}, seed: 0, warm_start: true, sensitivity: false}}\n"
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


def handoff(folder: Path, storage: str, sampler: str, trials: int, trial_seconds: float, workers: int) -> dict[str, dict[str, float]]:
    """How long a freed worker waits for its next trial, with the ask made ahead in a thread
    and without: ``trials`` more trials each way on the grown study, ``workers`` in flight,
    each taking ``trial_seconds``. Seconds: median, 90th percentile, and the driver's time
    blocked waiting on the thread."""
    import optuna

    from autocompress import _optuna

    out = {}
    for ahead in (False, True):
        done = _optuna.count_trials(optuna.load_study(study_name="scale", storage=storage), (optuna.trial.TrialState.COMPLETE,))
        config = load_config(study_file(folder, storage, sampler, done + trials))
        driver = Driver(config, runner=SyntheticRunner(capacity=workers, trial_seconds=trial_seconds), progress=False, ask_ahead=ahead)
        driver.run()
        waits = np.array(driver.handoffs)
        out["ahead" if ahead else "inline"] = {
            "median_s": float(np.median(waits)),
            "p90_s": float(np.percentile(waits, 90)),
            "blocked_s": driver.timings.get("wait", 0.0),
            "study_trials": done,
        }
    return out


SPACES = {  # (task, space file): the default space on the small CNN, the deep space on ResNet-18
    "digits-cnn": ({"model": "digits-cnn"}, None),
    "resnet18-deep": ({"model": "torchvision:resnet18", "dataset": "cifar10"}, "search_spaces/deep.yaml"),
}


def sampler_ask_ms(sizes: list[int], samplers: list[str], spaces: list[str], asks: int = 3) -> dict[str, dict[str, dict[int, float]]]:
    """Milliseconds for one ask and sample (define-by-run, as the driver samples) on an
    in-memory study already holding N complete synthetic trials: space -> sampler -> N -> ms."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from autocompress.driver.setup import make_sampler
    from autocompress.space import load_space
    from autocompress.tasks import TaskSpec, layer_skeleton

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out: dict[str, dict[str, dict[int, float]]] = {}
    for space_name in spaces:
        task, space_file = SPACES[space_name]
        space = load_space(Path(__file__).parent.parent / space_file if space_file else None).resolve(*layer_skeleton(TaskSpec(**task)))
        source = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
        rng = np.random.default_rng(0)
        made = []
        for _ in range(max(sizes)):
            trial = source.ask()
            space.sample(trial)
            frozen = source.tell(trial, [float(rng.uniform(0.5, 1)), float(rng.uniform(1e3, 1e5)), float(rng.uniform(0.2, 1))])
            made.append(create_trial(params=frozen.params, distributions=frozen.distributions, values=frozen.values, state=TrialState.COMPLETE))
        by_sampler: dict[str, dict[int, float]] = {}
        out[space_name] = by_sampler
        for name in samplers:
            by_sampler[name] = {}
            # GP fits a Gaussian process per objective, cubic in the trials: seconds per ask at
            # 300 trials here, so it is timed at 300 (and once) however large the sizes asked.
            for n in sorted({min(n, 300) for n in sizes}) if name == "gp" else sizes:
                study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=make_sampler(name, 0))
                study.add_trials(made[:n])
                repeat = 1 if name == "gp" else asks
                start = time.perf_counter()
                for _ in range(repeat):
                    trial = study.ask()
                    space.sample(trial)
                    study.tell(trial, state=TrialState.FAIL)  # not a point: the next ask sees the same N
                by_sampler[name][n] = 1000 * (time.perf_counter() - start) / repeat
    return out


def timed_report(storage: str, *extra: str) -> tuple[float, bool, str]:
    """Seconds for ``autocompress report`` in a fresh process (imports included, as a user waits)."""
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "autocompress", "report", "scale", "--storage", storage, *extra], capture_output=True, text=True, check=False
    )
    return time.perf_counter() - start, run.returncode == 0, run.stderr


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", default="100,1000,5000,10000", help="segment ends, comma-separated")
    parser.add_argument(
        "--sampler", default="random", help="the driver's sampler: random isolates the driver's own work (default), or tpe, nsga2, gp"
    )
    parser.add_argument("--storage", default=None, help="SQLAlchemy URL of an empty database (default: a SQLite file in a temporary folder)")
    parser.add_argument("--trial-seconds", type=float, default=60.0, help="a trial's length, for the worker count the driver keeps busy")
    parser.add_argument("--ask-sizes", default="1000,5000,10000", help="study sizes at which each sampler's ask is timed")
    parser.add_argument("--spaces", default=",".join(SPACES), help=f"spaces whose asks are timed: {', '.join(SPACES)}")
    parser.add_argument(
        "--handoff",
        default="tpe,40,8,8",
        help="SAMPLER,TRIALS,SECONDS,WORKERS: a freed worker's wait for its next trial on the grown study, ask ahead or not ('' skips)",
    )
    parser.add_argument("--quick", action="store_true", help="100 and 300 trials, asks at 300, a short hand-off run (a smoke run)")
    args = parser.parse_args(argv)
    targets = [100, 300] if args.quick else [int(t) for t in args.trials.split(",")]
    sizes = [300] if args.quick else [int(t) for t in args.ask_sizes.split(",") if t]
    spaces = ["digits-cnn"] if args.quick else args.spaces.split(",")
    hand = "tpe,10,1,4" if args.quick and args.handoff else args.handoff
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        storage = args.storage or f"sqlite:///{folder / 'scale.db'}"
        segments = grow(folder, storage, args.sampler, targets)
        report_s, report_ok, report_err = timed_report(storage, "--json")
        html_s, html_ok, html_err = timed_report(storage, "--html", str(folder / "report.html"))
        waits = {}
        if hand:
            name, n, seconds, workers = hand.split(",")
            waits = handoff(folder, storage, name, int(n), float(seconds), int(workers))
    asks = sampler_ask_ms(sizes, ["random", "tpe", "nsga2", "gp"], spaces) if sizes else {}
    rows = []
    print(f"driver milliseconds per trial, sampler {args.sampler}, storage {'given' if args.storage else 'sqlite'}:")
    print(f"{'trials':>13} " + " ".join(f"{c:>9}" for c in COMPONENTS) + f" {'total':>9} {'workers kept busy':>18} {'start s':>8}")
    for lo, hi, times in segments:
        parts = {c: 1000 * times.get(c, 0.0) / (hi - lo) for c in COMPONENTS}
        total = sum(parts.values())
        rows.append(
            {
                "from": lo,
                "to": hi,
                "ms": parts,
                "total_ms": total,
                "workers_kept_busy": args.trial_seconds / (total / 1000),
                "start_s": times.get("start", 0.0),
            }
        )
        print(
            f"{lo:>6}-{hi:<6} " + " ".join(f"{parts[c]:9.1f}" for c in COMPONENTS) + f" {total:9.1f} {rows[-1]['workers_kept_busy']:>18.0f}"
            f" {rows[-1]['start_s']:8.1f}"
        )
    growth = rows[-1]["total_ms"] / rows[0]["total_ms"]
    print(f"growth, last segment / first: {growth:.2f}x (target <= 2x); last: {rows[-1]['total_ms']:.1f} ms per trial (target <= 50 ms)")
    print(f"report on {targets[-1]} trials: {report_s:.1f} s (target <= 10 s){'' if report_ok else ' FAILED: ' + report_err}")
    print(f"HTML report on {targets[-1]} trials: {html_s:.1f} s{'' if html_ok else ' FAILED: ' + html_err}")
    if waits:
        print(f"a freed worker's wait for its next trial ({hand}, at {waits['inline']['study_trials']} trials):")
        for way, w in waits.items():
            print(
                f"  {way:>6}: median {1000 * w['median_s']:.0f} ms, 90th percentile {1000 * w['p90_s']:.0f} ms, loop blocked on the thread {w['blocked_s']:.1f} s"
            )
    if asks:
        print("one ask + sample, milliseconds, by space, sampler and study size:")
    for space_name, by_sampler in asks.items():
        for name, by_size in by_sampler.items():
            print(f"  {space_name:>13} {name:>7}: " + ", ".join(f"{n} trials {ms:.0f} ms" for n, ms in by_size.items()))
    return {
        "sampler": args.sampler,
        "trial_seconds": args.trial_seconds,
        "segments": rows,
        "growth": growth,
        "report_s": report_s,
        "report_ok": report_ok and html_ok,
        "html_report_s": html_s,
        "handoff": waits,
        "handoff_spec": hand,
        "storage": "PostgreSQL" if storage.startswith("postgresql") else "SQLite",
        "ask_ms": {sp: {k: {str(n): v for n, v in d.items()} for k, d in by.items()} for sp, by in asks.items()},
    }


if __name__ == "__main__":
    raise SystemExit(0 if main()["report_ok"] else 1)
