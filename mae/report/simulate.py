"""Synthetic studies with a known truth: a real summary's layout, values drawn from the two-level noise model.

What the tests check the claims' decision rules and intervals with (tests/test_claims_null.py), and what the
false-decision rates of docs/statistics.md were measured with (:func:`false_decision_rates`). Every row of a
run × evaluation gets

    value = truth + τ (seed noise, N(0, seed_sd²)) + G_kind + U_row (val-image noise),

where ``G`` is shared by every run of the evaluation kind (the same val images) and ``U`` is the row's own; its
bootstrap replicates are the value plus fresh draws of ``G + U`` (draw ``b`` of ``G`` shared as the canonical
resample ``b`` is). ``partial_ft-0`` rows copy their run's linear probe, as ``mae partial-ft --reuse`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mae.report.evidence import Evidence, kind_of
from mae.report.replicates import row_key
from mae.report.runs_csv import pretraining_knobs

#: the metric a claim reads from each evaluation
METRIC_OF_EVAL = {"transfer_det": "ap_box", "transfer_seg": "miou"}
#: evaluations that have a metric to simulate (pretraining rows keep only their speed)
SIMULATED = ("finetune", "linprobe", "partial_ft", "knn", "transfer_det", "transfer_seg", "transfer_cls")


@dataclass(frozen=True)
class Noise:
    """The noise of one evaluation kind (points): a run's training noise, its val-image noise, and the share
    of the image variance common to every run of the kind."""

    seed_sd: float
    image_sd: float
    shared: float = 0.5


def metric_of(ev: str) -> str:
    return METRIC_OF_EVAL.get(ev, "top1")


def measured_noise(ev: Evidence, fallback: tuple = ("finetune", "top1", "")) -> dict[tuple, Noise]:
    """The noise of every evaluation kind of a study: training noise from its pooled seed variance (the kind
    ``fallback``'s where it has none), image noise from its rows' replicates."""
    out, missing = {}, []
    kinds = [kind_of(e, metric_of(e), s) for e, s in zip(ev.frame["eval"], ev.frame["eval_setting"])]
    for kind in dict.fromkeys(k for k, e in zip(kinds, ev.frame["eval"]) if e in SIMULATED):
        values = ev.matrix(kind[1])[[i for i, k in enumerate(kinds) if k == kind]]
        values = values[np.isfinite(values).all(axis=1)]
        if not len(values):
            continue
        pool = ev.pools(kind[1]).get(kind)
        image_var = float(np.mean(np.var(values[:, 1:], axis=1, ddof=1)))
        if pool is None or not pool.known:
            missing.append((kind, image_var))
            continue
        shared = 1.0 - pool.image_part / image_var if math.isfinite(pool.image_part) else 0.5
        out[kind] = Noise(math.sqrt(pool.training), math.sqrt(image_var), min(max(shared, 0.0), 1.0))
    for kind, image_var in missing:
        out.setdefault(kind, Noise(out[fallback].seed_sd, math.sqrt(image_var), out[fallback].shared))
    return out


def with_seeds(frame: pd.DataFrame, seeds: tuple[int, ...]) -> pd.DataFrame:
    """The layout of ``frame`` with every setting run at every seed of ``seeds``: a missing seed copies the
    setting's first rows into the run of the same knobs and that seed (``<run>_seed-<s>`` if there is none)."""
    frame = frame.reset_index(drop=True)
    knobs = [c for c in ("init", *pretraining_knobs()) if c in frame]
    ident = frame[knobs].astype("string").fillna("<NA>").agg("|".join, axis=1)
    run_of = {(i, int(s)): r for i, s, r in zip(ident, frame["seed"], frame["run"]) if not pd.isna(s)}
    setting = Evidence(frame).setting_of
    extra = []
    for _, group in frame.groupby(setting, sort=False):
        have = {int(s) for s in group["seed"].dropna()}
        first = group[group["seed"] == min(have)]
        for seed in (s for s in seeds if s not in have):
            rows = first.copy()
            rows["seed"] = seed
            rows["run"] = [run_of.get((i, seed), f"{r}_seed-{seed}") for i, r in zip(ident[first.index], first["run"])]
            extra.append(rows)
    return pd.concat([frame, *extra], ignore_index=True) if extra else frame


def simulate(
    template: pd.DataFrame,
    truth: Callable[[pd.Series], float],
    noise: dict[tuple, Noise],
    rng: np.random.Generator,
    n_boot: int = 200,
) -> tuple[pd.DataFrame, dict]:
    """One synthetic study in ``template``'s layout: ``(frame, replicates)`` as ``read_summary`` and
    ``read_replicates`` give them, with ``truth(row)`` the true value of each row's metric."""
    frame = template.copy().reset_index(drop=True)
    replicates: dict[str, dict] = {}
    shared: dict[tuple, np.ndarray] = {}
    probes: dict[str, tuple] = {}
    for col in set(METRIC_OF_EVAL.values()) | {"top1", "ap_mask"}:
        frame[col] = np.nan
    order = sorted(frame.index, key=lambda i: frame.at[i, "eval"] == "partial_ft")  # linear probes first
    for i in order:
        row = frame.loc[i]
        ev, setting = row["eval"], row["eval_setting"]
        if ev not in SIMULATED:
            continue
        metric = metric_of(ev)
        if ev == "partial_ft" and setting == "0" and row["run"] in probes:
            value, reps = probes[row["run"]]
        else:
            kind = kind_of(ev, metric, setting)
            n = noise[kind]
            if kind not in shared:
                shared[kind] = rng.normal(0.0, n.image_sd * math.sqrt(n.shared), 1 + n_boot)
            image = shared[kind] + rng.normal(0.0, n.image_sd * math.sqrt(1.0 - n.shared), 1 + n_boot)
            value = truth(row) + rng.normal(0.0, n.seed_sd) + image[0]
            reps = value + image[1:]
            if ev == "linprobe":
                probes[row["run"]] = (value, reps)
        frame.at[i, metric] = value
        replicates[row_key(row["run"], ev, setting)] = {metric: reps}
    return frame, replicates


def false_decision_rates(
    template: pd.DataFrame,
    truth: Callable[[pd.Series], float],
    noise: dict[tuple, Noise],
    draws: int,
    seed: int = 0,
    n_boot: int = 200,
) -> pd.DataFrame:
    """Per claim, how often each verdict (raw and Holm-adjusted) comes out over ``draws`` synthetic studies, and
    how often the claim had a p-value at all (``tested``: a rule never tested cannot make a false decision)."""
    from mae.report.claims import check_claims

    rng = np.random.default_rng(seed)
    counts: list[pd.DataFrame] = []
    for _ in range(draws):
        frame, replicates = simulate(template, truth, noise, rng, n_boot)
        result = check_claims(frame, replicates, with_paper=False, n_boot=n_boot, fragile=False)
        counts.append(result[["id", "verdict", "verdict_holm", "p_value"]])
    every = pd.concat(counts, ignore_index=True)
    raw = pd.crosstab(every["id"], every["verdict"]) / draws
    holm = (pd.crosstab(every["id"], every["verdict_holm"]) / draws).add_suffix(" (Holm)")
    tested = every.assign(tested=every["p_value"].notna()).groupby("id")["tested"].mean()
    return pd.concat([raw, holm, tested], axis=1).fillna(0.0)


#: a plausible level of each evaluation (points); no claim depends on the levels, only on their differences
LEVEL = {
    "finetune": 20.0,
    "linprobe": 18.0,
    "knn": 13.0,
    "transfer_det": 1.0,
    "transfer_seg": 9.0,
    "transfer_cls": 12.0,
}


def no_effect(row: pd.Series) -> float:
    """The truth of the null of every claim at once: no knob and no init changes anything, except where a claim
    has a tolerance, which sits at its edge — fine-tuning at 40–80 % masking 0.5 points below 75 %
    (``ratio_ft_insensitive``) and dVAE tokens 0.5 points above normalised pixels (``token_target``); one
    fine-tuned block at the midpoint of the linear probe and full fine-tuning (``one_block``)."""
    ev = row["eval"]
    if ev == "partial_ft":
        return LEVEL["linprobe"] if row["eval_setting"] == "0" else (LEVEL["linprobe"] + LEVEL["finetune"]) / 2
    value = LEVEL[ev]
    if ev == "finetune" and row["init"] == "mae":
        if (
            "fig5" in str(row["tables"]).split(";")
            and 0.4 <= float(row["mask_ratio"]) <= 0.8
            and abs(float(row["mask_ratio"]) - 0.75) > 1e-9
        ):
            value -= 0.5
        if row["target"] == "token":
            value += 0.5
    return value
