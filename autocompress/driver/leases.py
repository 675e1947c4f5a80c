"""Leases: which driver holds which trials, and what happens when a driver dies.

Each driver holds a row in ``autocompress_drivers`` (host, pid, heartbeat) and tags the trials it
asks for with its id. A trial whose driver is gone (same host: its pid is dead; another host:
silent for ``LEASE_TIMEOUT_S``) is failed with the reason and its parameters re-queued. Several
drivers on one PostgreSQL study count and ask under an advisory lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from autocompress import _optuna, tables
from autocompress._proc import pid_alive

log = logging.getLogger(__name__)

LEASE_TIMEOUT_S = 60.0  # a driver on another host silent this long is taken for dead
HEARTBEAT_EVERY_S = 5.0


class Lease:
    """One driver's lease on one study."""

    def __init__(self, engine: sa.engine.Engine, study_id: int, driver_id: str) -> None:
        self.engine, self.study_id, self.driver_id = engine, study_id, driver_id
        self._last_beat = 0.0

    def start(self) -> None:
        tables.start_lease(self.engine, self.driver_id, self.study_id, socket.gethostname(), os.getpid(), time.time())
        self._last_beat = time.monotonic()

    def beat(self) -> None:
        """Renew the heartbeat, at most every ``HEARTBEAT_EVERY_S``."""
        if time.monotonic() - self._last_beat >= HEARTBEAT_EVERY_S:
            tables.heartbeat(self.engine, self.driver_id, time.time())
            self._last_beat = time.monotonic()

    def finish(self) -> None:
        tables.heartbeat(self.engine, self.driver_id, time.time(), finished=True)

    @contextlib.contextmanager
    def ask_lock(self) -> Iterator[None]:
        """Serialise a count-and-ask (or the analyser's writes) across drivers on PostgreSQL."""
        if self.engine.dialect.name != "postgresql":
            yield  # SQLite: one driver per database file
            return
        key = 0x6163_0000_0000 + self.study_id  # "ac" + study id: one lock per study
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()

    def recover_stale_trials(self, study: optuna.Study) -> int:
        """Fail the RUNNING trials of drivers that died, with the reason, and re-queue their plans."""
        now = time.time()
        alive: dict[str, bool] = {}
        for driver_id, lease in tables.leases(self.engine, self.study_id).items():
            if lease["finished"]:
                alive[driver_id] = False
            elif lease["host"] == socket.gethostname() and lease["pid"] != os.getpid():
                alive[driver_id] = pid_alive(lease["pid"])  # same machine: ask the OS, no waiting
            else:
                alive[driver_id] = now - lease["heartbeat_at"] < LEASE_TIMEOUT_S
        recovered = 0
        running = _optuna.trial_rows(study, (TrialState.RUNNING,))  # a resumed study is not read whole
        for t in _optuna.trials_by_number(study, [r.number for r in running]).values():
            owner = t.user_attrs.get("driver_id")
            # A driver without a lease row is dead; a trial without an owner (asked, but killed
            # before tagging) counts as alive only while it is younger than the lease timeout.
            started = t.datetime_start.timestamp() if t.datetime_start else now
            if owner == self.driver_id or (alive.get(owner, False) if owner else now - started < LEASE_TIMEOUT_S):
                continue
            _optuna.fail_with_reason(study, t, f"driver {owner or 'unknown'} died while the trial ran; plan re-queued")
            study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
            recovered += 1
            log.warning("trial %d: its driver %s is gone; failed and re-queued", t.number, owner)
        return recovered
