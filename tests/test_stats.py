"""Intervals of mae.stats: the paired bootstrap covers a known difference, Wilson and mIoU replicates are exact."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mae import stats


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
