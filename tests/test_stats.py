"""Paired accuracy statistics against cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from autocompress.stats import above_chance, chance_accuracy, pack_correct, paired_drop, unpack_correct


def _pair(n: int, lost: int, gained: int) -> tuple[np.ndarray, np.ndarray]:
    """Baseline right on all but ``gained`` images; the trial loses ``lost`` of its right ones and gains those."""
    base = np.ones(n, dtype=bool)
    base[:gained] = False
    trial = base.copy()
    trial[:gained] = True
    trial[gained : gained + lost] = False
    return base, trial


def test_mcnemar_exact_by_hand() -> None:
    # 5 lost, 0 gained: p = 2 * 0.5**5 = 0.0625, within noise; the interval's low end is the
    # Clopper-Pearson bound 0.025**(1/5) of the lost share, (2 * 0.4782 - 1) * 5 / 100 images.
    d = paired_drop(*_pair(100, 5, 0))
    assert (d.lost, d.gained, d.n) == (5, 0, 100)
    assert d.drop == pytest.approx(5.0) and d.p_value == pytest.approx(0.0625)
    assert d.low == pytest.approx(5 * (2 * 0.025 ** (1 / 5) - 1)) and d.high == pytest.approx(5.0)
    assert d.within_noise and d.low < 0 < d.high
    # 6 lost: p = 2 * 0.5**6 = 0.03125, beyond noise; the interval no longer holds 0.
    d = paired_drop(*_pair(100, 6, 0))
    assert d.p_value == pytest.approx(0.03125) and not d.within_noise and d.low > 0
    # 7 lost and 2 gained of 360: drop 5/360 points; p = 2 * P(X <= 2 | 9, 0.5) = 2 * 46 / 512.
    d = paired_drop(*_pair(360, 7, 2))
    assert d.drop == pytest.approx(100 * 5 / 360) and d.p_value == pytest.approx(2 * 46 / 512)
    assert d.within_noise


def test_the_same_images_right_and_wrong_is_no_difference() -> None:
    d = paired_drop(*_pair(50, 0, 0))
    assert (d.drop, d.low, d.high, d.p_value) == (0.0, 0.0, 0.0, 1.0) and d.within_noise


def test_a_gain_is_a_negative_drop_with_a_mirrored_interval() -> None:
    lost, gained = paired_drop(*_pair(200, 9, 1)), paired_drop(*_pair(200, 1, 9))
    assert gained.drop == pytest.approx(-lost.drop)
    assert (gained.low, gained.high) == pytest.approx((-lost.high, -lost.low))
    assert gained.p_value == pytest.approx(lost.p_value)


def test_unlike_vectors_are_refused() -> None:
    with pytest.raises(ValueError, match="alike"):
        paired_drop(np.ones(3, dtype=bool), np.ones(4, dtype=bool))


def test_packed_correctness_round_trips_and_damage_reads_as_none() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 360, 1001):
        v = rng.random(n) < 0.7
        packed = pack_correct(v)
        assert np.array_equal(unpack_correct(packed), v)
    assert len(pack_correct(np.ones(360, dtype=bool))) <= 64  # 45 bytes of bits, base64
    for damaged in ("", "x:abc", "9:!!", "99:AA=="):
        assert unpack_correct(damaged) is None


def test_chance_level_by_hand() -> None:
    assert chance_accuracy(np.array([0, 0, 0, 1, 2, 2])) == pytest.approx(0.5)
    # 360 images at 10% chance: 47 right (13.1%) has a one-sided binomial p of 0.036; 43 (11.9%) 0.128.
    assert above_chance(47 / 360, 360, 0.1) and not above_chance(43 / 360, 360, 0.1)
    assert not above_chance(0.1, 360, 0.1)
