"""Intervals of mae.report.stats: the paired bootstrap covers a known difference, Wilson and mIoU replicates are
exact."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mae.report import stats


def _paired_draw(rng: np.random.Generator, n: int, p1: float, p2: float, shared: float):
    """Per-image correctness of two classifiers with true accuracies p1, p2 whose errors are correlated: a
    fraction ``shared`` of the images use the same latent difficulty for both."""
    u = rng.random(n)
    v = np.where(rng.random(n) < shared, u, rng.random(n))
    return u < p1, v < p2


def test_paired_bootstrap_covers_the_true_difference():
    rng = np.random.default_rng(0)
    n, draws, covered, widths = 600, 300, 0, []
    for _ in range(draws):
        a, b = _paired_draw(rng, n, 0.60, 0.55, shared=0.7)
        diff = stats.mean_accuracy_replicates(a)[0] - stats.mean_accuracy_replicates(b)[0]
        lo, hi = stats.percentile_interval(diff)
        covered += lo <= 5.0 <= hi
        widths.append(hi - lo)
    assert 0.91 <= covered / draws <= 0.985, covered / draws
    # pairing: the interval of the difference is much narrower than two independent intervals would give
    unpaired = 2 * 1.96 * math.sqrt(0.6 * 0.4 / n + 0.55 * 0.45 / n) * 100
    assert np.mean(widths) < 0.75 * unpaired


def test_identical_predictions_give_a_zero_interval():
    a = np.random.default_rng(1).random(500) < 0.3
    diff = stats.mean_accuracy_replicates(a)[0] - stats.mean_accuracy_replicates(a.copy())[0]
    assert stats.percentile_interval(diff) == (0.0, 0.0)


def test_canonical_resamples_are_deterministic_and_paired():
    a = stats.bootstrap_indices(50)
    assert a.shape == (stats.N_BOOT, 50) and (a == stats.bootstrap_indices(50)).all()
    assert not (a == stats.bootstrap_indices(51)[:, :50]).all()  # another val set, another draw
    counts = stats.bootstrap_counts(50)
    assert (counts.sum(1) == 50).all()
    assert counts[3, a[3, 0]] >= 1
    correct = np.arange(50) % 3 == 0
    reps = stats.mean_accuracy_replicates(correct)[0]
    assert reps[7] == pytest.approx(100 * correct[a[7]].mean())


def test_wilson_interval():
    lo, hi = stats.wilson_interval(50, 100)
    assert lo == pytest.approx(40.38, abs=0.01) and hi == pytest.approx(59.62, abs=0.01)
    assert stats.wilson_interval(0, 20)[0] == pytest.approx(0.0, abs=1e-9)
    assert stats.wilson_interval(20, 20)[1] == pytest.approx(100.0)
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


def test_miou_replicates_match_the_resampled_confusion():
    rng = np.random.default_rng(2)
    union = rng.integers(1, 50, size=(30, 4))
    inter = (union * rng.random((30, 4))).astype(int)
    union[:, 3] = 0
    inter[:, 3] = 0  # a class never present: left out of every mean
    reps = stats.miou_replicates(inter, union)
    idx = stats.bootstrap_indices(30)[5]
    expected = 100 * np.mean(inter[idx, :3].sum(0) / union[idx, :3].sum(0))
    assert reps[5] == pytest.approx(expected)
    assert stats.miou(inter, union) == pytest.approx(100 * np.mean(inter[:, :3].sum(0) / union[:, :3].sum(0)))
    lo, hi = stats.percentile_interval(reps)
    assert lo < stats.miou(inter, union) < hi


# --------------------------------------------------------------------------------------------- two levels
def test_holm_on_a_known_p_vector():
    p = [0.01, 0.04, 0.03, 0.005, math.nan]
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(1 x 0.04, 0.06); NaN: not tested
    assert stats.holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(stats.holm(p)[4])
    assert stats.holm([0.01, 0.9]) == pytest.approx([0.02, 0.9]) and stats.holm([0.6, 0.7]).tolist() == [1.0, 1.0]
    assert len(stats.holm([])) == 0


def _noise(s2: float, df: float, image: float = 0.0, key: str = "k") -> stats.SeedVariance:
    return stats.SeedVariance(s2, df, image, stats.POOLED, key)


def test_contrast_adds_the_training_noise_to_the_paired_bootstrap():
    rng = np.random.default_rng(0)
    reps = rng.normal(0.0, 0.3, (2, 1000))
    v_img = float(np.var(reps[0] - reps[1], ddof=1))
    # two settings sharing one pooled estimate (s² 1.0 of which 0.2 is image noise, 10 df), 2 seeds each
    shared = _noise(1.0, 10, 0.2)
    est = stats.contrast([1, -1], [21.0, 20.0], reps, [2, 2], [shared, shared])
    assert est.value == pytest.approx(1.0)
    assert est.se**2 == pytest.approx(v_img + 0.8 * (1 / 2 + 1 / 2))
    assert est.df == pytest.approx(est.se**4 / ((1.0 * 1.0) ** 2 / 10))  # one chi-square, both sides
    # two separate estimates: Satterthwaite sums their terms
    apart = stats.contrast([1, -1], [21.0, 20.0], reps, [2, 2], [_noise(1.0, 10, 0.2, "a"), _noise(1.0, 4, 0.2, "b")])
    assert apart.se == pytest.approx(est.se) and apart.df == pytest.approx(apart.se**4 / (0.5**2 / 10 + 0.5**2 / 4))
    # s² below its image share: no training term (never negative), still its df
    small = stats.contrast([1.0], [5.0], reps[:1], [1], [_noise(0.1, 3, 0.2)])
    assert small.se**2 == pytest.approx(float(np.var(reps[0], ddof=1)))
    # no estimate, or no replicates: no interval
    assert stats.contrast([1.0], [5.0], reps[:1], [1], [stats.NO_SEED_VARIANCE]).missing == "seeds"
    assert stats.contrast([1.0], [5.0], np.full((1, 1000), np.nan), [1], [shared]).missing == "images"


def test_p_values_resolve_far_below_one_over_the_replicates():
    """A t approximation from the standard error, not a count of 1 000 percentile replicates (≥ 0.001)."""
    est = stats.Estimate(6.0, 0.75, 25.0)
    assert 0 < est.p_greater() < 1e-6 and est.p_less() == pytest.approx(1 - est.p_greater())
    lo, hi = est.interval()
    assert (lo + hi) / 2 == pytest.approx(6.0) and hi - lo == pytest.approx(2 * 2.0595 * 0.75, rel=1e-3)
    assert stats.Estimate(0.0, 0.0, math.inf).p_greater() == 1.0 and stats.Estimate(0.1, 0.0, 3).p_greater() == 0.0


def test_within_and_pooled_variance():
    ss, df, image_ss = stats.within_variance(np.array([1.0, 3.0]), np.array([[1.0, 1.2, 0.8], [3.0, 3.0, 3.0]]))
    assert (ss, df) == (2.0, 1.0) and image_ss == pytest.approx(2 * np.var([0.0, 0.1, -0.1], ddof=1))
    pooled = stats.pooled_variance([(2.0, 1.0, 0.2), (4.0, 2.0, math.nan), (0.0, 0.0, math.nan)], "kind")
    assert pooled.s2 == pytest.approx(2.0) and pooled.df == 3 and pooled.image_part == pytest.approx(0.2)
    assert pooled.source == stats.POOLED and pooled.training == pytest.approx(1.8)
    assert stats.pooled_variance([(0.0, 0.0, math.nan)]) is stats.NO_SEED_VARIANCE
