from __future__ import annotations

from pathlib import Path

import pytest

from autocompress.tasks import Task, TaskSpec, build_task
from tests import helpers  # noqa: F401  (registers the test models once)


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

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
