"""Latency that survives a busy machine: paired timing in an exclusive slot per device.

Two mechanisms, both needed:

* Isolation. Every worker on a node takes a *shared* lock on its device for each fine-tuning
  step, accuracy pass or export, and an *exclusive* one while it times; so a measurement never
  overlaps another worker's work on the same device. The lock is ``flock`` on a file per device
  (the kernel drops it when a process dies), with a turnstile so a waiting timer is not starved
  by workers that keep taking shared turns.
* Pairing. Load from outside the search (other programs, clock ramps) cannot be locked out, so a
  candidate is timed alternately with the baseline in the same slot: the speedup is the median of
  per-round ratios, which external load moves for both alike. The CV of those ratios is stored;
  a measurement that hits the time cap before reaching the threshold says so (``capped``).
"""

from __future__ import annotations

import fcntl
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

MIN_ROUNDS = 10  # paired rounds before the CV may stop a measurement
# Each timed block runs at least max_seconds / BLOCKS_PER_BUDGET, within these bounds: longer
# blocks average out scheduler noise, and enough rounds still fit in the budget.
BLOCKS_PER_BUDGET = 40
MIN_BLOCK_SECONDS, MAX_BLOCK_SECONDS = 0.005, 0.05
MAX_BLOCK_RUNS = 4096
_MERGE_GAP_S = 0.001  # shared turns closer than this are one busy window (a timing slot is longer)


class Timeable(Protocol):
    def run_block(self, n: int) -> float:
        """Seconds for ``n`` forward passes on the bound example, device work finished."""


@dataclass
class Timing:
    """One latency measurement.

    Args:
        latency_ms: the candidate's median milliseconds per forward pass in this slot.
        ratio: median over rounds of candidate / baseline time (1.0 when timed alone).
        cv: robust coefficient of variation (``_cv``) of the ratios (paired) or of the block
            times (alone).
        rounds: timed rounds.
        capped: the time cap ended it before the CV reached the threshold.
        window: wall-clock (start, end) of the exclusive slot, ``time.time()`` seconds.
        others_cores: CPU cores other processes kept busy on average during the slot (the
            machine's CPU time from /proc/stat less this process's own); None where it cannot
            be read. What a flag may say about load, measured rather than guessed.
    """

    latency_ms: float
    ratio: float = 1.0
    cv: float = 0.0
    rounds: int = 0
    capped: bool = False
    baseline_ms: float | None = None
    window: tuple[float, float] = (0.0, 0.0)
    others_cores: float | None = None

    def to_dict(self) -> dict:
        return {
            "latency_ms": self.latency_ms,
            "ratio": self.ratio,
            "cv": self.cv,
            "rounds": self.rounds,
            "capped": self.capped,
            "baseline_ms": self.baseline_ms,
            "window": list(self.window),
            "others_cores": self.others_cores,
        }


def _cv(values: list[float]) -> float:
    """Robust coefficient of variation: 1.4826 x median absolute deviation / median.

    It matches stdev / mean for well-behaved samples, and like the median it reports, a few
    rounds preempted by the scheduler do not inflate it (they would dominate a plain stdev).
    """
    if len(values) < 2:
        return float("inf")
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    return 1.4826 * mad / median if median > 0 else float("inf")


def _runs_per_block(target: Timeable, max_seconds: float) -> int:
    """Forward passes per block so that a block lasts long enough to average out noise."""
    seconds = min(MAX_BLOCK_SECONDS, max(MIN_BLOCK_SECONDS, max_seconds / BLOCKS_PER_BUDGET))
    n = 1
    while n < MAX_BLOCK_RUNS and target.run_block(n) < seconds:
        n *= 2
    return n


def time_alone(target: Timeable, threshold: float, max_seconds: float) -> Timing:
    """Median time of one forward pass: blocks until their CV <= threshold or the cap."""
    start, t0, load = time.perf_counter(), time.time(), LoadMeter()
    target.run_block(2)  # warm-up: first-call allocation, kernel selection
    n = _runs_per_block(target, max_seconds)
    times: list[float] = []
    capped = False
    while True:
        times.append(target.run_block(n) / n)
        if len(times) >= MIN_ROUNDS and _cv(times) <= threshold:
            break
        if time.perf_counter() - start >= max_seconds:
            capped = len(times) < MIN_ROUNDS or _cv(times) > threshold
            break
    return Timing(
        statistics.median(times) * 1e3, 1.0, _cv(times) if len(times) > 1 else 0.0, len(times), capped, None, (t0, time.time()), load.others_cores()
    )


def time_paired(baseline: Timeable, candidate: Timeable, threshold: float, max_seconds: float) -> Timing:
    """Time ``candidate`` against ``baseline`` alternately: median of per-round ratios.

    The order alternates every round (ABBA...), so a drift in clocks or load favours neither.
    """
    start, t0, load = time.perf_counter(), time.time(), LoadMeter()
    for target in (baseline, candidate):
        target.run_block(2)
    n_base, n_cand = _runs_per_block(baseline, max_seconds), _runs_per_block(candidate, max_seconds)
    ratios: list[float] = []
    cand_times: list[float] = []
    base_times: list[float] = []
    capped = False
    while True:
        if len(ratios) % 2 == 0:
            tb = baseline.run_block(n_base) / n_base
            tc = candidate.run_block(n_cand) / n_cand
        else:
            tc = candidate.run_block(n_cand) / n_cand
            tb = baseline.run_block(n_base) / n_base
        ratios.append(tc / tb)
        cand_times.append(tc)
        base_times.append(tb)
        if len(ratios) >= MIN_ROUNDS and _cv(ratios) <= threshold:
            break
        if time.perf_counter() - start >= max_seconds:
            capped = len(ratios) < MIN_ROUNDS or _cv(ratios) > threshold
            break
    return Timing(
        statistics.median(cand_times) * 1e3,
        statistics.median(ratios),
        _cv(ratios) if len(ratios) > 1 else 0.0,
        len(ratios),
        capped,
        statistics.median(base_times) * 1e3,
        (t0, time.time()),
        load.others_cores(),
    )


class LoadMeter:
    """Other processes' CPU time over a span: the machine's busy CPU time (/proc/stat) less this
    process's own (every thread of it, the runtime's included)."""

    def __init__(self) -> None:
        self._start = (_machine_busy_seconds(), time.process_time(), time.perf_counter())

    def others_cores(self) -> float | None:
        """Cores other processes kept busy on average since the meter started; None without /proc/stat."""
        machine, own, wall = self._start
        now = _machine_busy_seconds()
        elapsed = time.perf_counter() - wall
        if machine is None or now is None or elapsed <= 0:
            return None
        return round(max(0.0, (now - machine) - (time.process_time() - own)) / elapsed, 2)


def _machine_busy_seconds() -> float | None:
    """Seconds of CPU time every core has spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError, IndexError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def device_key(device: str) -> str:
    """A lock name per physical device: ``cpu`` or ``cuda-<uuid>`` (indices differ per process)."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
    uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", index))
    return f"cuda-{uuid}"


@dataclass
class DeviceLock:
    """Shared turns for work, exclusive slots for timing, across every process on this node.

    Args:
        key: the device (``device_key``); one lock file pair per key.
        folder: where the lock files live (default: the system temp folder, per user).
    """

    key: str
    folder: Path | None = None
    busy: list[list[float]] = field(default_factory=list)  # wall-clock windows of shared turns
    _last_release: float = 0.0

    def __post_init__(self) -> None:
        folder = self.folder or Path(tempfile.gettempdir()) / f"autocompress-locks-{os.getuid()}"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._gate = open(folder / f"{self.key}.gate", "a+")  # noqa: SIM115  (held for the process's life)
        self._main = open(folder / f"{self.key}.lock", "a+")  # noqa: SIM115

    @contextmanager
    def shared(self) -> Iterator[None]:
        """One turn of work (a fine-tuning step, an accuracy batch, an export)."""
        fcntl.flock(self._gate, fcntl.LOCK_SH)  # pass the turnstile: wait while a timer queues
        fcntl.flock(self._gate, fcntl.LOCK_UN)
        fcntl.flock(self._main, fcntl.LOCK_SH)
        got = time.time()  # after acquiring, so a window lies inside the held period
        try:
            yield
        finally:
            end = time.time()  # before releasing, likewise
            if self.busy and got - self._last_release <= _MERGE_GAP_S:
                self.busy[-1][1] = end
            else:
                self.busy.append([got, end])
            self._last_release = end
            fcntl.flock(self._main, fcntl.LOCK_UN)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The device to oneself: no other worker's turn runs until this ends."""
        fcntl.flock(self._gate, fcntl.LOCK_EX)  # new shared turns wait at the gate
        try:
            fcntl.flock(self._main, fcntl.LOCK_EX)  # turns in progress finish first
            try:
                yield
            finally:
                fcntl.flock(self._main, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def take_busy(self) -> list[list[float]]:
        """The busy windows recorded since the last call, unrounded: a slot taken the moment a
        turn ends must not seem to overlap it (a rounded end could fall after the slot's start)."""
        out = [[a, b] for a, b in self.busy]
        self.busy = []
        return out
