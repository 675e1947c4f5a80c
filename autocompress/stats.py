"""Paired accuracy statistics: which images a model gets right, packed small enough to store with
a trial, and the exact tests that say whether a drop is more than the noise of a finite split.

A trial and the baseline are scored on the same images, so their accuracies are paired: only
the images one gets right and the other wrong (``lost``: right before, wrong now; ``gained``:
the reverse) carry information about the difference. McNemar's exact test asks whether those
discordant images split unevenly; the 95% interval of the drop is the exact (Clopper-Pearson)
interval of the share of discordant images that were lost, conditional on their number, mapped
to points (Breslow and Day's conditional interval). A drop whose interval holds 0 (McNemar's
p >= 0.05) is within noise.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest

LEVEL = 0.95


def accuracy(correct: Any) -> float:
    """The share right of a per-image correctness vector (numpy or torch); 0.0 for none."""
    return int(correct.sum()) / max(1, len(correct))


def pack_correct(correct: np.ndarray) -> str:
    """``"N:BASE64"``: one bit per image (1 = right), N images. 360 images take 60 characters."""
    bits = np.asarray(correct, dtype=bool).ravel()
    return f"{len(bits)}:{base64.b64encode(np.packbits(bits).tobytes()).decode('ascii')}"


def unpack_correct(packed: str) -> np.ndarray | None:
    """The per-image vector of :func:`pack_correct`; None when ``packed`` is not one (a study
    written before it was stored, or a damaged value)."""
    try:
        count, _, data = str(packed).partition(":")
        n = int(count)
        bits = np.unpackbits(np.frombuffer(base64.b64decode(data, validate=True), dtype=np.uint8))
    except (ValueError, TypeError):
        return None
    return bits[:n].astype(bool) if 0 <= n <= len(bits) else None


@dataclass(frozen=True)
class PairedDrop:
    """A trial's accuracy drop against the baseline on the same images, in points."""

    drop: float
    low: float  # the 95% interval of the drop
    high: float
    p_value: float  # McNemar's exact test: do lost and gained images differ more than by chance?
    lost: int  # images the baseline got right and the trial wrong
    gained: int  # the reverse
    n: int

    @property
    def within_noise(self) -> bool:
        return self.p_value >= 1.0 - LEVEL

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "drop": round(self.drop, 3),
            "low": round(self.low, 3),
            "high": round(self.high, 3),
            "p_value": round(self.p_value, 4),
            "lost": self.lost,
            "gained": self.gained,
            "n": self.n,
            "within_noise": self.within_noise,
        }


def paired_drop(baseline: np.ndarray, trial: np.ndarray) -> PairedDrop:
    """Drop, interval and McNemar's exact p-value of ``trial`` against ``baseline`` (per-image
    correctness on the same images, in the same order)."""
    base, other = np.asarray(baseline, dtype=bool), np.asarray(trial, dtype=bool)
    if base.shape != other.shape or base.ndim != 1 or len(base) == 0:
        raise ValueError(f"paired vectors must be one image each, alike: got {base.shape} and {other.shape}")
    n = len(base)
    lost = int((base & ~other).sum())
    gained = int((~base & other).sum())
    discordant = lost + gained
    drop = 100.0 * (lost - gained) / n
    if discordant == 0:  # the same images right and wrong: no difference to test
        return PairedDrop(drop, 0.0, 0.0, 1.0, 0, 0, n)
    test = binomtest(lost, discordant, 0.5)
    share = test.proportion_ci(LEVEL, method="exact")
    scale = 100.0 * discordant / n
    return PairedDrop(drop, scale * (2 * share.low - 1), scale * (2 * share.high - 1), float(test.pvalue), lost, gained, n)


def chance_accuracy(labels: np.ndarray) -> float:
    """What always answering the most common class scores on these labels."""
    labels = np.asarray(labels).ravel()
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else 0.0


def above_chance(accuracy: float, n: int, chance: float) -> bool:
    """Whether ``accuracy`` on ``n`` images beats ``chance`` by more than luck (one-sided exact
    binomial test at the 5% level)."""
    if n <= 0:
        return accuracy > chance
    return _above_chance(round(accuracy * n), n, min(max(chance, 0.0), 1.0))


@functools.lru_cache(maxsize=4096)  # the analyser asks for every trial after each one
def _above_chance(right: int, n: int, chance: float) -> bool:
    return bool(binomtest(right, n, chance, alternative="greater").pvalue < 1.0 - LEVEL)
