"""The two-level noise model of mae.report.evidence: intervals of setting means cover a known difference when
seeds and val images are both random, and a seed spread widens an interval as the model says."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from mae.report import runs_csv as R
from mae.report import stats
from mae.report.evidence import Evidence
from mae.report.replicates import row_key

N_IMAGES, N_BOOT = 2000, 200
SEED_SD = 1.0  # points of accuracy between seeds of a setting
TRUE = {0.5: 30.0, 0.75: 28.0, 0.6: 29.0, 0.7: 29.0, 0.8: 29.0, 0.9: 29.0}  # mask ratio -> true top-1 (%)


def _study(rng: np.random.Generator, seeds: dict[float, int], shared: float = 0.7) -> tuple[pd.DataFrame, dict]:
    """One synthetic study: per setting (a mask ratio) ``seeds[r]`` fine-tunes whose true accuracy is
    ``TRUE[r]`` plus N(0, SEED_SD²); a fresh val set of N_IMAGES images, each image's correctness in a run drawn
    from the image's own difficulty (a share ``shared`` of the images, the same in every run) or afresh."""
    difficulty = rng.random(N_IMAGES)
    rows, replicates = [], {}
    for ratio, k in seeds.items():
        for seed in range(k):
            p = (TRUE[ratio] + rng.normal(0.0, SEED_SD)) / 100.0
            draw = np.where(rng.random(N_IMAGES) < shared, difficulty, rng.random(N_IMAGES))
            correct = draw < p
            run = f"mask_ratio-{ratio}_seed-{seed}"
            rows.append(
                {
                    "run": run,
                    "eval": "finetune",
                    "eval_setting": "",
                    "init": "mae",
                    "mask_ratio": ratio,
                    "seed": seed,
                    "top1": 100.0 * correct.mean(),
                    "n_val": N_IMAGES,
                }
            )
            replicates[row_key(run, "finetune")] = {
                "top1": stats.mean_accuracy_replicates(correct, n_boot=N_BOOT)[0].astype(np.float64)
            }
    return R.normalise(pd.DataFrame(rows).reindex(columns=list(R.COLUMNS))), replicates


def _difference(frame: pd.DataFrame, replicates: dict) -> stats.Estimate:
    ev = Evidence(frame, replicates, n_boot=N_BOOT)
    cells = {float(c.key[0]): c for c in ev.select("finetune", "top1", ["mask_ratio"], None)}
    return ev.estimate([(1.0, cells[0.5]), (-1.0, cells[0.75])])


@pytest.mark.parametrize(
    "layout, source",
    [
        ({0.5: 2, 0.75: 2, 0.6: 2, 0.7: 2, 0.8: 2, 0.9: 2}, "pooled"),  # two seeds each: the pooled variance, df 6
        ({0.5: 3, 0.75: 3}, "own"),  # three seeds: each setting's own variance, df 2 + 2
    ],
)
def test_interval_covers_a_known_difference_with_seed_and_image_noise(layout, source):
    rng = np.random.default_rng(1)  # 95.7 % (pooled and own) over 1 800 draws, rng seeds 1, 2, 2026
    draws, covered, widths = 300, 0, []
    for _ in range(draws):
        frame, replicates = _study(rng, layout)
        est = _difference(frame, replicates)
        lo, hi = est.interval()
        covered += lo <= TRUE[0.5] - TRUE[0.75] <= hi
        widths.append(hi - lo)
    assert 0.93 <= covered / draws <= 0.97, covered / draws
    ev = Evidence(*_study(rng, layout), n_boot=N_BOOT)
    assert {c.noise.source for c in ev.select("finetune", "top1", ["mask_ratio"], None)} == {source}
    # the seeds dominate: the interval is far wider than the paired val-image interval alone (~±0.8 points)
    assert np.median(widths) > 2 * 2 * 0.8


def test_two_seeds_that_differ_by_d_widen_the_interval_as_the_seed_model_says():
    """One setting, two seeds whose predictions differ only by a shift of d points: the interval of its mean has
    half-width ≥ t(df) · sqrt(V_img + s²/2) with s² = d²/2, the sample variance of the two values (the old
    resampling of the two seeds gave V_img + d²/8 at most: it could not reach beyond the observed values)."""
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 0.4, N_BOOT)  # the same val-image noise on both seeds: no image share in s²

    def half_width(d: float) -> tuple[float, stats.Estimate]:
        rows, replicates = [], {}
        for seed, value in enumerate((20.0, 20.0 + d)):
            run = f"base_seed-{seed}"
            rows.append(
                {
                    "run": run,
                    "eval": "linprobe",
                    "eval_setting": "",
                    "init": "mae",
                    "seed": seed,
                    "top1": value,
                    "n_val": 1000,
                }
            )
            replicates[row_key(run, "linprobe")] = {"top1": value + image}
        ev = Evidence(R.normalise(pd.DataFrame(rows).reindex(columns=list(R.COLUMNS))), replicates, n_boot=N_BOOT)
        cell = ev.select("linprobe", "top1", [], None)[0]
        est = ev.estimate([(1.0, cell)])
        lo, hi = est.interval()
        return (hi - lo) / 2, est

    v_img = float(np.var(image, ddof=1))
    none, _ = half_width(0.0)
    assert none == pytest.approx(1.959964 * math.sqrt(v_img), rel=1e-3)  # no seed spread: the image term, z
    previous = none
    for d in (0.5, 1.0, 2.0, 4.0):
        half, est = half_width(d)
        model = student_t.ppf(0.975, est.df) * math.sqrt(v_img + (d * d / 2) / 2)
        assert half >= model - 1e-9 and half > previous, (d, half, model)
        assert est.df == pytest.approx((v_img + d * d / 4) ** 2 / ((d * d / 4) ** 2 / 1))  # one df, Satterthwaite
        previous = half


def test_a_setting_with_one_seed_and_no_pool_has_no_interval():
    frame, replicates = _study(np.random.default_rng(1), {0.5: 1, 0.75: 1})
    est = _difference(frame, replicates)
    assert est.missing == "seeds" and all(math.isnan(v) for v in est.interval())
    assert math.isnan(est.p_greater()) and est.value == pytest.approx(
        float(frame["top1"].iloc[0] - frame["top1"].iloc[1])
    )
