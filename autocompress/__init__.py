"""autocompress: find the best ways to compress a trained PyTorch model.

A multi-objective Optuna study samples, for every compressible layer, a pruning sparsity, a
weight bit-width and a low-rank rank; workers build, fine-tune and measure each candidate;
the Pareto front of accuracy / size / latency lands in a SQL database optuna-dashboard reads.
"""

from autocompress.artifact import load
from autocompress.config import StudyConfig, load_config
from autocompress.errors import AutocompressError
from autocompress.plan import CompressionPlan, LayerPlan, Result
from autocompress.search import run_search

__version__ = "0.1.0"

__all__ = [
    "AutocompressError",
    "CompressionPlan",
    "LayerPlan",
    "Result",
    "StudyConfig",
    "load",
    "load_config",
    "run_search",
]
