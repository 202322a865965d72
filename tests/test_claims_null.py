"""Every claim's decision rule under a simulated null: with noise of the measured size (the committed CPU
study's pooled seed variances and replicate spreads) and no true effect — a tolerance claim at the edge of its
tolerance — a claim is decided (holds or fails) in at most 5 % of synthetic studies. The layout is the CPU
study's with every setting at two seeds (its baselines included, as config/cpu.yaml now plans them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy.stats import t as student_t

from mae.report import claims as C
from mae.report import runs_csv as R
from mae.report import simulate as M
from mae.report import stats
from mae.report import verdicts as V
from mae.report.evidence import Evidence
from mae.report.replicates import REPLICATES, read_replicates

CPU = Path(__file__).resolve().parents[1] / "results" / "cpu_study" / "summary"
DRAWS = 200


@pytest.fixture(scope="module")
def rates():
    frame = R.read_summary(CPU / "runs.csv")
    noise = M.measured_noise(Evidence(frame, read_replicates(CPU / REPLICATES)))
    template = M.with_seeds(frame, (0, 1))
    return M.false_decision_rates(template, M.no_effect, noise, DRAWS, seed=27)


@pytest.mark.parametrize("claim", [cid for cid, _, _ in C.CLAIMS])
def test_no_claim_is_decided_more_than_5_percent_of_the_time_under_its_null(rates, claim):
    decided = rates.loc[claim].get(V.HOLDS, 0.0) + rates.loc[claim].get(V.FAILS, 0.0)
    # the count's 95 % lower bound (Wilson) must not exceed 5 %: a rule that decides more often fails here
    lower, _ = stats.wilson_interval(decided * DRAWS, DRAWS)
    assert lower <= 5.0, (claim, decided)
    holm = rates.loc[claim].get(f"{V.HOLDS} (Holm)", 0.0) + rates.loc[claim].get(f"{V.FAILS} (Holm)", 0.0)
    assert holm <= decided


def test_every_claim_is_tested_under_the_null(rates):
    """No claim escapes the check by never having an interval: each gets a p-value in every draw, and the
    single-contrast rules, exact at their null, decide about as often as they may (a rule that never decides
    would pass the bound above for nothing)."""
    assert set(rates.index) == {cid for cid, _, _ in C.CLAIMS}
    # one_block's protocol check (1 block − lin ≥ −2 SE) fires on its own noise where 1 block = lin, as here:
    # ~2.5 % of draws are `protocol invalid` (no p-value); every other claim has a p-value in every draw
    assert (rates["tested"].drop("one_block") == 1.0).all(), rates["tested"]
    assert 0.9 <= rates.loc["one_block", "tested"] < 1.0 and rates.loc["one_block", V.PROTOCOL_INVALID] > 0
    single = [
        "mask_token",
        "lin_vs_random",
        "mae_vs_scratch",
        "aug_robust",
        "decoder_depth",
        "decoder_width",
        "one_block",
    ]
    decided = rates.loc[single].reindex(columns=[V.HOLDS, V.FAILS], fill_value=0.0).sum(axis=1)
    assert decided.mean() > 0.02, decided


def _estimates(*t_values: float, df: float = 20.0) -> list[stats.Estimate]:
    return [stats.Estimate(t, 1.0, df) for t in t_values]


def test_all_above_holds_only_when_every_contrast_does_and_fails_on_one_adjusted_contrast():
    test = V.Test([V.Contrast(f"c{i}", ()) for i in range(6)], "")
    # five contrasts far above 0, one at +1 sd: holds needs that one too -> p_holds = its one-sided p
    p_holds, p_fails, weakest, _ = V._one_sided(test, _estimates(9, 9, 9, 9, 9, 1))
    assert weakest == 5 and p_holds == pytest.approx(stats.Estimate(1.0, 1.0, 20.0).p_greater())
    # one contrast below 0: it fails only after the adjustment over the claim's six contrasts (Bonferroni/Holm)
    below = -float(student_t.ppf(1 - 0.025 / 6, 20.0))
    for t_value, decided in ((below - 0.05, True), (below + 0.05, False)):
        p_holds, p_fails, _, failing = V._one_sided(test, _estimates(9, 9, 9, 9, 9, t_value))
        assert failing == 5 and (min(1.0, 2 * p_fails) < V.ALPHA) == decided
    # unadjusted it would have failed: a single contrast at that t decides
    assert 2 * stats.Estimate(below + 0.05, 1.0, 20.0).p_less() < V.ALPHA


def test_within_needs_both_one_sided_tests():
    test = V.Test([V.Contrast("d", ())], "", rule=V.WITHIN, threshold=0.5)
    p_holds, p_fails, _, _ = V._one_sided(test, [stats.Estimate(0.0, 0.1, 30.0)])
    assert p_holds < 1e-4 and p_fails == 1.0  # clearly inside ±0.5
    p_holds, p_fails, _, _ = V._one_sided(test, [stats.Estimate(0.45, 0.1, 30.0)])
    assert p_holds > 0.25  # near the upper edge: the upper one-sided test does not reject
    p_holds, p_fails, _, _ = V._one_sided(test, [stats.Estimate(-2.0, 0.1, 30.0)])
    assert p_fails < 1e-4 and p_holds == pytest.approx(1.0)  # clearly outside
