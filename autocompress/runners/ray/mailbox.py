"""The mailbox between workers and the driver for multi-fidelity trials, and the relay that
hands each report at a rung to the driver's referee and its verdict back."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from autocompress.runners._base import Referee

# How long a worker waits for the verdict on its report: the driver answers in milliseconds
# unless it is busy storing a result or sampling, and a late verdict still stops the trial at
# its next checkpoint.
VERDICT_WAIT_S = 2.0


class Mailbox:
    """Between workers and the driver, for multi-fidelity trials (an async actor: one event loop,
    every call cheap). A worker posts its report at a rung and waits, up to ``wait`` seconds, for
    the driver's verdict; the driver's ``collect`` returns as soon as a report arrives. Workers
    never reach the study storage: the driver writes what it collects."""

    def __init__(self) -> None:
        import asyncio

        self.reports: list[tuple[int, dict[str, Any]]] = []
        self.stopped: set[int] = set()
        self._arrived = asyncio.Event()
        self._verdicts: dict[tuple[int, int], Any] = {}  # (trial, step) -> asyncio.Event

    async def report(self, number: int, rung: dict[str, Any] | None, wait: float = 0.0) -> bool:
        """Post a report (None: only ask); whether the driver has stopped the trial."""
        import asyncio

        if rung is not None:
            key = (number, int(rung["step"]))
            judged = self._verdicts[key] = asyncio.Event()
            self.reports.append((number, rung))
            self._arrived.set()
            try:
                await asyncio.wait_for(judged.wait(), wait)
            except asyncio.TimeoutError:
                pass  # the driver is busy: the verdict reaches the next checkpoint
            finally:
                self._verdicts.pop(key, None)
        return number in self.stopped

    async def collect(self, wait: float = 0.0) -> list[tuple[int, dict[str, Any]]]:
        """The reports posted since the last call, waiting up to ``wait`` seconds for one."""
        import asyncio

        if not self.reports and wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait)
        self._arrived.clear()
        reports, self.reports = self.reports, []
        return reports

    async def judged(self, number: int, step: int, stop: bool) -> None:
        if stop:
            self.stopped.add(number)
        event = self._verdicts.get((number, step))
        if event is not None:
            event.set()

    async def forget(self, number: int) -> None:
        self.stopped.discard(number)


class RungRelay:
    """The driver's side of the mailbox: waits for a finished evaluation while relaying each
    report at a rung to the referee as it arrives, and its verdict back to the worker."""

    def __init__(self, mailbox: Any, referee: Referee) -> None:
        self.mailbox, self.referee = mailbox, referee
        self._collecting: Any = None  # the mailbox's collect call in flight

    def wait(self, pending: list[Any], running: set[int], timeout: float | None) -> list[Any]:
        """A finished evaluation among ``pending`` refs, waiting up to ``timeout``. Reports
        posted before a result are relayed before it is returned."""
        import ray

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._collecting is None:
                self._collecting = self.mailbox.collect.remote(5.0)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait([*pending, self._collecting], num_returns=1, timeout=left)
            if self._collecting in ready:
                reports, self._collecting = ray.get(self._collecting), None
                self._relay(reports, running)
                continue
            if ready:
                self._relay(ray.get(self.mailbox.collect.remote(0.0)), running)
            if ready or (deadline is not None and time.monotonic() >= deadline):
                return ready

    def forget(self, number: int) -> None:
        self.mailbox.forget.remote(number)

    def _relay(self, reports: list[tuple[int, dict[str, Any]]], running: set[int]) -> None:
        from autocompress.fidelity import Rung

        for number, rung in reports:
            stop = number in running and self.referee(number, Rung.from_dict(rung))
            self.mailbox.judged.remote(number, int(rung["step"]), stop)
