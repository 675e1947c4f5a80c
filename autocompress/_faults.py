"""Kill points: the fault tests stop a real process at a named stage with a real SIGKILL.

``AUTOCOMPRESS_KILL_AT=STAGE[:N]`` makes the N-th arrival (default the first) at ``STAGE`` kill
the process, as a power cut or the OOM killer would there. Unset, as it always is outside the
tests, a checkpoint costs one environment lookup.
"""

from __future__ import annotations

import collections
import os
import signal

# Every stage a checkpoint names; tests parametrize over them.
STAGES = ("study-created", "study-described", "baseline-measured", "artifact-write")
_arrivals: collections.Counter[str] = collections.Counter()


def checkpoint(stage: str) -> None:
    want = os.environ.get("AUTOCOMPRESS_KILL_AT")
    if not want:
        return
    name, _, nth = want.partition(":")
    if name != stage:
        return
    _arrivals[stage] += 1
    if _arrivals[stage] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
