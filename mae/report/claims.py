"""Does our study reproduce the paper's claims? (``mae claims``)

Each claim is a small pure function of the summary DataFrame (runs.csv) that returns a :class:`Verdict`:
``holds`` / ``fails`` / ``not run``, our margin (in accuracy points unless said otherwise), the number of seeds
behind it (values are means over seeds) and the numbers it was computed from. The same functions run on the
paper's own numbers (:func:`mae.report.paper.paper_as_runs`), so the paper's margin is printed beside ours.
Nothing is hand-written: a verdict is always computed from the numbers.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from mae.report.paper import paper_as_runs
from mae.report.summary import differs_only_in, read_summary, seed_mean
from mae.report.tables import to_markdown
from mae.utils.io import atomic_path, atomic_write_text

log = logging.getLogger("mae.report.claims")

HOLDS, FAILS, NOT_RUN = "holds", "fails", "not run"
METRIC_OF = {"ft": ("finetune", "top1"), "lin": ("linprobe", "top1")}


@dataclass
class Verdict:
    verdict: str
    margin: float = math.nan
    seeds: int = 0
    evidence: str = ""


def _not_run(why: str) -> Verdict:
    return Verdict(NOT_RUN, math.nan, 0, why)


def cells(frame: pd.DataFrame, knobs: list[str], kind: str, eval_setting: str = "") -> pd.DataFrame:
    """Mean over seeds of ``kind`` (ft | lin | img_s) for the runs that differ from the base only in
    ``knobs``; columns: knobs, mean, std, n."""
    if not len(frame):
        return pd.DataFrame(columns=[*knobs, "mean", "std", "n"])
    ev, metric = METRIC_OF.get(kind, ("pretrain", kind))
    rows = frame[differs_only_in(frame, knobs)]
    rows = rows[(rows["eval"] == ev) & (rows["eval_setting"].fillna("") == eval_setting)]
    return seed_mean(rows, knobs, metric)


def _fmt(values: dict) -> str:
    return ", ".join(f"{k}: {v:.2f}" for k, v in values.items())


def _decide(margin: float, strict: bool = True) -> str:
    return HOLDS if (margin > 0 if strict else margin >= 0) else FAILS


# --------------------------------------------------------------------------------------------- claims
def high_mask_ratio_best_for_linear(frame: pd.DataFrame) -> Verdict:
    """The best linear-probing accuracy is at a high mask ratio (≥ 60 %); margin = best at ≥ 60 % minus best
    below 60 %."""
    c = cells(frame, ["mask_ratio"], "lin").sort_values("mask_ratio")
    high, low = c[c["mask_ratio"] >= 0.6], c[c["mask_ratio"] < 0.6]
    if not len(high) or not len(low):
        return _not_run("needs linear probes at mask ratios both below and at/above 60%")
    margin = float(high["mean"].max() - low["mean"].max())
    values = {f"{float(r) * 100:g}%": float(v) for r, v in zip(c["mask_ratio"], c["mean"])}
    return Verdict(_decide(margin), margin, int(c["n"].min()), "lin top-1 by ratio: " + _fmt(values))


def norm_pixels_at_least_pixels(frame: pd.DataFrame) -> Verdict:
    """Normalised-pixel targets are at least as good as raw pixels (fine-tune and linear probe); margin =
    the smaller of the two differences."""
    margins, seeds, parts = [], [], []
    for kind in ("ft", "lin"):
        c = cells(frame, ["target"], kind).set_index("target")
        if "norm_pixel" in c.index and "pixel" in c.index:
            m = float(c.loc["norm_pixel", "mean"] - c.loc["pixel", "mean"])
            margins.append(m)
            seeds.append(int(min(c.loc["norm_pixel", "n"], c.loc["pixel", "n"])))
            parts.append(f"{kind} norm−pixel {m:+.2f}")
    if not margins:
        return _not_run("needs target=pixel and target=norm_pixel runs")
    margin = min(margins)
    return Verdict(_decide(margin, strict=False), margin, min(seeds), "; ".join(parts))


def random_sampling_best(frame: pd.DataFrame) -> Verdict:
    """Random sampling at the base ratio is at least as good as every block/grid setting (fine-tune and
    linear probe); margin = the smallest difference."""
    base_ratio = _base_value(frame, "mask_ratio")
    margins, seeds, parts = [], [], []
    for kind in ("ft", "lin"):
        c = cells(frame, ["sampling", "mask_ratio"], kind)
        rnd = c[(c["sampling"] == "random") & (c["mask_ratio"].astype(float).sub(base_ratio).abs() < 1e-9)]
        others = c[c["sampling"].isin(["block", "grid"])]
        if not len(rnd) or not len(others):
            continue
        for s, r, v, n in zip(others["sampling"], others["mask_ratio"], others["mean"], others["n"]):
            m = float(rnd["mean"].iloc[0] - v)
            margins.append(m)
            seeds.append(int(min(n, rnd["n"].iloc[0])))
            parts.append(f"{kind} random−{s} {float(r) * 100:g}% {m:+.2f}")
    if not margins:
        return _not_run("needs random and block/grid sampling runs")
    margin = min(margins)
    return Verdict(_decide(margin, strict=False), margin, min(seeds), "; ".join(parts))


def mask_token_slower_and_worse(frame: pd.DataFrame) -> Verdict:
    """An encoder that sees mask tokens is worse for linear probing (margin = lin top-1 without minus with)
    and slower to pretrain (images/s without ÷ with > 1, when measured)."""
    lin = cells(frame, ["mask_token_in_encoder"], "lin")
    lin = {bool(k): (float(v), int(n)) for k, v, n in zip(lin["mask_token_in_encoder"], lin["mean"], lin["n"])}
    if True not in lin or False not in lin:
        return _not_run("needs linear probes with and without mask tokens in the encoder")
    margin = lin[False][0] - lin[True][0]
    speed = cells(frame, ["mask_token_in_encoder"], "img_s")
    speed = {bool(k): float(v) for k, v in zip(speed["mask_token_in_encoder"], speed["mean"])}
    evidence = f"lin w/o−w/ [M] {margin:+.2f}"
    ok = margin > 0
    if True in speed and False in speed and speed[True] > 0:
        ratio = speed[False] / speed[True]
        evidence += f"; pretraining speedup without [M] {ratio:.2f}×"
        ok = ok and ratio > 1
    else:
        evidence += "; pretraining speed not measured"
    return Verdict(HOLDS if ok else FAILS, margin, min(lin[True][1], lin[False][1]), evidence)


def decoder_depth_matters_more_for_linear(frame: pd.DataFrame) -> Verdict:
    """Over the decoder depths we ran, linear probing varies more than fine-tuning; margin = range(lin) −
    range(ft)."""
    ft = cells(frame, ["decoder_depth"], "ft").set_index("decoder_depth")
    lin = cells(frame, ["decoder_depth"], "lin").set_index("decoder_depth")
    depths = sorted(set(ft.index) & set(lin.index))
    if len(depths) < 2:
        return _not_run("needs fine-tune and linear probe at two or more decoder depths")
    r_lin = float(lin.loc[depths, "mean"].max() - lin.loc[depths, "mean"].min())
    r_ft = float(ft.loc[depths, "mean"].max() - ft.loc[depths, "mean"].min())
    margin = r_lin - r_ft
    seeds = int(min(ft.loc[depths, "n"].min(), lin.loc[depths, "n"].min()))
    return Verdict(_decide(margin), margin, seeds,
                   f"depths {', '.join(str(int(d)) for d in depths)}: lin range {r_lin:.2f}, ft range {r_ft:.2f}")


def _beats_scratch(frame: pd.DataFrame, kind: str) -> Verdict:
    """Margin = top-1 of the base run − top-1 of the same evaluation (``kind``: ft | lin) from random init."""
    ev, _ = METRIC_OF[kind]
    mae = cells(frame, [], kind)
    scratch = frame[(frame["init"] == "scratch") & (frame["eval"] == ev)] if len(frame) else frame
    if not len(mae) or not len(scratch) or scratch["top1"].isna().all():
        return _not_run(f"needs a {ev} of the base run and of a random init (scratch)")
    sc = float(scratch["top1"].mean())
    margin = float(mae["mean"].iloc[0]) - sc
    seeds = int(min(mae["n"].iloc[0], scratch["seed"].nunique() or 1))
    return Verdict(_decide(margin), margin, seeds, f"{kind} MAE {float(mae['mean'].iloc[0]):.2f} vs scratch {sc:.2f}")


def mae_beats_scratch(frame: pd.DataFrame) -> Verdict:
    """MAE pretraining then fine-tuning beats training the same model from scratch; margin = ft top-1 MAE
    (base run) − scratch."""
    return _beats_scratch(frame, "ft")


def features_beat_random_init(frame: pd.DataFrame) -> Verdict:
    """A linear probe of the MAE encoder beats a linear probe of the same encoder at random init; margin =
    lin top-1 MAE (base run) − random init. (Not a numbered claim of the paper, which reports no random-init
    probe; it is the first sanity check of any pretraining.)"""
    return _beats_scratch(frame, "lin")


def one_block_far_above_linear(frame: pd.DataFrame) -> Verdict:
    """Fine-tuning only the last block lifts accuracy far above linear probing: it gains, and recovers at
    least half of the gap between linear probing and full fine-tuning (the paper: 66 %). Margin = gain in
    points."""
    one = _partial(frame, "1")
    lin = _partial(frame, "0")
    if lin is None:
        c = cells(frame, [], "lin")
        lin = (float(c["mean"].iloc[0]), int(c["n"].iloc[0])) if len(c) else None
    if one is None or lin is None:
        return _not_run("needs partial fine-tuning of 1 block and a linear probe of the base run")
    gain = one[0] - lin[0]
    ft = cells(frame, [], "ft")
    evidence = f"lin {lin[0]:.2f} → 1 block {one[0]:.2f}"
    ok = gain > 0
    if len(ft) and float(ft["mean"].iloc[0]) > lin[0]:
        frac = gain / (float(ft["mean"].iloc[0]) - lin[0])
        evidence += f" (full ft {float(ft['mean'].iloc[0]):.2f}; {frac * 100:.0f}% of the gap)"
        ok = ok and frac >= 0.5
    return Verdict(HOLDS if ok else FAILS, gain, min(one[1], lin[1]), evidence)


def _partial(frame: pd.DataFrame, blocks: str) -> tuple[float, int] | None:
    if not len(frame):
        return None
    rows = frame[differs_only_in(frame, [])]
    rows = rows[(rows["eval"] == "partial_ft") & (rows["eval_setting"] == blocks)]
    stats = seed_mean(rows, ["eval_setting"], "top1")
    return (float(stats["mean"].iloc[0]), int(stats["n"].iloc[0])) if len(stats) else None


def longer_schedules_keep_improving(frame: pd.DataFrame) -> Verdict:
    """The longest pretraining schedule gives the best accuracy (linear probe and fine-tune); margin = the
    smaller, over the two, of (longest − best shorter schedule)."""
    margins, seeds, parts = [], [], []
    for kind in ("lin", "ft"):
        c = cells(frame, ["pretrain_epochs"], kind).sort_values("pretrain_epochs")
        if len(c) < 2:
            continue
        m = float(c["mean"].iloc[-1] - c["mean"].iloc[:-1].max())
        margins.append(m)
        seeds.append(int(c["n"].min()))
        parts.append(f"{kind}: " + _fmt({f"{int(e)}ep": float(v) for e, v in zip(c["pretrain_epochs"], c["mean"])}))
    if not margins:
        return _not_run("needs two or more pretraining schedules")
    margin = min(margins)
    return Verdict(_decide(margin), margin, min(seeds), "; ".join(parts))


def _base_value(frame: pd.DataFrame, knob: str) -> float:
    from mae.report.summary import base_knobs

    value = base_knobs(frame).get(knob) if len(frame) else None
    return float(value) if value is not None and value is not pd.NA else math.nan


CLAIMS: tuple[tuple[str, str, Callable[[pd.DataFrame], Verdict]], ...] = (
    ("high_mask_ratio", "A high mask ratio (≥60%) is best for linear probing (Fig. 5)",
     high_mask_ratio_best_for_linear),
    ("norm_pixels", "Normalized pixels are at least as good a target as raw pixels (Table 1d)",
     norm_pixels_at_least_pixels),
    ("random_sampling", "Random sampling is at least as good as block and grid sampling (Table 1f)",
     random_sampling_best),
    ("mask_token", "A mask token in the encoder is slower and worse for linear probing (Tables 1c, 2)",
     mask_token_slower_and_worse),
    ("decoder_depth", "Decoder depth matters more for linear probing than for fine-tuning (Table 1a)",
     decoder_depth_matters_more_for_linear),
    ("lin_vs_random", "MAE features beat a random-init encoder under a linear probe", features_beat_random_init),
    ("mae_vs_scratch", "MAE pretraining beats training from scratch (Table 3)", mae_beats_scratch),
    ("one_block", "Fine-tuning one block lifts accuracy far above linear probing (Fig. 9)", one_block_far_above_linear),
    ("longer_schedule", "Longer pretraining keeps improving accuracy (Fig. 7)", longer_schedules_keep_improving),
)


def check_claims(frame: pd.DataFrame, with_paper: bool = True) -> pd.DataFrame:
    """One row per claim: id, claim, verdict, margin, seeds, evidence (+ the paper's margin and verdict)."""
    paper = paper_as_runs() if with_paper else None
    records = []
    for cid, text, fn in CLAIMS:
        ours = fn(frame)
        rec = {"id": cid, "claim": text, "verdict": ours.verdict, "margin": ours.margin,
               "seeds": ours.seeds, "evidence": ours.evidence}
        if paper is not None:
            theirs = fn(paper)
            rec.update(paper_verdict=theirs.verdict, paper_margin=theirs.margin)
        records.append(rec)
    return pd.DataFrame(records)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", required=True, help="results/summary/runs.csv")
    parser.add_argument("--out", required=True,
                        help="results/tables/claims.csv (or .md): writes claims.csv and claims.md there; "
                             "a path without extension is a folder that receives claims.csv and claims.md")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    frame = read_summary(args.summary)
    result = check_claims(frame)
    out = Path(args.out)
    stem = out.with_suffix("") if out.suffix in (".csv", ".md") else out / "claims"
    with atomic_path(stem.with_suffix(".csv"), suffix=".csv") as tmp:
        result.to_csv(tmp, index=False)
    shown = result[["claim", "verdict", "margin", "seeds", "paper_margin", "evidence"]].rename(
        columns={"margin": "our margin", "paper_margin": "paper margin"})
    counts = result["verdict"].value_counts()
    head = (f"# Claims of the paper, checked on our runs\n\nholds: {counts.get(HOLDS, 0)}, fails: "
            f"{counts.get(FAILS, 0)}, not run: {counts.get(NOT_RUN, 0)}. Margins in accuracy points, means over "
            "seeds; the paper's margin is the same computation on the paper's numbers (ViT-L/16).\n\n")
    atomic_write_text(stem.with_suffix(".md"), head + to_markdown(shown) + "\n")
    for r in result.itertuples():
        log.info("%-16s %-8s %s", r.id, r.verdict, r.evidence)
    return 0
