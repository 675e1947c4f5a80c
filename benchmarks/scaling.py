"""Scaling: the same trials with 1 and 2 Ray workers, and the share of time outside evaluation.

Both runs use the same space, seed and fine-tuning budget. Wall time is measured from the first
trial's start to the last trial's end (from the study's own timestamps), so Ray start-up and
baseline training are excluded. Overhead is the share of worker time not spent evaluating:
1 - sum(eval_seconds) / (wall * workers).

Targets: 2 workers >= 1.85x the throughput of 1; overhead <= 5%.

Usage: python -m benchmarks.scaling [--trials 12] [--steps 300]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from optuna.trial import TrialState

from autocompress.config import load_config
from autocompress.driver import run_search
from benchmarks.scratch import scratch


def run(workers: int, trials: int, steps: int, folder: Path) -> dict[str, float]:
    (folder / f"w{workers}.yaml").write_text(
        f"name: scaling-w{workers}\nstorage: sqlite:///{folder / 'scaling.db'}\ncache_dir: {folder / 'cache'}\n"
        f"artifact_dir: {folder / 'artifacts'}\nsearch: {{trials: {trials}, workers: {workers}, seed: 0, sampler: random}}\n"
        f"finetune: {{steps: {steps}}}\n"
    )
    study = run_search(load_config(folder / f"w{workers}.yaml"), progress=False)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    wall = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    evaluating = sum(t.user_attrs["metrics"]["eval_seconds"] for t in done)
    return {
        "workers": workers,
        "wall_s": wall,
        "eval_s": evaluating,
        "trials_per_s": len(done) / wall,
        "overhead": 1.0 - evaluating / (wall * workers),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="4 trials of 50 steps: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.steps = 4, 50
    folder = scratch("scaling-")
    one = run(1, args.trials, args.steps, folder)
    two = run(2, args.trials, args.steps, folder)
    for r in (one, two):
        print(
            f"{r['workers']} worker(s): {r['wall_s']:.1f} s wall for {args.trials} trials, "
            f"{r['trials_per_s']:.3f} trials/s, overhead {100 * r['overhead']:.1f}%"
        )
    print(
        f"speedup 2 vs 1 workers: {two['trials_per_s'] / one['trials_per_s']:.2f}x (target >= 1.85x); "
        f"overhead with 2 workers: {100 * two['overhead']:.1f}% (target <= 5%)"
    )
    return {"trials": args.trials, "steps": args.steps, "one": one, "two": two, "speedup": two["trials_per_s"] / one["trials_per_s"]}


if __name__ == "__main__":
    main()
