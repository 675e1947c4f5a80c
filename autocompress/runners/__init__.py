"""Runners: where evaluations happen (in-process or on Ray actors), behind one interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autocompress.runners._base import RUNNERS, Runner
from autocompress.runners.local import LocalRunner
from autocompress.runners.ray import RayRunner

if TYPE_CHECKING:
    from autocompress.config import SearchConfig

__all__ = ["RUNNERS", "LocalRunner", "RayRunner", "Runner", "make_runner"]


def make_runner(search: SearchConfig) -> Runner:
    """``workers == 0`` evaluates in-process; otherwise a Ray actor pool of that size."""
    runner = RUNNERS.get("local" if search.workers == 0 else "ray")
    return runner(
        workers=search.workers,
        address=search.ray_address,
        cpus_per_worker=search.cpus_per_worker,
        gpus_per_worker=search.gpus_per_worker,
        max_retries=search.max_retries,
        trial_timeout=search.trial_timeout,
    )
