"""What a claim function of :mod:`mae.report.claims` returns, and how its verdict is decided.

A claim function returns a :class:`Test`: one or more *linear contrasts* of setting means (:class:`Contrast`,
positive = the claim's direction) and the rule that decides them. Every contrast is read with the two-level
noise model of :mod:`mae.report.evidence` (seeds, then val images; t distribution, Satterthwaite df), so a
verdict is never decided on val-image noise alone. The rules (docs/statistics.md):

- ``all above t`` — "beats all of A, B, C", and a single difference as its one-contrast case. It *holds* when
  every contrast is above ``t`` (an intersection–union test: p = the largest one-sided p), and *fails* when one
  single contrast is below ``t`` after a Bonferroni/Holm adjustment over the claim's contrasts (p = m × the
  smallest). ``t`` is 0, or ``−tolerance`` for a non-inferiority claim ("no more than 0.5 points below 75 %").
- ``within ±t`` — an equivalence claim, by two one-sided tests (TOST): it holds when the contrast is shown
  inside ``(−t, t)`` and fails when it is shown outside.

A claim's ``p_value`` is ``2 × min(p_holds, p_fails)``: it decides (holds or fails) at 5 % when that is below
0.05, so that with no true effect (or at the tolerance's edge) the chance of any decision is at most the
nominal 5 % (a single contrast: a two-sided test of exact size; several: less; tests/test_claims_null.py
simulates it for every claim). :func:`decide` gives a claim's :class:`Verdict` (``protocol invalid`` when a
protocol check of the test fails, :func:`failed_check`), and :func:`fragility` recomputes a decided one leaving out
each seed in turn. :func:`mae.report.claims.check_claims` decides every claim with them and adjusts the verdicts
over the claims of the study; :mod:`mae.report.claims_render` counts them in claims.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from mae.report import stats
from mae.report.evidence import Cell, Evidence, Term

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "fails", "inconclusive", "not run"
#: the verdict of a claim whose protocol check failed (:attr:`Test.checks`): a result of our protocol, not of MAE
PROTOCOL_INVALID = "protocol invalid"
#: a protocol check fails when its contrast is below −CHECK_SE standard errors
CHECK_SE = 2.0
#: the verdict of a claim whose every contrast lacks a training-noise estimate (never decided on image noise)
NO_TRAINING_NOISE = "inconclusive (no training-noise estimate)"
ALPHA = 0.05
ALL_ABOVE, WITHIN = "all above", "within"


@dataclass
class Contrast:
    """``Σ weight · cell`` with a label that says what it compares."""

    label: str
    terms: tuple[Term, ...]

    def point(self) -> float:
        return float(sum(w * c.point for w, c in self.terms))


@dataclass
class Test:
    """What a claim function returns: its contrasts, the rule that decides them, and the numbers in words."""

    contrasts: list[Contrast]
    evidence: str
    rule: str = ALL_ABOVE
    threshold: float = 0.0
    #: protocol checks: contrasts that a converged protocol cannot put below 0 (e.g. tuning one block more than
    #: the linear probe it starts from); one below −CHECK_SE standard errors makes the claim ``protocol invalid``
    checks: tuple[Contrast, ...] = ()

    @property
    def cells(self) -> list[Cell]:
        return list({id(c): c for con in self.contrasts for _, c in con.terms}.values())

    @property
    def point_margin(self) -> float:
        """The margin on point values alone: the weakest contrast (all above) or the contrast (within); what
        the paper's numbers give."""
        return min(c.point() for c in self.contrasts)

    def describe(self) -> str:
        t = self.threshold
        return f"|·| < {t:g}" if self.rule == WITHIN else ("all > 0" if t == 0 else f"all > {t:+g}")


@dataclass
class Verdict:
    verdict: str
    p_value: float = math.nan
    margin: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    df: float = math.nan
    contrast: str = ""
    seeds: str = ""
    seed_var: str = ""
    n_val: float = math.nan
    rule: str = ""
    evidence: str = ""
    p_holds: float = math.nan
    p_fails: float = math.nan


# --------------------------------------------------------------------------------------------- deciding
def _one_sided(test: Test, estimates: list[stats.Estimate]) -> tuple[float, float, int, int]:
    """``(p_holds, p_fails, index of the contrast that decides holds, … fails)`` of a test's rule."""
    t = test.threshold
    known = [i for i, e in enumerate(estimates) if e.known]
    if test.rule == WITHIN:
        e = estimates[0]
        p_holds = max(e.p_greater(-t), e.p_less(t))
        p_fails = min(1.0, 2 * min(e.p_less(-t), e.p_greater(t)))
        return p_holds, p_fails, 0, 0
    unknown = [i for i in range(len(estimates)) if i not in known]
    failing = min(known, key=lambda i: estimates[i].p_less(t))
    p_fails = min(1.0, len(known) * estimates[failing].p_less(t))
    if unknown:  # a contrast without an interval cannot be shown above t: it is what keeps the claim from holding
        return 1.0, p_fails, min(unknown, key=lambda i: estimates[i].value), failing
    weakest = max(known, key=lambda i: estimates[i].p_greater(t))
    return estimates[weakest].p_greater(t), p_fails, weakest, failing


def _seed_summary(cells: list[Cell]) -> tuple[str, str]:
    counts = [c.seeds for c in cells]
    seeds = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    return seeds, "+".join(sorted({c.noise.source for c in cells}))


def failed_check(test: Test, ev: Evidence) -> Verdict | None:
    """The ``protocol invalid`` verdict of the first protocol check below −CHECK_SE standard errors (or None).
    A check without an interval (no training-noise estimate) is not applied; the evidence then says so."""
    for check in test.checks:
        est = ev.estimate(check.terms)
        if not est.known:
            test.evidence += f"; protocol check {check.label} not applied (no interval)"
        elif est.value < -CHECK_SE * est.se:
            (lo, hi), (seeds, seed_var) = est.interval(), _seed_summary(test.cells)
            return Verdict(
                PROTOCOL_INVALID,
                margin=est.value,
                lo=lo,
                hi=hi,
                df=est.df,
                contrast=check.label,
                seeds=seeds,
                seed_var=seed_var,
                rule=f"check: {check.label} ≥ −{CHECK_SE:g} SE",
                evidence=f"{test.evidence}; {check.label} = {est.value:+.2f} (SE {est.se:.2f}): the "
                f"protocol did not converge, so this is not evidence about the claim",
            )
    return None


def decide(test: Test | str, ev: Evidence) -> Verdict:
    """The verdict of one claim (see the module docstring for the rules)."""
    if isinstance(test, str):
        return Verdict(NOT_RUN, evidence=test)
    invalid = failed_check(test, ev)
    if invalid is not None:
        return invalid
    estimates = [ev.estimate(c.terms) for c in test.contrasts]
    cells = test.cells
    seeds, seed_var = _seed_summary(cells)
    n_val = min((c.n_val for c in cells if math.isfinite(c.n_val)), default=math.nan)
    out = Verdict(
        INCONCLUSIVE, seeds=seeds, seed_var=seed_var, n_val=n_val, rule=test.describe(), evidence=test.evidence
    )
    unknown = [(con.label, e.missing) for con, e in zip(test.contrasts, estimates) if not e.known]
    if len(unknown) == len(estimates):
        weakest = min(range(len(estimates)), key=lambda i: estimates[i].value)
        out.margin, out.contrast = estimates[weakest].value, test.contrasts[weakest].label
        if any(why == "seeds" for _, why in unknown):
            out.verdict = NO_TRAINING_NOISE
            out.evidence += (
                "; no training-noise estimate: a side has one seed and its evaluation no pooled seed variance"
            )
        else:
            out.evidence += "; no interval: a value it needs has no per-image predictions"
        return out
    if unknown:
        out.evidence += "; no interval for " + ", ".join(
            f"{label} ({'no training-noise estimate' if why == 'seeds' else 'no per-image predictions'})"
            for label, why in unknown
        )
    out.p_holds, out.p_fails, weakest, failing = _one_sided(test, estimates)
    decisive = weakest if out.p_holds <= out.p_fails else failing
    est = estimates[decisive]
    out.p_value = min(1.0, 2 * min(out.p_holds, out.p_fails))
    out.margin, (out.lo, out.hi), out.df = est.value, est.interval(), est.df
    out.contrast = test.contrasts[decisive].label
    if out.p_value < ALPHA:
        out.verdict = HOLDS if out.p_holds <= out.p_fails else FAILS
    return out


def fragility(fn: Callable[[Evidence], Test | str], test: Test | str, verdict: Verdict, ev: Evidence) -> str:
    """For a decided verdict: recompute it leaving out each seed in turn (from the claim's settings with ≥ 2
    seeds; the pooled variances are recomputed without those runs). ``yes: …`` names the seeds whose removal
    changes it."""
    if verdict.verdict not in (HOLDS, FAILS) or isinstance(test, str):
        return ""
    multi = [c for c in test.cells if c.seeds > 1]
    if not multi:
        return "untested: every side has one seed"
    seeds = sorted({s for c in multi for s in c.seed_ids if not pd.isna(s)})
    changed = []
    for seed in seeds:
        drop = [row for c in multi for row, s in zip(c.rows, c.seed_ids) if not pd.isna(s) and s == seed]
        sub = Evidence(ev.frame.drop(index=drop), ev.replicates, ev.n_boot)
        again = decide(fn(sub), sub).verdict
        if again != verdict.verdict:
            changed.append(f"without seed {seed}: {again}")
    return "yes: " + "; ".join(changed) if changed else "no"
