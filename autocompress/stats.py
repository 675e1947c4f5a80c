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
import zlib
from collections.abc import Callable
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
    lost: int  # images the baseline got right and the trial wrong (bootstrap: samples scored worse)
    gained: int  # the reverse
    n: int
    method: str = "mcnemar"  # or "bootstrap" (paired, seeded, BOOTSTRAP_RESAMPLES resamples)

    @property
    def within_noise(self) -> bool:
        return self.p_value >= 1.0 - LEVEL

    @classmethod
    def from_dict(cls, data: Any) -> PairedDrop | None:
        """A stored :meth:`to_dict`; None when ``data`` is not one."""
        try:
            return cls(
                float(data["drop"]), float(data["low"]), float(data["high"]), float(data["p_value"]),
                int(data["lost"]), int(data["gained"]), int(data["n"]), str(data.get("method", "bootstrap")),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "drop": round(self.drop, 3),
            "low": round(self.low, 3),
            "high": round(self.high, 3),
            "p_value": round(self.p_value, 4),
            "lost": self.lost,
            "gained": self.gained,
            "n": self.n,
            "within_noise": self.within_noise,
            "method": self.method,
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


BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # the same resamples for every trial: intervals are comparable and repeatable
MAX_ROWS = 1 << 22  # numbers stored per score vector: 16 MiB of float32, a bound on what is read back


def pack_rows(rows: np.ndarray) -> str:
    """``"f4:N:K:BASE64"``: per-sample scores (K = 0 for a vector) or statistics rows (N x K) as
    float32, zlib-compressed, small enough to store with a trial."""
    rows = np.asarray(rows, dtype=np.float32)
    k = 0 if rows.ndim == 1 else rows.shape[1]
    return f"f4:{rows.shape[0]}:{k}:{base64.b64encode(zlib.compress(rows.tobytes(), 6)).decode('ascii')}"


def unpack_rows(packed: Any) -> np.ndarray | None:
    """The array of :func:`pack_rows`; None when ``packed`` is not one (or claims more numbers
    than :data:`MAX_ROWS`, or than it holds)."""
    try:
        tag, n_text, k_text, data = str(packed).split(":", 3)
        n, k = int(n_text), int(k_text)
        if tag != "f4" or n < 0 or k < 0 or n * max(k, 1) > MAX_ROWS:
            return None
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.b64decode(data, validate=True), 4 * n * max(k, 1) + 1)
        values = np.frombuffer(raw, dtype=np.float32).astype(np.float64)
    except (ValueError, TypeError, zlib.error):
        return None
    if len(values) != n * max(k, 1):
        return None
    return values.reshape(n, k) if k else values


def bootstrap_drop(
    baseline: np.ndarray,
    trial: np.ndarray,
    value: Callable[[np.ndarray], float],
    drop: Callable[[float, float], float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedDrop:
    """A paired bootstrap of a drop: the same samples are drawn for the baseline and the trial,
    the metric recomputed on each (``value``: a split's rows -> the metric, so a corpus-level
    metric is recomputed whole), and ``drop(baseline_value, trial_value)`` taken; the 95%
    interval is the percentile interval, the p-value the two-sided share of resamples on the
    other side of zero."""
    base, other = np.asarray(baseline, dtype=np.float64), np.asarray(trial, dtype=np.float64)
    if base.shape != other.shape or base.ndim not in (1, 2) or len(base) == 0:
        raise ValueError(f"paired rows must be one sample each, alike: got {base.shape} and {other.shape}")
    n = len(base)
    point = drop(value(base), value(other))
    rng = np.random.default_rng(seed)
    if base.ndim == 1:  # a mean: resamples a block at a time (a block of indices is 8 x BLOCK x n bytes)
        means: list[tuple[float, float]] = []
        block = max(1, min(resamples, (1 << 22) // n))
        for start in range(0, resamples, block):
            idx = rng.integers(0, n, size=(min(block, resamples - start), n))
            means += zip(base[idx].mean(axis=1).tolist(), other[idx].mean(axis=1).tolist(), strict=True)
        drops = np.array([drop(b, t) for b, t in means])
        worse = int(np.sum(drop(0.0, 1.0) * (other - base) > 0))  # samples scored worse, in the metric's direction
        better = int(np.sum(drop(0.0, 1.0) * (other - base) < 0))
    else:
        drops = np.empty(resamples)
        for i in range(resamples):
            idx = rng.integers(0, n, size=n)
            drops[i] = drop(value(base[idx]), value(other[idx]))
        worse = better = 0
    finite = drops[np.isfinite(drops)]
    if len(finite) == 0:
        return PairedDrop(point, float("nan"), float("nan"), 1.0, worse, better, n, "bootstrap")
    low, high = np.percentile(finite, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    p_value = min(1.0, 2.0 * min(float(np.mean(finite <= 0)), float(np.mean(finite >= 0))))
    if np.all(finite == 0):
        p_value = 1.0
    return PairedDrop(point, float(low), float(high), p_value, worse, better, n, "bootstrap")


def is_binary(*rows: np.ndarray) -> bool:
    """Whether every vector holds only 0 and 1 (then McNemar's exact test applies)."""
    return all(r.ndim == 1 and bool(np.isin(r, (0.0, 1.0)).all()) for r in rows)
