"""Does our study reproduce the paper's claims? (``mae claims``)

Each claim is a small pure function of an :class:`~mae.report.evidence.Evidence` (runs.csv with the bootstrap
replicates of its metrics) that returns an :class:`Outcome`: its margin (in accuracy points unless said
otherwise; positive = the claim's direction) on the point values *and on every bootstrap replicate* — the whole
statement is recomputed per replicate (val images resampled identically in every run, seeds resampled per
setting), so a shape such as "the probe peaks at a ratio ≥ 60 %" is resampled as a whole, not one difference.

:func:`judge` turns it into a :class:`Verdict`: ``holds`` when the 95 % interval of the margin lies above zero,
``fails`` when it lies below, ``inconclusive`` when it contains zero (or a value it needs has no per-image
predictions), ``not run`` when the runs are missing. The same functions run on the paper's own numbers
(:func:`mae.report.paper.paper_as_runs`, point values only), so the paper's margin is printed beside ours.

Known bias: a claim that takes a maximum or a range over cells ("best at ≥ 60 %", "range over depths") is
resampled as such, and the bootstrap of a maximum of close values leans upward (more so for the group with
more cells); ranges of noisy cells are inflated, which makes "matters more for linear probing" conservative
when fine-tuning is noisy and liberal when the probe is.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from mae import stats
from mae.report.evidence import METRIC_OF, Cell, Evidence
from mae.report.paper import paper_as_runs
from mae.report.summary import REPLICATES, differs_only_in, read_replicates, read_summary
from mae.report.tables import to_markdown
from mae.utils.io import atomic_path, atomic_write_text

log = logging.getLogger("mae.report.claims")

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "fails", "inconclusive", "not run"
#: transfer evaluations and the metric a transfer claim compares
TRANSFER = (("transfer_det", "ap_box"), ("transfer_seg", "miou"), ("transfer_cls", "top1"))


@dataclass
class Verdict:
    verdict: str
    margin: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    seeds: int = 0
    n_val: float = math.nan
    evidence: str = ""


@dataclass
class Outcome:
    """What a claim function returns: its margin on every replicate, the cells behind it, and words."""

    margin: np.ndarray
    cells: list[Cell]
    evidence: str


# --------------------------------------------------------------------------------------------- helpers
def _fmt(cells: Iterable[Cell], label: Callable[[tuple], str]) -> str:
    return ", ".join(f"{label(c.key)}: {c.point:.2f}" for c in cells)


def _range(cells: list[Cell]) -> np.ndarray:
    stack = np.stack([c.values for c in cells])
    return stack.max(0) - stack.min(0)


def _best(cells: list[Cell]) -> np.ndarray:
    return np.stack([c.values for c in cells]).max(0)


def _by_key(cells: list[Cell]) -> dict:
    return {c.key[0] if len(c.key) == 1 else c.key: c for c in cells}


def _pct(ratio: float) -> str:
    return f"{float(ratio) * 100:g}%"


# --------------------------------------------------------------------------------------------- claims
def high_mask_ratio_best_for_linear(ev: Evidence) -> Outcome | str:
    """The best linear-probing accuracy is at a high mask ratio (≥ 60 %); margin = best at ≥ 60 % minus best
    below 60 %."""
    c = ev.cells(["mask_ratio"], "lin")
    high = [x for x in c if float(x.key[0]) >= 0.6]
    low = [x for x in c if float(x.key[0]) < 0.6]
    if not high or not low:
        return "needs linear probes at mask ratios both below and at/above 60%"
    return Outcome(_best(high) - _best(low), c, "lin top-1 by ratio: " + _fmt(c, lambda k: _pct(k[0])))


def ft_insensitive_to_mask_ratio(ev: Evidence) -> Outcome | str:
    """Fine-tuning is less sensitive to the mask ratio than linear probing (Fig. 5); margin = range of the
    linear probe over the ratios run − range of fine-tuning."""
    return _matters_more_for_linear(ev, "mask_ratio", lambda k: _pct(k[0]), "ratios")


def _matters_more_for_linear(ev: Evidence, knob: str, label: Callable[[tuple], str], what: str) -> Outcome | str:
    ft, lin = _by_key(ev.cells([knob], "ft")), _by_key(ev.cells([knob], "lin"))
    keys = sorted(set(ft) & set(lin), key=float)
    if len(keys) < 2:
        return f"needs fine-tune and linear probe at two or more {what}"
    ft_c, lin_c = [ft[k] for k in keys], [lin[k] for k in keys]
    margin = _range(lin_c) - _range(ft_c)
    return Outcome(margin, ft_c + lin_c, f"{what} {', '.join(label((k,)) for k in keys)}: lin range "
                   f"{_range(lin_c)[0]:.2f}, ft range {_range(ft_c)[0]:.2f}")


def decoder_depth_matters_more_for_linear(ev: Evidence) -> Outcome | str:
    """Over the decoder depths we ran, linear probing varies more than fine-tuning; margin = range(lin) −
    range(ft)."""
    return _matters_more_for_linear(ev, "decoder_depth", lambda k: str(int(k[0])), "depths")


def decoder_width_matters_more_for_linear(ev: Evidence) -> Outcome | str:
    """Over the decoder widths we ran, linear probing varies more than fine-tuning (Table 1b: a narrow decoder
    costs the probe, not fine-tuning); margin = range(lin) − range(ft)."""
    return _matters_more_for_linear(ev, "decoder_width", lambda k: str(int(k[0])), "widths")


def _target_vs(ev: Evidence, other: str) -> Outcome | str:
    """Margin = min over fine-tune and linear probe of (norm_pixel − ``other``)."""
    margins, used, parts = [], [], []
    for kind in ("ft", "lin"):
        c = _by_key(ev.cells(["target"], kind))
        if "norm_pixel" in c and other in c:
            m = c["norm_pixel"].values - c[other].values
            margins.append(m)
            used += [c["norm_pixel"], c[other]]
            parts.append(f"{kind} norm_pixel−{other} {m[0]:+.2f}")
    if not margins:
        return f"needs target=norm_pixel and target={other} runs"
    return Outcome(np.minimum.reduce(margins), used, "; ".join(parts))


def norm_pixels_at_least_pixels(ev: Evidence) -> Outcome | str:
    """Normalised-pixel targets beat raw pixels (fine-tune and linear probe); margin = the smaller of the two
    differences."""
    return _target_vs(ev, "pixel")


def norm_pixels_beat_pca(ev: Evidence) -> Outcome | str:
    """Normalised pixels beat PCA coefficients as the target (Table 1d); margin = min over ft and lin."""
    return _target_vs(ev, "pca")


def tokens_no_better_than_pixels(ev: Evidence) -> Outcome | str:
    """Normalised pixels are at least as good as dVAE tokens (Table 1d: tokenisation is not necessary);
    margin = min over ft and lin of (norm_pixel − token)."""
    return _target_vs(ev, "token")


def random_sampling_best(ev: Evidence) -> Outcome | str:
    """Random sampling at the base ratio beats every block/grid setting (fine-tune and linear probe); margin
    = the smallest difference."""
    base_ratio = ev.base_value("mask_ratio")
    margins, used, parts = [], [], []
    for kind in ("ft", "lin"):
        c = ev.cells(["sampling", "mask_ratio"], kind)
        rnd = [x for x in c if x.key[0] == "random" and abs(float(x.key[1]) - base_ratio) < 1e-9]
        for other in (x for x in c if x.key[0] != "random"):
            if not rnd:
                break
            m = rnd[0].values - other.values
            margins.append(m)
            used += [rnd[0], other]
            parts.append(f"{kind} random−{other.key[0]} {_pct(other.key[1])} {m[0]:+.2f}")
    if not margins:
        return "needs random and block/grid sampling runs"
    return Outcome(np.minimum.reduce(margins), used, "; ".join(parts))


def mask_token_worse_for_linear(ev: Evidence) -> Outcome | str:
    """An encoder that sees mask tokens is worse for linear probing (margin = lin top-1 without minus with).
    The pretraining speedup without mask tokens is reported beside it (and in Table 2) but does not decide the
    verdict: images/s is a measurement of the machine's load, with no interval."""
    lin = _by_key(ev.cells(["mask_token_in_encoder"], "lin"))
    lin = {bool(k): v for k, v in lin.items()}
    if True not in lin or False not in lin:
        return "needs linear probes with and without mask tokens in the encoder"
    margin = lin[False].values - lin[True].values
    speed = {bool(k): v.point for k, v in _by_key(ev.cells(["mask_token_in_encoder"], "img_s")).items()}
    evidence = f"lin w/o−w/ [M] {margin[0]:+.2f}"
    if speed.get(True, 0) > 0 and False in speed:
        evidence += f"; pretraining speedup without [M] {speed[False] / speed[True]:.2f}× (not part of the verdict)"
    return Outcome(margin, [lin[False], lin[True]], evidence)


def aug_robust_under_finetuning(ev: Evidence) -> Outcome | str:
    """MAE works without augmentation: dropping random cropping costs fine-tuning less than linear probing
    (Table 1e); margin = (lin crop_rand − lin none) − (ft crop_rand − ft none)."""
    ft, lin = _by_key(ev.cells(["aug"], "ft")), _by_key(ev.cells(["aug"], "lin"))
    if not all(a in d for a in ("none", "crop_rand") for d in (ft, lin)):
        return "needs fine-tune and linear probe with aug=none and aug=crop_rand"
    drop_lin = lin["crop_rand"].values - lin["none"].values
    drop_ft = ft["crop_rand"].values - ft["none"].values
    return Outcome(drop_lin - drop_ft, [ft["none"], ft["crop_rand"], lin["none"], lin["crop_rand"]],
                   f"without augmentation: lin {-drop_lin[0]:+.2f}, ft {-drop_ft[0]:+.2f}")


def _beats_baseline(ev: Evidence, evaluation: str, metric: str, setting: str | None = "",
                    init: str = "scratch") -> tuple | None:
    mae = ev.select(evaluation, metric, [], differs_only_in(ev.frame, [], ev.base), setting) \
        if len(ev.frame) else []
    other = ev.baseline(init, evaluation, metric, setting)
    if not mae or other is None:
        return None
    return mae[0], other


def _beats_scratch(ev: Evidence, kind: str) -> Outcome | str:
    """Margin = top-1 of the base run − top-1 of the same evaluation (``kind``: ft | lin) from random init."""
    evaluation, metric = METRIC_OF[kind]
    pair = _beats_baseline(ev, evaluation, metric)
    if pair is None:
        return f"needs a {evaluation} of the base run and of a random init (scratch)"
    mae, scratch = pair
    return Outcome(mae.values - scratch.values, [mae, scratch],
                   f"{kind} MAE {mae.point:.2f} vs scratch {scratch.point:.2f}")


def mae_beats_scratch(ev: Evidence) -> Outcome | str:
    """MAE pretraining then fine-tuning beats training the same model from scratch; margin = ft top-1 MAE
    (base run) − scratch."""
    return _beats_scratch(ev, "ft")


def features_beat_random_init(ev: Evidence) -> Outcome | str:
    """A linear probe of the MAE encoder beats a linear probe of the same encoder at random init; margin =
    lin top-1 MAE (base run) − random init. (Not a numbered claim of the paper, which reports no random-init
    probe; it is the first sanity check of any pretraining.)"""
    return _beats_scratch(ev, "lin")


def _transfer_beats(ev: Evidence, init: str, transfers: tuple = TRANSFER) -> Outcome | str:
    """Margin = the smallest MAE − ``init`` difference over the ``transfers`` run (detection AP box,
    segmentation mIoU, classification top-1 per dataset)."""
    margins, used, parts = [], [], []
    for evaluation, metric in transfers:
        settings = sorted(set(ev.frame.loc[ev.frame["eval"] == evaluation, "eval_setting"].fillna(""))) \
            if len(ev.frame) else []
        for setting in settings:
            pair = _beats_baseline(ev, evaluation, metric, setting, init)
            if pair is None:
                continue
            m = pair[0].values - pair[1].values
            margins.append(m)
            used += list(pair)
            parts.append(f"{evaluation}{'-' + setting if setting else ''} {metric} {m[0]:+.2f}")
    if not margins:
        return f"needs a transfer evaluation of the base run and of the {init} baseline"
    return Outcome(np.minimum.reduce(margins), used, "; ".join(parts))


def transfer_beats_scratch(ev: Evidence) -> Outcome | str:
    """MAE transfers better than a random init (our baseline; the paper has no scratch transfer rows)."""
    return _transfer_beats(ev, "scratch")


def transfer_beats_supervised(ev: Evidence) -> Outcome | str:
    """MAE transfers better than supervised pretraining in detection and segmentation (Tables 4, 5: ours = the
    from-scratch fine-tuned encoder on the same data; the paper's = supervised ImageNet-1K pretraining). Table 6
    (classification transfer) compares with other methods' published numbers, not with supervised
    pretraining, so classification transfer is not part of this claim."""
    return _transfer_beats(ev, "supervised", TRANSFER[:2])


def one_block_far_above_linear(ev: Evidence) -> Outcome | str:
    """Fine-tuning only the last block lifts accuracy far above linear probing: it recovers at least half of
    the gap between linear probing and full fine-tuning (the paper: 66 %). Margin = 1-block top-1 − the
    midpoint of linear probing and full fine-tuning."""
    base = differs_only_in(ev.frame, [], ev.base) if len(ev.frame) else None
    one = ev.select("partial_ft", "top1", [], base, "1") if base is not None else []
    lin = ev.select("partial_ft", "top1", [], base, "0") if base is not None else []
    lin = lin or ev.cells([], "lin")
    if not one or not lin:
        return "needs partial fine-tuning of 1 block and a linear probe of the base run"
    one, lin = one[0], lin[0]
    ft = ev.cells([], "ft")
    if not ft:
        return "needs a full fine-tune of the base run (the gap is linear probe → full fine-tuning)"
    gap = ft[0].point - lin.point
    frac = f"; {(one.point - lin.point) / gap * 100:.0f}% of the gap" if gap > 0 else ""
    return Outcome(one.values - (lin.values + ft[0].values) / 2, [one, lin, ft[0]],
                   f"lin {lin.point:.2f} → 1 block {one.point:.2f} (full ft {ft[0].point:.2f}{frac})")


def longer_schedules_keep_improving(ev: Evidence) -> Outcome | str:
    """The longest pretraining schedule gives the best accuracy (linear probe and fine-tune); margin = the
    smaller, over the two, of (longest − best shorter schedule)."""
    margins, used, parts = [], [], []
    for kind in ("lin", "ft"):
        c = sorted(ev.cells(["pretrain_epochs"], kind), key=lambda x: float(x.key[0]))
        if len(c) < 2:
            continue
        margins.append(c[-1].values - _best(c[:-1]))
        used += c
        parts.append(f"{kind}: " + _fmt(c, lambda k: f"{int(k[0])}ep"))
    if not margins:
        return "needs two or more pretraining schedules"
    return Outcome(np.minimum.reduce(margins), used, "; ".join(parts))


#: non-inferiority margins (points): a claim "A is at least as good as B" holds when A − B > −tolerance
TOLERANCE = {"token_target": 0.5}

CLAIMS: tuple[tuple[str, str, Callable[[Evidence], Outcome | str]], ...] = (
    ("high_mask_ratio", "A high mask ratio (≥60%) is best for linear probing (Fig. 5)",
     high_mask_ratio_best_for_linear),
    ("ratio_ft_insensitive", "Fine-tuning is less sensitive to the mask ratio than linear probing (Fig. 5)",
     ft_insensitive_to_mask_ratio),
    ("decoder_depth", "Decoder depth matters more for linear probing than for fine-tuning (Table 1a)",
     decoder_depth_matters_more_for_linear),
    ("decoder_width", "Decoder width matters more for linear probing than for fine-tuning (Table 1b)",
     decoder_width_matters_more_for_linear),
    ("mask_token", "A mask token in the encoder is worse for linear probing (Table 1c)", mask_token_worse_for_linear),
    ("norm_pixels", "Normalized pixels are a better target than raw pixels (Table 1d)",
     norm_pixels_at_least_pixels),
    ("pca_target", "Normalized pixels are a better target than PCA coefficients (Table 1d)", norm_pixels_beat_pca),
    ("token_target", "Normalized pixels are at least as good a target as dVAE tokens, within 0.5 points (Table 1d)",
     tokens_no_better_than_pixels),
    ("aug_robust", "Without augmentation fine-tuning loses less than linear probing (Table 1e)",
     aug_robust_under_finetuning),
    ("random_sampling", "Random sampling is better than block and grid sampling (Table 1f)", random_sampling_best),
    ("lin_vs_random", "MAE features beat a random-init encoder under a linear probe", features_beat_random_init),
    ("mae_vs_scratch", "MAE pretraining beats training from scratch (Table 3)", mae_beats_scratch),
    ("transfer_vs_supervised", "MAE transfers better than supervised pretraining in detection and segmentation "
                               "(Tables 4, 5)",
     transfer_beats_supervised),
    ("transfer_vs_scratch", "MAE transfers better than a random init (transfer, our baseline)",
     transfer_beats_scratch),
    ("one_block", "Fine-tuning one block recovers at least half of the linear-to-full gap (Fig. 9)",
     one_block_far_above_linear),
    ("longer_schedule", "Longer pretraining keeps improving accuracy (Fig. 7)", longer_schedules_keep_improving),
)


def judge(outcome: Outcome | str, tolerance: float = 0.0) -> Verdict:
    """The verdict of one claim from its margin on every replicate: holds when the 95 % interval lies above
    ``-tolerance`` (0 unless the claim is a non-inferiority statement), fails when it lies below."""
    if isinstance(outcome, str):
        return Verdict(NOT_RUN, evidence=outcome)
    margin = np.asarray(outcome.margin, dtype=float)
    point = float(margin[0])
    lo, hi = stats.percentile_interval(margin[1:]) if len(margin) > 1 and np.isfinite(margin[1:]).all() \
        else (math.nan, math.nan)
    seeds = min((c.seeds for c in outcome.cells), default=0)
    n_val = min((c.n_val for c in outcome.cells if math.isfinite(c.n_val)), default=math.nan)
    evidence = outcome.evidence
    if math.isnan(lo):
        verdict = INCONCLUSIVE
        evidence += "; no interval: a value it needs has no per-image predictions"
    else:
        verdict = HOLDS if lo > -tolerance else FAILS if hi < -tolerance else INCONCLUSIVE
    return Verdict(verdict, point, lo, hi, seeds, n_val, evidence)


def check_claims(frame: pd.DataFrame, replicates: dict | None = None, with_paper: bool = True,
                 n_boot: int | None = None) -> pd.DataFrame:
    """One row per claim: id, claim, verdict, margin, 95 % interval, seeds, val images, evidence (+ the paper's
    margin, from its point values)."""
    ours_ev = Evidence(frame, replicates, n_boot)
    paper_ev = Evidence(paper_as_runs(), None, 0) if with_paper else None
    records = []
    for cid, text, fn in CLAIMS:
        ours = judge(fn(ours_ev), TOLERANCE.get(cid, 0.0))
        rec = {"id": cid, "claim": text, "verdict": ours.verdict, "margin": ours.margin, "ci_lo": ours.lo,
               "ci_hi": ours.hi, "seeds": ours.seeds, "n_val": ours.n_val, "evidence": ours.evidence}
        if paper_ev is not None:
            theirs = fn(paper_ev)
            rec["paper_margin"] = float(theirs.margin[0]) if isinstance(theirs, Outcome) else math.nan
        records.append(rec)
    return pd.DataFrame(records)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", required=True, help="results/summary/runs.csv")
    parser.add_argument("--replicates", default=None,
                        help=f"bootstrap replicates (default: {REPLICATES} beside --summary; without it every "
                             "verdict is inconclusive)")
    parser.add_argument("--out", required=True,
                        help="results/tables/claims.csv (or .md): writes claims.csv and claims.md there; "
                             "a path without extension is a folder that receives claims.csv and claims.md")


def _interval(lo: float, hi: float) -> str:
    return "–" if math.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]"


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    frame = read_summary(args.summary)
    replicates = read_replicates(args.replicates or Path(args.summary).with_name(REPLICATES))
    result = check_claims(frame, replicates)
    out = Path(args.out)
    stem = out.with_suffix("") if out.suffix in (".csv", ".md") else out / "claims"
    with atomic_path(stem.with_suffix(".csv"), suffix=".csv") as tmp:
        result.to_csv(tmp, index=False)
    shown = result.assign(ci=[_interval(lo, hi) for lo, hi in zip(result["ci_lo"], result["ci_hi"])])
    shown = shown[["claim", "verdict", "margin", "ci", "seeds", "n_val", "paper_margin", "evidence"]].rename(
        columns={"margin": "our margin", "ci": "95% CI", "n_val": "val images", "paper_margin": "paper margin"})
    counts = result["verdict"].value_counts()
    head = (f"# Claims of the paper, checked on our runs\n\nholds: {counts.get(HOLDS, 0)}, fails: "
            f"{counts.get(FAILS, 0)}, inconclusive: {counts.get(INCONCLUSIVE, 0)}, not run: "
            f"{counts.get(NOT_RUN, 0)}. A claim holds (fails) when the 95% interval of its margin lies above "
            "(below) zero: paired bootstrap over val images, seeds resampled where a setting has several. "
            "With one seed the interval covers val-image noise only (not training noise). 95% per claim, no "
            "correction for testing several claims. Margins in accuracy points (mIoU/AP points for transfer), "
            "means over seeds; the paper's margin is the same computation on the paper's numbers (ViT-L/16).\n\n")
    atomic_write_text(stem.with_suffix(".md"), head + to_markdown(shown) + "\n")
    for r in result.itertuples():
        log.info("%-20s %-12s %+.2f %s %s", r.id, r.verdict, r.margin, _interval(r.ci_lo, r.ci_hi), r.evidence)
    return 0
