"""The search wing: one room per job of a search.

- ``loop``: the ``Driver``, orchestration only (``run_search`` is its front door);
- ``checks``: every user mistake turned into one line before anything starts;
- ``setup``: the study opened or created, checked against the config, described, seeded;
- ``leases``: which driver holds which trials, dead drivers' trials re-queued;
- ``measure``: the baseline, measured once per study on a worker;
- ``warm_start``: uniform plans, the one-shot sensitivity and the ladder it steers;
- ``asking``: trials claimed against the target and their plans drawn, one ahead in a thread;
- ``telling``: the one write path of results, and the front kept up to date;
- ``rungs``: reports at rungs stored and judged by the trial pruner;
- ``timings``: the driver's own seconds by part.

Names are imported on first use, so ``from autocompress.driver.checks import prepare`` loads
no more than it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Driver": "autocompress.driver.loop",
    "run_search": "autocompress.driver.loop",
    "measure_baseline": "autocompress.driver.measure",
    "prepare": "autocompress.driver.checks",
    "WARM_START": "autocompress.driver.warm_start",
    "WARM_START_CHANNEL": "autocompress.driver.warm_start",
}

__all__ = ["WARM_START", "WARM_START_CHANNEL", "Driver", "measure_baseline", "prepare", "run_search"]

if TYPE_CHECKING:
    from autocompress.driver.checks import prepare
    from autocompress.driver.loop import Driver, run_search
    from autocompress.driver.measure import measure_baseline
    from autocompress.driver.warm_start import WARM_START, WARM_START_CHANNEL


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autocompress.driver' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
