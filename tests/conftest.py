from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autocompress.tasks import Task, TaskSpec, build_task

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One baseline cache per test session: each model is trained once."""
    return tmp_path_factory.mktemp("baselines")


@pytest.fixture(scope="session")
def cnn_task(cache_dir: Path) -> Task:
    return build_task(TaskSpec(model="digits-cnn"), cache_dir)


@pytest.fixture(scope="session")
def mlp_task(cache_dir: Path) -> Task:
    return build_task(TaskSpec(model="digits-mlp"), cache_dir)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole session (starting one takes seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def run_cli(*args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m autocompress ARGS`` as a user would, in ``cwd``."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("RAY_ADDRESS", None) if env is None or "RAY_ADDRESS" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "autocompress", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )
