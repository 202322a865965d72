"""Does our study reproduce the paper's claims? (``mae claims``)

Each claim is a small pure function of an :class:`~mae.report.evidence.Evidence` (runs.csv with the bootstrap
replicates of its metrics) that returns a :class:`~mae.report.verdicts.Test`: one or more *linear contrasts* of
setting means (positive = the claim's direction) and the rule that decides them, ``all above t`` or ``within ±t``
(:mod:`mae.report.verdicts` holds the rules and decides each claim; docs/statistics.md). :data:`CLAIMS` lists
them. :func:`check_claims` decides every claim, adjusts the verdicts over all claims of the study by
Holm–Bonferroni (``verdict_holm``), and recomputes every decided verdict leaving out each seed in turn
(``fragile``). The same functions run on the paper's own numbers (:func:`mae.report.paper.paper_as_runs`, point
values only), so the paper's margin is printed beside ours. :mod:`mae.report.claims_render` writes claims.csv
and claims.md.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from mae.report import stats
from mae.report.claims_render import fmt_interval, fmt_p, write_claims
from mae.report.evidence import METRIC_OF, Cell, Evidence
from mae.report.paper import paper_as_runs
from mae.report.replicates import REPLICATES, read_replicates
from mae.report.runs_csv import read_summary
from mae.report.verdicts import ALPHA, FAILS, HOLDS, INCONCLUSIVE, WITHIN, Contrast, Test, decide, fragility

log = logging.getLogger("mae.report.claims")

#: transfer evaluations and the metric a transfer claim compares
TRANSFER = (("transfer_det", "ap_box"), ("transfer_seg", "miou"), ("transfer_cls", "top1"))
#: tolerances (points) of the claims that are non-inferiority or equivalence statements
TOLERANCE = {"ratio_ft_insensitive": 0.5, "token_target": 0.5}
#: the mask ratios of the paper's "a wide range of masking ratios (40–80%) work well" for fine-tuning (Fig. 5)
WIDE_RATIOS = (0.4, 0.8)


# --------------------------------------------------------------------------------------------- helpers
def _fmt(cells: Iterable[Cell], label: Callable[[tuple], str]) -> str:
    return ", ".join(f"{label(c.key)}: {c.point:.2f}" for c in cells)


def _diff(label: str, a: Cell, b: Cell) -> Contrast:
    return Contrast(label, ((1.0, a), (-1.0, b)))


def _by_key(cells: list[Cell]) -> dict:
    return {c.key[0] if len(c.key) == 1 else c.key: c for c in cells}


def _pct(ratio: float) -> str:
    return f"{float(ratio) * 100:g}%"


def _same(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) < 1e-9


# --------------------------------------------------------------------------------------------- claims
def high_mask_ratio_best_for_linear(ev: Evidence) -> Test | str:
    """A high mask ratio is best for linear probing (Fig. 5: "the optimal ratios are surprisingly high"): the
    probe at the base ratio (the paper's 75 %) beats every ratio below 60 % — one contrast per low ratio (a
    pre-set ratio, not the best observed one: a maximum of noisy cells leans upward)."""
    c = ev.cells(["mask_ratio"], "lin")
    base_ratio = ev.base_value("mask_ratio")
    base = [x for x in c if _same(x.key[0], base_ratio)]
    low = [x for x in c if float(x.key[0]) < 0.6]
    if not base or not low or base_ratio < 0.6:
        return "needs linear probes at the base ratio (≥ 60%) and at a ratio below 60%"
    return Test(
        [_diff(f"lin {_pct(base_ratio)}−{_pct(x.key[0])}", base[0], x) for x in low],
        "lin top-1 by ratio: " + _fmt(c, lambda k: _pct(k[0])),
    )


def ft_works_over_wide_ratio_range(ev: Evidence) -> Test | str:
    """Fine-tuning is insensitive to the mask ratio (Fig. 5: "a wide range of masking ratios (40–80%) work
    well"): every ratio run in 40–80 % fine-tunes within 0.5 points of the base ratio — non-inferiority, one
    contrast ft(r) − ft(base) per ratio, each above −0.5."""
    ft = _by_key(ev.cells(["mask_ratio"], "ft"))
    base_ratio = ev.base_value("mask_ratio")
    base = next((c for r, c in ft.items() if _same(r, base_ratio)), None)
    wide = [
        (r, c)
        for r, c in sorted(ft.items(), key=lambda kv: float(kv[0]))
        if WIDE_RATIOS[0] - 1e-9 <= float(r) <= WIDE_RATIOS[1] + 1e-9 and c is not base
    ]
    if base is None or not wide:
        return "needs fine-tunes at the base ratio and at another ratio in 40–80%"
    return Test(
        [_diff(f"ft {_pct(r)}−{_pct(base_ratio)}", c, base) for r, c in wide],
        "ft top-1 by ratio: " + _fmt([c for _, c in wide] + [base], lambda k: _pct(k[0])),
        threshold=-TOLERANCE["ratio_ft_insensitive"],
    )


def _helps_linear_more(ev: Evidence, knob: str, label: Callable, what: str) -> Test | str:
    """Margin = (lin at the largest − at the smallest ``knob``) − (the same for ft): a linear contrast, centred
    at 0 when the knob changes nothing (a range of noisy cells is not: the noisier curve has the larger one)."""
    ft, lin = _by_key(ev.cells([knob], "ft")), _by_key(ev.cells([knob], "lin"))
    keys = sorted(set(ft) & set(lin), key=float)
    if len(keys) < 2:
        return f"needs fine-tune and linear probe at two or more {what}"
    lo, hi = keys[0], keys[-1]
    con = Contrast(
        f"(lin {label(hi)}−{label(lo)}) − (ft {label(hi)}−{label(lo)})",
        ((1.0, lin[hi]), (-1.0, lin[lo]), (-1.0, ft[hi]), (1.0, ft[lo])),
    )
    return Test(
        [con],
        f"{what} {label(lo)} → {label(hi)}: lin {lin[hi].point - lin[lo].point:+.2f}, "
        f"ft {ft[hi].point - ft[lo].point:+.2f}",
    )


def decoder_depth_matters_more_for_linear(ev: Evidence) -> Test | str:
    """A deeper decoder helps linear probing more than fine-tuning (Table 1a: "a sufficiently deep decoder is
    important for linear probing", fine-tuning barely moves): deepest vs shallowest depth run."""
    return _helps_linear_more(ev, "decoder_depth", lambda k: str(int(k)), "depth")


def decoder_width_matters_more_for_linear(ev: Evidence) -> Test | str:
    """A wider decoder helps linear probing more than fine-tuning (Table 1b): widest vs narrowest width run."""
    return _helps_linear_more(ev, "decoder_width", lambda k: str(int(k)), "width")


def _target_vs(ev: Evidence, other: str) -> Test | str:
    """One contrast per evaluation (ft, lin) of norm_pixel − ``other``; holds when both are above 0."""
    contrasts = []
    for kind in ("ft", "lin"):
        c = _by_key(ev.cells(["target"], kind))
        if "norm_pixel" in c and other in c:
            contrasts.append(_diff(f"{kind} norm_pixel−{other}", c["norm_pixel"], c[other]))
    if not contrasts:
        return f"needs target=norm_pixel and target={other} runs"
    return Test(contrasts, "; ".join(f"{c.label} {c.point():+.2f}" for c in contrasts))


def norm_pixels_at_least_pixels(ev: Evidence) -> Test | str:
    """Normalised-pixel targets beat raw pixels, in fine-tuning and in linear probing (Table 1d)."""
    return _target_vs(ev, "pixel")


def norm_pixels_beat_pca(ev: Evidence) -> Test | str:
    """Normalised pixels beat PCA coefficients as the target, in fine-tuning and linear probing (Table 1d)."""
    return _target_vs(ev, "pca")


def tokens_no_better_than_pixels(ev: Evidence) -> Test | str:
    """dVAE tokens bring no advantage over normalised pixels (Table 1d: fine-tuning 85.3 vs 85.4): the two
    targets fine-tune alike within ±0.5 points — an equivalence claim, decided by two one-sided tests."""
    ft = _by_key(ev.cells(["target"], "ft"))
    if "norm_pixel" not in ft or "token" not in ft:
        return "needs fine-tunes with target=norm_pixel and target=token"
    con = _diff("ft norm_pixel−token", ft["norm_pixel"], ft["token"])
    return Test(
        [con],
        f"ft norm_pixel {ft['norm_pixel'].point:.2f}, token {ft['token'].point:.2f}",
        rule=WITHIN,
        threshold=TOLERANCE["token_target"],
    )


def random_sampling_best(ev: Evidence) -> Test | str:
    """Random sampling at the base ratio beats every block/grid setting, in fine-tuning and in linear probing
    (Table 1f): one contrast per (evaluation, other sampling)."""
    base_ratio = ev.base_value("mask_ratio")
    contrasts = []
    for kind in ("ft", "lin"):
        c = ev.cells(["sampling", "mask_ratio"], kind)
        rnd = [x for x in c if x.key[0] == "random" and _same(x.key[1], base_ratio)]
        if rnd:
            contrasts += [
                _diff(f"{kind} random−{x.key[0]} {_pct(x.key[1])}", rnd[0], x) for x in c if x.key[0] != "random"
            ]
    if not contrasts:
        return "needs random and block/grid sampling runs"
    return Test(contrasts, "; ".join(f"{c.label} {c.point():+.2f}" for c in contrasts))


def mask_token_worse_for_linear(ev: Evidence) -> Test | str:
    """An encoder that sees mask tokens is worse for linear probing (margin = lin top-1 without minus with).
    The pretraining speedup without mask tokens is reported beside it (and in Table 2) but does not decide the
    verdict: images/s is a measurement of the machine's load, with no interval."""
    lin = {bool(k): v for k, v in _by_key(ev.cells(["mask_token_in_encoder"], "lin")).items()}
    if True not in lin or False not in lin:
        return "needs linear probes with and without mask tokens in the encoder"
    con = _diff("lin w/o−w/ [M]", lin[False], lin[True])
    speed = {bool(k): v.point for k, v in _by_key(ev.cells(["mask_token_in_encoder"], "img_s")).items()}
    evidence = f"lin w/o−w/ [M] {con.point():+.2f}"
    if speed.get(True, 0) > 0 and False in speed:
        evidence += f"; pretraining speedup without [M] {speed[False] / speed[True]:.2f}× (not part of the verdict)"
    return Test([con], evidence)


def aug_robust_under_finetuning(ev: Evidence) -> Test | str:
    """MAE works without augmentation: dropping random cropping costs fine-tuning less than linear probing
    (Table 1e); margin = (lin crop_rand − lin none) − (ft crop_rand − ft none)."""
    ft, lin = _by_key(ev.cells(["aug"], "ft")), _by_key(ev.cells(["aug"], "lin"))
    if not all(a in d for a in ("none", "crop_rand") for d in (ft, lin)):
        return "needs fine-tune and linear probe with aug=none and aug=crop_rand"
    con = Contrast(
        "(lin crop_rand−none) − (ft crop_rand−none)",
        ((1.0, lin["crop_rand"]), (-1.0, lin["none"]), (-1.0, ft["crop_rand"]), (1.0, ft["none"])),
    )
    return Test(
        [con],
        f"without augmentation: lin {lin['none'].point - lin['crop_rand'].point:+.2f}, "
        f"ft {ft['none'].point - ft['crop_rand'].point:+.2f}",
    )


def _beats_baseline(
    ev: Evidence, evaluation: str, metric: str, setting: str | None = "", init: str = "scratch"
) -> tuple | None:
    mae = ev.select(evaluation, metric, [], ev.base_rows, setting) if len(ev.frame) else []
    other = ev.baseline(init, evaluation, metric, setting)
    if not mae or other is None:
        return None
    return mae[0], other


def _beats_scratch(ev: Evidence, kind: str) -> Test | str:
    """Margin = top-1 of the base run − top-1 of the same evaluation (``kind``: ft | lin) from random init."""
    evaluation, metric = METRIC_OF[kind]
    pair = _beats_baseline(ev, evaluation, metric)
    if pair is None:
        return f"needs a {evaluation} of the base run and of a random init (scratch)"
    mae, scratch = pair
    return Test(
        [_diff(f"{kind} MAE−scratch", mae, scratch)], f"{kind} MAE {mae.point:.2f} vs scratch {scratch.point:.2f}"
    )


def mae_beats_scratch(ev: Evidence) -> Test | str:
    """MAE pretraining then fine-tuning beats training the same model from scratch; margin = ft top-1 MAE
    (base run) − scratch."""
    return _beats_scratch(ev, "ft")


def features_beat_random_init(ev: Evidence) -> Test | str:
    """A linear probe of the MAE encoder beats a linear probe of the same encoder at random init; margin =
    lin top-1 MAE (base run) − random init. (Not a numbered claim of the paper, which reports no random-init
    probe; it is the first sanity check of any pretraining.)"""
    return _beats_scratch(ev, "lin")


def _transfer_beats(ev: Evidence, init: str, transfers: tuple = TRANSFER, named: bool = False) -> Test | str:
    """One contrast MAE − ``init`` per transfer run (detection AP box, segmentation mIoU, classification top-1
    per dataset); holds when every one is above 0. ``named``: the claim names each of ``transfers``, so the
    evidence says which of them the study did not run (its verdict then reads on the others alone)."""
    contrasts, missing = [], []
    for evaluation, metric in transfers:
        before = len(contrasts)
        settings = (
            sorted(set(ev.frame.loc[ev.frame["eval"] == evaluation, "eval_setting"].fillna("")))
            if len(ev.frame)
            else []
        )
        for setting in settings:
            pair = _beats_baseline(ev, evaluation, metric, setting, init)
            if pair is not None:
                contrasts.append(_diff(f"{evaluation}{'-' + setting if setting else ''} {metric}", *pair))
        if named and len(contrasts) == before:
            missing.append(evaluation)
    if not contrasts:
        return f"needs a transfer evaluation of the base run and of the {init} baseline"
    evidence = "; ".join(f"{c.label} {c.point():+.2f}" for c in contrasts)
    return Test(contrasts, evidence + (f"; not run: {', '.join(missing)}" if missing else ""))


def transfer_beats_scratch(ev: Evidence) -> Test | str:
    """MAE transfers better than a random init (our baseline; the paper has no scratch transfer rows)."""
    return _transfer_beats(ev, "scratch")


def transfer_beats_supervised(ev: Evidence) -> Test | str:
    """MAE transfers better than supervised pretraining in detection and segmentation (Tables 4, 5: ours = the
    from-scratch fine-tuned encoder on the same data; the paper's = supervised ImageNet-1K pretraining). Table 6
    (classification transfer) compares with other methods' published numbers, not with supervised
    pretraining, so classification transfer is not part of this claim."""
    return _transfer_beats(ev, "supervised", TRANSFER[:2], named=True)


def one_block_far_above_linear(ev: Evidence) -> Test | str:
    """Fine-tuning only the last block lifts accuracy far above linear probing: it recovers at least half of
    the gap between linear probing and full fine-tuning (the paper: 66 %). Margin = 1-block top-1 − the
    midpoint of linear probing and full fine-tuning."""
    base = ev.base_rows if len(ev.frame) else None
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
    con = Contrast("1 block − (lin + ft)/2", ((1.0, one), (-0.5, lin), (-0.5, ft[0])))
    # 1 block tunes the probe's features and starts from its head: below the probe, it did not converge
    check = Contrast("1 block − lin", ((1.0, one), (-1.0, lin)))
    return Test(
        [con], f"lin {lin.point:.2f} → 1 block {one.point:.2f} (full ft {ft[0].point:.2f}{frac})", checks=(check,)
    )


def longer_schedules_keep_improving(ev: Evidence) -> Test | str:
    """The longest pretraining schedule beats every shorter one, in linear probing and fine-tuning (Fig. 7):
    one contrast per (evaluation, shorter schedule)."""
    contrasts, parts = [], []
    for kind in ("lin", "ft"):
        c = sorted(ev.cells(["pretrain_epochs"], kind), key=lambda x: float(x.key[0]))
        if len(c) < 2:
            continue
        contrasts += [_diff(f"{kind} {int(c[-1].key[0])}ep−{int(x.key[0])}ep", c[-1], x) for x in c[:-1]]
        parts.append(f"{kind}: " + _fmt(c, lambda k: f"{int(k[0])}ep"))
    if not contrasts:
        return "needs two or more pretraining schedules"
    return Test(contrasts, "; ".join(parts))


CLAIMS: tuple[tuple[str, str, Callable[[Evidence], Test | str]], ...] = (
    (
        "high_mask_ratio",
        "A high mask ratio is best for linear probing: 75% beats every ratio below 60% (Fig. 5)",
        high_mask_ratio_best_for_linear,
    ),
    (
        "ratio_ft_insensitive",
        "Fine-tuning is robust to the mask ratio: no ratio in 40–80% more than 0.5 points below 75% (Fig. 5)",
        ft_works_over_wide_ratio_range,
    ),
    (
        "decoder_depth",
        "A deeper decoder helps linear probing more than fine-tuning (Table 1a)",
        decoder_depth_matters_more_for_linear,
    ),
    (
        "decoder_width",
        "A wider decoder helps linear probing more than fine-tuning (Table 1b)",
        decoder_width_matters_more_for_linear,
    ),
    ("mask_token", "A mask token in the encoder is worse for linear probing (Table 1c)", mask_token_worse_for_linear),
    ("norm_pixels", "Normalized pixels are a better target than raw pixels (Table 1d)", norm_pixels_at_least_pixels),
    ("pca_target", "Normalized pixels are a better target than PCA coefficients (Table 1d)", norm_pixels_beat_pca),
    (
        "token_target",
        "Normalized pixels and dVAE tokens fine-tune alike, within ±0.5 points (Table 1d)",
        tokens_no_better_than_pixels,
    ),
    (
        "aug_robust",
        "Without augmentation fine-tuning loses less than linear probing (Table 1e)",
        aug_robust_under_finetuning,
    ),
    ("random_sampling", "Random sampling is better than block and grid sampling (Table 1f)", random_sampling_best),
    ("lin_vs_random", "MAE features beat a random-init encoder under a linear probe", features_beat_random_init),
    ("mae_vs_scratch", "MAE pretraining beats training from scratch (Table 3)", mae_beats_scratch),
    (
        "transfer_vs_supervised",
        "MAE transfers better than supervised pretraining in detection and segmentation (Tables 4, 5)",
        transfer_beats_supervised,
    ),
    ("transfer_vs_scratch", "MAE transfers better than a random init (transfer, our baseline)", transfer_beats_scratch),
    (
        "one_block",
        "Fine-tuning one block recovers at least half of the linear-to-full gap (Fig. 9)",
        one_block_far_above_linear,
    ),
    ("longer_schedule", "Longer pretraining keeps improving accuracy (Fig. 7)", longer_schedules_keep_improving),
)


# --------------------------------------------------------------------------------------------- deciding
def check_claims(
    frame: pd.DataFrame,
    replicates: dict | None = None,
    with_paper: bool = True,
    n_boot: int | None = None,
    fragile: bool = True,
) -> pd.DataFrame:
    """One row per claim: the Holm-adjusted and the raw verdict, p-values, the deciding contrast with its 95 %
    interval and df, seeds and where their variance comes from, fragility (``fragile=False``: not checked), the
    evidence (+ the paper's margin)."""
    ours_ev = Evidence(frame, replicates, n_boot)
    paper_ev = Evidence(paper_as_runs(), None, 0) if with_paper else None
    records = []
    for cid, text, fn in CLAIMS:
        test = fn(ours_ev)
        ours = decide(test, ours_ev)
        rec = {
            "id": cid,
            "claim": text,
            "verdict": ours.verdict,
            "p_value": ours.p_value,
            "rule": ours.rule,
            "margin": ours.margin,
            "ci_lo": ours.lo,
            "ci_hi": ours.hi,
            "contrast": ours.contrast,
            "df": ours.df,
            "seeds": ours.seeds,
            "seed_var": ours.seed_var,
            "n_val": ours.n_val,
            "fragile": fragility(fn, test, ours, ours_ev) if fragile else "",
            "evidence": ours.evidence,
        }
        if paper_ev is not None:
            theirs = fn(paper_ev)
            rec["paper_margin"] = theirs.point_margin if isinstance(theirs, Test) else math.nan
        records.append(rec)
    result = pd.DataFrame(records)
    result.insert(result.columns.get_loc("p_value") + 1, "p_holm", stats.holm(result["p_value"]))
    result.insert(
        result.columns.get_loc("verdict"),
        "verdict_holm",
        [
            v if v not in (HOLDS, FAILS) or p < ALPHA else INCONCLUSIVE
            for v, p in zip(result["verdict"], result["p_holm"])
        ],
    )
    return result


# --------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", required=True, help="results/summary/runs.csv")
    parser.add_argument(
        "--replicates",
        default=None,
        help=f"bootstrap replicates (default: {REPLICATES} beside --summary; without it every verdict is inconclusive)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="results/tables/claims.csv (or .md): writes claims.csv and claims.md there; "
        "a path without extension is a folder that receives claims.csv and claims.md",
    )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    frame = read_summary(args.summary)
    replicates = read_replicates(args.replicates or Path(args.summary).with_name(REPLICATES))
    result = check_claims(frame, replicates)
    write_claims(result, args.out)
    for r in result.itertuples():
        log.info(
            "%-22s %-12s p=%s %+.2f %s %s",
            r.id,
            r.verdict_holm,
            fmt_p(r.p_value),
            r.margin,
            fmt_interval(r.ci_lo, r.ci_hi),
            r.evidence,
        )
    return 0
