"""Uncertainty of every number the study compares: Wilson intervals and a paired bootstrap over val images.

One convention keeps differences paired everywhere: replicate ``b`` of every evaluation on a val set of ``n``
images resamples the same images — the rows of :func:`bootstrap_indices` ``(n, n_boot, seed)``. A stage that
cannot hand out per-image values (detection: AP is not a mean over images) stores its own replicate values
computed on exactly these resamples, and they pair with everything else for free.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

#: replicates of every bootstrap (percentile intervals; 1000 keeps the 2.5 % tail at 25 samples)
N_BOOT = 1000
#: the seed of the canonical resamples (changing it changes every interval a little, never the point values)
BOOTSTRAP_SEED = 0
LEVEL = 0.95


@lru_cache(maxsize=8)
def bootstrap_indices(n: int, n_boot: int = N_BOOT, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``(n_boot, n)`` image indices drawn with replacement; the same for every call with the same arguments."""
    if n < 1:
        raise ValueError(f"bootstrap over {n} images")
    rng = np.random.default_rng([seed, n])
    out = rng.integers(0, n, size=(n_boot, n), dtype=np.int32)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def bootstrap_counts(n: int, n_boot: int = N_BOOT, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``(n_boot, n)`` float32: how often each image is drawn in each replicate of :func:`bootstrap_indices`."""
    idx = bootstrap_indices(n, n_boot, seed)
    flat = (np.arange(n_boot, dtype=np.int64)[:, None] * n + idx).ravel()
    counts = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float32)
    counts.setflags(write=False)
    return counts


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored; NaN when none is finite)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def wilson_interval(hits: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n``, in percent (NaN for n = 0)."""
    if not n or n <= 0 or not math.isfinite(hits):
        return math.nan, math.nan
    z = _z(level)
    p = hits / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return 100.0 * max(centre - half, 0.0), 100.0 * min(centre + half, 1.0)


def _z(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2.0)


def mean_accuracy_replicates(correct: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Top-1 (percent) of each canonical replicate for per-image correctness ``(n,)`` or ``(rows, n)``."""
    correct = np.asarray(correct, dtype=np.float32)
    n = correct.shape[-1]
    return 100.0 * (np.atleast_2d(correct) @ bootstrap_counts(n, n_boot, seed).T) / n


def miou_replicates(inter: np.ndarray, union: np.ndarray, n_boot: int = N_BOOT,
                    seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """mIoU (percent) of each canonical replicate from per-image class intersections/unions ``(n, C)``.

    Classes absent from a replicate (union 0) are left out of its mean, as in the full-set mIoU.
    """
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    counts = bootstrap_counts(inter.shape[0], n_boot, seed).astype(np.float64)
    i, u = counts @ inter, counts @ union
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(u > 0, i / u, np.nan)
    return 100.0 * np.nanmean(iou, axis=1)


def miou(inter: np.ndarray, union: np.ndarray) -> float:
    i, u = np.asarray(inter, np.float64).sum(0), np.asarray(union, np.float64).sum(0)
    valid = u > 0
    return float(100.0 * np.mean(i[valid] / u[valid])) if valid.any() else math.nan
