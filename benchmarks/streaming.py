"""Data bigger than memory: a search whose splits are read from disk where the work runs.

For each of two dataset sizes (1 GiB and 4 GiB of float32 rows; 48 and 192 MiB with --quick),
the benchmark writes a regression dataset to a temporary folder (rows of 255 features and a
target), then runs a search in a fresh process with 2 Ray workers on it. The task's splits are
functions that read their rows in chunks with plain file reads (no memory map: mapped pages
would count in a process's resident memory) and record, each time a split is read through, the
peak resident memory of the process reading it. The driver records its own. Memory that stays
flat as the data grows 4x is the claim; the data is also far larger than any process's peak.

    python -m benchmarks streaming            # about 8 minutes on 2 cores
    python -m benchmarks streaming --quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 255  # + the target: 1 KiB a row
ROW_BYTES = 4 * (FEATURES + 1)
CHUNK_ROWS = 4096  # rows read per file read
SEED = 0


def _peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM, which starts afresh at exec (getrusage's
    ru_maxrss keeps the peak of the process that exec'd us: a large parent would show)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def write_dataset(folder: Path, size_bytes: int) -> int:
    """``rows.f32``: rows of FEATURES features and a linear target with noise; returns the rows."""
    rows = size_bytes // ROW_BYTES
    rng = np.random.default_rng(SEED)
    weights = rng.normal(size=FEATURES).astype(np.float32) / np.sqrt(FEATURES)
    with open(folder / "rows.f32", "wb") as f:
        for start in range(0, rows, 65536):
            n = min(65536, rows - start)
            x = rng.normal(size=(n, FEATURES)).astype(np.float32)
            y = x @ weights + 0.1 * rng.normal(size=n).astype(np.float32)
            f.write(np.concatenate([x, y[:, None]], axis=1).astype(np.float32).tobytes())
    np.save(folder / "weights.npy", weights)
    (folder / "meta.json").write_text(json.dumps({"rows": rows}))
    return rows


class Rows:
    """A split: rows [lo, hi) of the file, in batches, read in chunks where it is opened; each
    full pass appends this process's pid and peak resident memory to ``log``."""

    def __init__(self, folder: str, lo: int, hi: int, batch: int, log: str, split: str) -> None:
        self.folder, self.lo, self.hi, self.batch, self.log, self.split = folder, lo, hi, batch, log, split

    def __call__(self) -> Any:
        import torch

        with open(Path(self.folder) / "rows.f32", "rb") as f:
            for start in range(self.lo, self.hi, CHUNK_ROWS):
                n = min(CHUNK_ROWS, self.hi - start)
                f.seek(start * ROW_BYTES)
                block = np.fromfile(f, dtype=np.float32, count=n * (FEATURES + 1)).reshape(n, FEATURES + 1)
                data = torch.from_numpy(block.copy())
                for i in range(0, n, self.batch):
                    yield data[i : i + self.batch, :FEATURES], data[i : i + self.batch, FEATURES]
        with open(self.log, "a") as out:
            out.write(f"{self.split} {os.getpid()} {_peak_rss_mib():.1f}\n")


def make_task() -> dict[str, Any]:
    """The benchmark's task (``task.model: benchmarks.streaming:make_task``): an MLP trained on a
    sample drawn here from the same generator (the file is never read on the driver)."""
    import torch
    from torch import nn

    folder, log = os.environ["STREAMING_DATA"], os.environ["STREAMING_LOG"]
    rows = json.loads((Path(folder) / "meta.json").read_text())["rows"]
    weights = torch.from_numpy(np.load(Path(folder) / "weights.npy")).float()
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(FEATURES, 128), nn.ReLU(), nn.Linear(128, 1), nn.Flatten(0))
    x = torch.randn(8192, FEATURES)
    y = x @ weights + 0.1 * torch.randn(8192)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(300):
        idx = torch.randint(0, len(x), (256,))
        opt.zero_grad()
        nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
    n_train, n_val = int(0.9 * rows), int(0.05 * rows)
    return {
        "model": model.eval(),
        "train": Rows(folder, 0, n_train, 256, log, "train"),
        "val": Rows(folder, n_train, n_train + n_val, 1024, log, "val"),
        "test": Rows(folder, n_train + n_val, rows, 1024, log, "test"),
        "loss": lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
        "metric": "mse",
        "example_input": torch.zeros(32, FEATURES),
    }


def child(folder: Path, out: Path) -> None:
    """One search on ``folder``'s data, in this (fresh) process; writes what it measured."""
    from autocompress.config import load_config
    from autocompress.driver import run_search

    config = folder / "study.yaml"
    config.write_text(
        f"name: streaming\nstorage: sqlite:///{folder / 's.db'}\nartifact_dir: {folder / 'artifacts'}\ncache_dir: {folder / 'cache'}\n"
        "task: {model: 'benchmarks.streaming:make_task'}\n"
        "search: {trials: 2, workers: 2, seed: 0, sensitivity: false}\nfinetune: {steps: 60, batch_size: 256}\n"
        "deploy: {max_seconds: 0.2}\npareto: {max_drop: '50%'}\n"
    )
    start = time.monotonic()
    study = run_search(load_config(config), progress=False)
    seconds = time.monotonic() - start
    complete = [t for t in study.trials if t.values is not None]
    out.write_text(json.dumps({"driver_peak_mib": _peak_rss_mib(), "seconds": seconds, "complete": len(complete), "driver_pid": os.getpid()}))


def run_size(size_bytes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="autocompress-streaming-") as tmp:
        folder = Path(tmp)
        start = time.monotonic()
        rows = write_dataset(folder, size_bytes)
        written = time.monotonic() - start
        log, out = folder / "opened.log", folder / "out.json"
        env = {**os.environ, "STREAMING_DATA": str(folder), "STREAMING_LOG": str(log), "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        repo = Path(__file__).resolve().parents[1]
        env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")])
        proc = subprocess.run([sys.executable, "-m", "benchmarks.streaming", "--child", str(folder), str(out)], env=env, cwd=repo)
        if proc.returncode != 0:
            raise SystemExit(f"the search on {size_bytes >> 20} MiB failed (exit {proc.returncode})")
        measured = json.loads(out.read_text())
        workers: dict[int, float] = {}
        splits: dict[str, int] = {}
        for line in log.read_text().splitlines():
            split, pid, peak = line.split()
            workers[int(pid)] = max(workers.get(int(pid), 0.0), float(peak))
            splits[split] = splits.get(split, 0) + 1
        return {
            "dataset_mib": round(rows * ROW_BYTES / 2**20, 1),
            "rows": rows,
            "write_seconds": round(written, 1),
            "search_seconds": round(measured["seconds"], 1),
            "complete_trials": measured["complete"],
            "driver_peak_mib": round(measured["driver_peak_mib"], 1),
            "driver_opened_data": measured["driver_pid"] in workers,
            "worker_peak_mib": {str(pid): round(peak, 1) for pid, peak in sorted(workers.items())},
            "passes_by_split": splits,
        }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="48 and 192 MiB instead of 1 and 4 GiB")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return {}
    sizes = (48 << 20, 192 << 20) if args.quick else (1 << 30, 4 << 30)
    runs = []
    for size in sizes:
        print(f"streaming: {size >> 20} MiB", flush=True)
        runs.append(run_size(size))
        print(f"  {json.dumps(runs[-1])}", flush=True)
    small, large = runs
    worker_small, worker_large = max(small["worker_peak_mib"].values()), max(large["worker_peak_mib"].values())
    summary = {
        "data_growth": round(large["dataset_mib"] / small["dataset_mib"], 2),
        "driver_peak_ratio": round(large["driver_peak_mib"] / small["driver_peak_mib"], 3),
        "worker_peak_ratio": round(worker_large / worker_small, 3),
        "largest_process_mib": max(large["driver_peak_mib"], worker_large),
        "data_over_largest_process": round(large["dataset_mib"] / max(large["driver_peak_mib"], worker_large), 2),
        "driver_opened_data": small["driver_opened_data"] or large["driver_opened_data"],
    }
    print(
        f"data {summary['data_growth']}x larger: driver peak x{summary['driver_peak_ratio']}, worker peak x{summary['worker_peak_ratio']}; "
        f"the data is {summary['data_over_largest_process']}x the largest process; driver opened data: {summary['driver_opened_data']}"
    )
    return {"runs": runs, "summary": summary}


if __name__ == "__main__":
    main()
