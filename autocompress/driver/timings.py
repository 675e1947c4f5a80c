"""The driver's own seconds by part, and how long a freed worker waits for its next trial:
what ``benchmarks/driver_scale.py`` prints."""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator


class Timings:
    """Seconds by part of the driver's work, this run, and the hand-off waits."""

    def __init__(self) -> None:
        self.parts: collections.defaultdict[str, float] = collections.defaultdict(float)  # part -> seconds
        self.handoffs: list[float] = []  # seconds from a worker's result to the next trial handed out
        self._result_at: float | None = None  # when the last result arrived, until a trial goes out

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Count the block's seconds toward ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] += time.perf_counter() - start

    def result_arrived(self) -> None:
        self._result_at = time.perf_counter()

    def trial_handed_out(self) -> None:
        if self._result_at is not None:
            self.handoffs.append(time.perf_counter() - self._result_at)
            self._result_at = None
