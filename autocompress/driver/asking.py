"""Asking: trials claimed against the study's target (all drivers together) and their plans
drawn, in the loop or one ahead in a thread while the workers run."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import optuna
from optuna.trial import TrialState

from autocompress import _optuna
from autocompress.driver.leases import Lease
from autocompress.driver.timings import Timings
from autocompress.plan import CompressionPlan
from autocompress.space import SearchSpace

T = TypeVar("T")
Asked = tuple[optuna.Trial, CompressionPlan]


class AskAhead(Generic[T]):
    """One trial asked and sampled ahead, in a thread, while the workers run: a freed worker
    gets its next trial without waiting on the sampler, whose ask grows with the study (TPE's
    took about 0.7 s at 10,000 trials). ``make`` claims and samples a trial, or returns None
    when the study needs no more; its errors reach the loop through ``take``."""

    def __init__(self, make: Callable[[], T | None]) -> None:
        self._make = make
        self._cond = threading.Condition()
        self._ready: T | None = None
        self._error: BaseException | None = None
        self._wanted = self._busy = self._closed = False
        self._thread = threading.Thread(target=self._run, name="autocompress-ask-ahead", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Ask one ahead, unless one is ready."""
        with self._cond:
            self._wanted = True
            self._cond.notify_all()

    def take(self) -> T | None:
        """The trial asked ahead (waiting for one being asked), or None."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            ready, self._ready = self._ready, None
            return ready

    def close(self, timeout: float = 5.0) -> T | None:
        """Stop the thread; the trial it had ready, never handed out. One still being asked
        after ``timeout`` is left RUNNING for the next driver to recover."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            ready, self._ready = self._ready, None
            return ready

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not (self._wanted and self._ready is None and self._error is None):
                    self._cond.wait()
                if self._closed:
                    return
                self._wanted, self._busy = False, True
            made: T | None = None
            error: BaseException | None = None
            try:
                made = self._make()
            except BaseException as exc:  # noqa: BLE001  (take() raises it in the loop)
                error = exc
            with self._cond:
                self._ready, self._error, self._busy = made, error, False
                self._cond.notify_all()


class Asker:
    """Claims a study's trials and draws their plans; keeps each plan until its result is told."""

    def __init__(
        self, study: optuna.Study, space: SearchSpace, target: int, lease: Lease, driver_id: str, timings: Timings, deadline: float | None
    ) -> None:
        """``target``: COMPLETE trials the study needs; ``deadline``: a ``time.perf_counter()``
        after which no trial is started (search.timeout), or None."""
        self.study, self.space, self.target = study, space, target
        self._lease, self._driver_id, self._timings, self._deadline = lease, driver_id, timings, deadline
        self._plans: dict[int, dict[str, Any]] = {}  # trial number -> its plan, while in flight
        self._claiming = threading.Lock()  # the loop and the ask-ahead thread claim one at a time
        self._ahead: AskAhead[Asked] | None = None

    def start_ahead(self) -> None:
        self._ahead = AskAhead(lambda: self.ask(("ahead_ask", "ahead_sample")))

    def next(self) -> Asked | None:
        """The trial asked ahead if there is one, else one asked now; None when the study needs no more."""
        got = None
        if self._ahead is not None:
            with self._timings.part("wait"):  # only while the thread is mid-ask: it is never idle with work to do
                got = self._ahead.take()
        return got or self.ask()

    def request_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.request()  # the next trial, asked while the workers run

    def close_ahead(self) -> optuna.Trial | None:
        """Stop asking ahead; the trial it had claimed and not handed out, if any."""
        ahead, self._ahead = self._ahead, None
        got = ahead.close() if ahead is not None else None
        return got[0] if got else None

    def plan_of(self, number: int) -> dict[str, Any]:
        """A finished trial's plan, handed over once."""
        return self._plans.pop(number, {})

    def out_of_time(self) -> bool:
        return self._deadline is not None and time.perf_counter() >= self._deadline

    def ask(self, timed: tuple[str, str] = ("ask", "sample")) -> Asked | None:
        """Claim a trial and draw its plan; None when the study needs no more."""
        with self._claiming:
            with self._timings.part(timed[0]):
                trial = self._claim()
            if trial is None:
                return None
            try:
                with self._timings.part(timed[1]):
                    plan = _optuna.sample_then_write(trial, self.space.sample, functools.partial(self._owned, trial.number))
            except BaseException as exc:
                _optuna.fail_with_reason(self.study, trial, f"search stopped while sampling: {exc!r}")
                raise
            return trial, plan

    def _owned(self, number: int, plan: CompressionPlan) -> dict[str, Any]:
        """A new trial's user attributes, written with its parameters: whose it is, its plan."""
        self._plans[number] = plan.to_dict()
        return {"driver_id": self._driver_id, "plan": self._plans[number]}

    def _claim(self) -> optuna.Trial | None:
        """Ask for a trial if the study (all drivers together) still needs one.

        COMPLETE plus RUNNING trials of every driver count against the target, so several
        drivers on one study finish exactly the requested number. On PostgreSQL the count
        and the ask are serialised across drivers by an advisory lock.
        """
        # (A driver killed while sampling leaves a RUNNING trial with some parameters; its
        # re-queued copy keeps those and samples the rest.)
        # The owner is written with the parameters, a moment later: recovery leaves a trial
        # without one alone while it is younger than the lease timeout.
        if self.out_of_time():
            return None
        with self._lease.ask_lock():
            counts = _optuna.state_counts(self.study)
            if counts[TrialState.COMPLETE] + counts[TrialState.RUNNING] >= self.target:
                return None
            return _optuna.ask(self.study, queue_empty=not counts[TrialState.WAITING])
