"""Scratch folders for benchmark runs, removed when the run ends.

A search's artifacts and baselines run to hundreds of MB (ResNet-18's ONNX files); folders left in the
system's temporary directory fill a shared disk run after run. A folder the user names with --folder is
theirs and is kept.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_MADE: list[Path] = []


def scratch(prefix: str, keep: str | None = None) -> Path:
    """The folder the user named (kept), or a fresh temporary one removed by clean_up() or at exit."""
    if keep:
        folder = Path(keep)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    _MADE.append(folder)
    return folder


def clean_up() -> None:
    """Remove every scratch folder made so far (benchmarks/__main__ calls it after each benchmark)."""
    while _MADE:
        shutil.rmtree(_MADE.pop(), ignore_errors=True)


atexit.register(clean_up)
