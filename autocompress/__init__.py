"""autocompress: find the best ways to compress a trained PyTorch model.

A multi-objective Optuna study samples, for every compressible layer, a pruning sparsity, a
weight bit-width and a low-rank rank; workers build, fine-tune and measure each candidate;
the Pareto front of accuracy / size / latency lands in a SQL database optuna-dashboard reads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported on first use: `autocompress --help` and a config mistake answer without loading
# torch, Optuna and Ray (seconds).
_EXPORTS = {
    "AutocompressError": "autocompress.errors",
    "CompressionPlan": "autocompress.plan",
    "LayerPlan": "autocompress.plan",
    "Result": "autocompress.plan",
    "StudyConfig": "autocompress.config",
    "load": "autocompress.artifact",
    "load_config": "autocompress.config",
    "run_search": "autocompress.driver",
    "search": "autocompress.api",
    "SearchResult": "autocompress.api",
}

__all__ = [
    "AutocompressError",
    "CompressionPlan",
    "LayerPlan",
    "Result",
    "SearchResult",
    "StudyConfig",
    "load",
    "load_config",
    "run_search",
    "search",
]

if TYPE_CHECKING:
    from autocompress.api import SearchResult, search
    from autocompress.artifact import load
    from autocompress.config import StudyConfig, load_config
    from autocompress.driver import run_search
    from autocompress.errors import AutocompressError
    from autocompress.plan import CompressionPlan, LayerPlan, Result


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autocompress' has no attribute {name!r}")
