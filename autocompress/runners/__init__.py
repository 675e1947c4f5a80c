"""Runners: where evaluations happen (in-process or on Ray actors), behind one interface."""

from autocompress.runners._base import RUNNERS, Runner
from autocompress.runners.local import LocalRunner
from autocompress.runners.ray_runner import RayRunner

__all__ = ["RUNNERS", "LocalRunner", "RayRunner", "Runner", "make_runner"]


def make_runner(workers: int, address: str | None = None) -> Runner:
    """``workers == 0`` evaluates in-process; otherwise a Ray actor pool of that size."""
    if workers == 0:
        return LocalRunner()
    return RayRunner(workers=workers, address=address)
