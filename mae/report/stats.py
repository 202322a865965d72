"""Uncertainty of every number the study compares: a paired bootstrap over val images, Wilson intervals, and
the two-level (seeds, then val images) standard error of a contrast of setting means, with Holm's adjustment.

One convention keeps differences paired everywhere: replicate ``b`` of every evaluation on a val set of ``n``
images resamples the same images — the rows of :func:`bootstrap_indices` ``(n, n_boot, seed)``. A stage that
cannot hand out per-image values (detection: AP is not a mean over images) stores its own replicate values
computed on exactly these resamples, and they pair with everything else for free. :func:`contrast` adds the
training noise between seeds to the bootstrap variance (docs/statistics.md); its t distribution gives p-values
that resolve far below 1/n_boot.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
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


def miou_replicates(
    inter: np.ndarray, union: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOTSTRAP_SEED
) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------- two-level noise
#: a setting with at least this many seeds uses its own seed variance; fewer borrow the pooled one of its kind
MIN_OWN_SEEDS = 3
OWN, POOLED, NONE = "own", "pooled", "none"


@dataclass(frozen=True)
class SeedVariance:
    """The seed-to-seed variance that one setting's mean is read with.

    ``s2`` is the sample variance of the seed values (own) or the pooled within-setting variance of every
    setting of the evaluation kind with ≥ 2 seeds (pooled), with ``df`` degrees of freedom. Each seed value also
    carries its own val-image noise, so ``s2`` contains some image noise: ``image_part`` is that share (from the
    paired replicates), and :attr:`training` = max(s2 − image_part, 0) the training noise alone (the image
    noise is in the bootstrap term of :func:`contrast` already). ``key`` names the estimate: settings that share
    a pooled estimate share its chi-square in the degrees of freedom.
    """

    s2: float
    df: float
    image_part: float
    source: str
    key: Hashable = None

    @property
    def known(self) -> bool:
        return self.source != NONE and self.df > 0 and math.isfinite(self.s2)

    @property
    def training(self) -> float:
        return max(self.s2 - (self.image_part if math.isfinite(self.image_part) else 0.0), 0.0)


NO_SEED_VARIANCE = SeedVariance(math.nan, 0.0, math.nan, NONE)


def within_variance(values: np.ndarray, replicates: np.ndarray | None = None) -> tuple[float, float, float]:
    """Sum of squares of one setting's seed values ``(k,)`` around their mean, its df (k − 1), and the same sum
    over the val-image part: for replicates ``(k, n_boot)``, the bootstrap variance of each seed's deviation from
    the seed mean, summed (its expectation is the image share of the sum of squares); NaN without replicates."""
    values = np.asarray(values, dtype=np.float64)
    k = len(values)
    ss = float(((values - values.mean()) ** 2).sum()) if k else 0.0
    image_ss = math.nan
    if replicates is not None and k > 1 and np.isfinite(replicates).all() and replicates.shape[1] > 1:
        deviations = replicates - replicates.mean(0, keepdims=True)
        image_ss = float(deviations.var(axis=1, ddof=1).sum())
    return ss, float(max(k - 1, 0)), image_ss


def pooled_variance(parts: Iterable[tuple[float, float, float]], key: Hashable = None) -> SeedVariance:
    """Pool :func:`within_variance` results of several settings (``s2 = Σ SS / Σ df``); none without df."""
    parts = [p for p in parts if p[1] > 0]
    df = sum(p[1] for p in parts)
    if not df:
        return NO_SEED_VARIANCE
    imaged = [p for p in parts if math.isfinite(p[2])]
    image_df = sum(p[1] for p in imaged)
    image_part = sum(p[2] for p in imaged) / image_df if image_df else math.nan
    return SeedVariance(sum(p[0] for p in parts) / df, df, image_part, POOLED, key)


@dataclass(frozen=True)
class Estimate:
    """A linear contrast of setting means with its two-level standard error and Satterthwaite df.

    ``missing`` says why ``se`` is NaN: ``"seeds"`` (a side has no training-noise estimate) or ``"images"`` (a
    side has no per-image replicates)."""

    value: float
    se: float
    df: float
    missing: str = ""

    @property
    def known(self) -> bool:
        return not self.missing

    def p_greater(self, threshold: float = 0.0) -> float:
        """p-value of the one-sided test whose alternative is "the true contrast > threshold"."""
        return self._tail(self.value - threshold)

    def p_less(self, threshold: float = 0.0) -> float:
        """p-value of the one-sided test whose alternative is "the true contrast < threshold"."""
        return self._tail(threshold - self.value)

    def _tail(self, distance: float) -> float:
        if self.missing:
            return math.nan
        if self.se == 0:
            return 0.0 if distance > 0 else 1.0
        return float(_student_t().sf(distance / self.se, self.df))

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        """Two-sided ``level`` interval from the t distribution with the Satterthwaite df."""
        if self.missing:
            return math.nan, math.nan
        half = self.se * float(_student_t().ppf(0.5 + level / 2.0, self.df)) if self.se else 0.0
        return self.value - half, self.value + half


def contrast(
    weights: Sequence[float],
    points: Sequence[float],
    replicates: np.ndarray,
    seeds: Sequence[int],
    noise: Sequence[SeedVariance],
) -> Estimate:
    """The contrast ``Σ w_i ȳ_i`` of setting means ``ȳ_i`` (mean over ``seeds[i]`` seeds) and its two-level
    standard error.

    ``replicates[i]`` is setting ``i``'s mean on each canonical bootstrap replicate (the same val images in every
    run, so the contrast is paired). Its variance is::

        var = V_img + Σ_g max(s²_g − v_g, 0) · Σ_{i in g} w_i² / k_i

    with ``V_img`` the replicate variance of the contrast (val-image noise), ``s²_g`` each distinct seed-variance
    estimate (own or pooled, :class:`SeedVariance`) and ``v_g`` the val-image share that ``s²_g`` contains.
    Degrees of freedom: Satterthwaite, ``var² / Σ_g (s²_g Σ w_i² / k_i)² / df_g`` (the variance of each seed
    term is that of its ``s²``; the bootstrap term counts as known exactly).
    """
    w = np.asarray(weights, dtype=np.float64)
    value = float(w @ np.asarray(points, dtype=np.float64))
    if not all(n.known for n in noise):
        return Estimate(value, math.nan, math.nan, "seeds")
    reps = np.asarray(replicates, dtype=np.float64)
    if reps.ndim != 2 or reps.shape[1] < 2 or not np.isfinite(reps).all():
        return Estimate(value, math.nan, math.nan, "images")
    groups: dict[Hashable, list] = {}
    for wi, n, ki in zip(w, noise, seeds):
        group = groups.setdefault(n.key if n.key is not None else id(n), [n, 0.0])
        group[1] += wi * wi / ki
    var = float(np.var(w @ reps, ddof=1)) + sum(n.training * f for n, f in groups.values())
    denom = sum((n.s2 * f) ** 2 / n.df for n, f in groups.values())
    df = var * var / denom if denom > 0 else math.inf
    return Estimate(value, math.sqrt(var), df)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down; NaN entries are not tested and stay NaN)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, math.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


@lru_cache(maxsize=1)
def _student_t():
    from scipy.stats import t  # scipy comes with scikit-learn; imported on use so that mae.report.stats stays light

    return t
