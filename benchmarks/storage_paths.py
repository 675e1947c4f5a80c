"""A trial's writes along each path to the database, and whether their cost grows with the study.

What a driver writes for one trial (ask, the digits-cnn default space's 16 suggestions, a dozen
attributes, tell) is made ``--trials`` times along each path:

- ``public``: Optuna's public calls on the database (its cached storage, as ``optuna.load_study``
  with a URL gives);
- ``batched``: the driver's two transactions (``_optuna.sample_then_write`` and
  ``_optuna.complete_trial``);
- ``grpc``: Optuna's public calls through its gRPC storage proxy, a server process in front of
  the same database (``get_storage``, cached, as Optuna's documentation asks). Needs grpcio.

On SQLite always, and on PostgreSQL when AUTOCOMPRESS_BENCH_POSTGRES names a database. Prints
milliseconds per trial over the first and the last tenth of the trials.

Usage: python -m benchmarks.storage_paths [--trials 1000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from autocompress import _optuna
from autocompress.space import SearchSpace, load_space
from autocompress.tasks import TaskSpec, layer_skeleton

DIRECTIONS = ["maximize", "minimize", "minimize"]


def _study(name: str, storage: Any) -> optuna.Study:
    """Random sampling: Optuna's default multi-objective sampler reads every trial per ask, which
    would be measured instead of the writes."""
    return optuna.create_study(study_name=name, storage=storage, directions=DIRECTIONS, sampler=optuna.samplers.RandomSampler(seed=0))


ATTRS = {f"attr{k}": {"value": k, "rows": list(range(20))} for k in range(12)}  # a dozen, as the driver's


def _public(study: optuna.Study, space: SearchSpace, k: int) -> None:
    trial = study.ask()
    space.sample(trial)
    for key, value in ATTRS.items():
        trial.set_user_attr(key, value)
    study.tell(trial, [0.9, 1000.0 + k, 1.0])


def _batched(study: optuna.Study, space: SearchSpace, k: int) -> None:
    trial = _optuna.ask(study, queue_empty=True)
    _optuna.sample_then_write(trial, space.sample, lambda plan: {"plan": plan.to_dict()})
    _optuna.complete_trial(study, trial, [0.9, 1000.0 + k, 1.0], ATTRS, {})


def _timed(study: optuna.Study, space: SearchSpace, write: Callable[[optuna.Study, SearchSpace, int], None], trials: int) -> dict[str, float]:
    """Milliseconds per trial over the first and the last tenth, and over all."""
    times = []
    for k in range(trials):
        start = time.perf_counter()
        write(study, space, k)
        times.append(time.perf_counter() - start)
    tenth = max(1, trials // 10)
    return {
        "first_ms": 1000 * sum(times[:tenth]) / tenth,
        "last_ms": 1000 * sum(times[-tenth:]) / tenth,
        "mean_ms": 1000 * sum(times) / trials,
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _through_proxy(url: str, name: str, space: SearchSpace, trials: int) -> dict[str, float] | None:
    try:
        import grpc  # noqa: F401  (Optuna's proxy needs it)
    except ImportError:
        return None
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import optuna; optuna.storages.run_grpc_proxy_server(optuna.storages.get_storage({url!r}), host='127.0.0.1', port={port})",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(150):  # the server takes a moment to listen
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    proxy = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
                study = _study(name, proxy)
                break
            except Exception:  # noqa: BLE001  (not listening yet)
                time.sleep(0.2)
        else:
            return None
        return _timed(study, space, _public, trials)
    finally:
        server.terminate()
        server.wait(timeout=30)


def measure(url: str, space: SearchSpace, trials: int, tag: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    storage = optuna.storages.get_storage(url)
    out["public"] = _timed(_study(f"public-{tag}", storage), space, _public, trials)
    out["batched"] = _timed(_study(f"batched-{tag}", storage), space, _batched, trials)
    grpc = _through_proxy(url, f"grpc-{tag}", space, trials)
    if grpc is not None:
        out["grpc"] = grpc
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000, help="trials written along each path")
    parser.add_argument("--quick", action="store_true", help="50 trials (a smoke run)")
    args = parser.parse_args(argv)
    trials = 50 if args.quick else args.trials
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(None).resolve(*layer_skeleton(TaskSpec(model="digits-cnn")))
    results: dict[str, Any] = {"trials": trials, "storages": {}}
    tag = str(os.getpid())  # a study name of its own on a shared PostgreSQL database
    with tempfile.TemporaryDirectory() as tmp:
        results["storages"]["SQLite"] = measure(f"sqlite:///{Path(tmp) / 'paths.db'}", space, trials, tag)
    if os.environ.get("AUTOCOMPRESS_BENCH_POSTGRES"):
        results["storages"]["PostgreSQL"] = measure(os.environ["AUTOCOMPRESS_BENCH_POSTGRES"], space, trials, tag)
    print(f"a trial's writes, milliseconds per trial (first tenth -> last tenth of {trials} trials):")
    for storage, paths in results["storages"].items():
        for path, t in paths.items():
            print(f"  {storage:>10} {path:>8}: {t['first_ms']:.1f} -> {t['last_ms']:.1f} (mean {t['mean_ms']:.1f})")
    return results


if __name__ == "__main__":
    main()
