"""The paper's tables with our numbers beside the paper's (``mae tables``).

Every table is written as CSV, Markdown and LaTeX (booktabs) under ``--out``; each metric has an ``ours``
column and, adjacent to it, a ``paper`` column. Rows: our settings mapped to the paper's setting labels
(``decoder_depth=8`` ↔ ``depth=8``), our settings the paper did not test (``not in paper``) and the paper's
settings we did not run (``paper only``). A table whose runs are absent from the summary is still written,
with the paper's rows and a note naming what is missing; an evaluation the data cannot give (the summary's
``status``, e.g. an image folder without labels) keeps our settings as rows noted ``not run (no labels)``. The
caption states the scale of our runs.

Files (stems): table1a_decoder_depth, table1b_decoder_width, table1c_mask_token, table1d_target,
table1e_augmentation, table1f_mask_sampling, table2_wall_clock, table3_scratch_vs_mae, table4_detection,
table5_segmentation, table6_classification, table7_pixels_vs_tokens — plus ``tables.md`` with all of them.

The ablation tables (1a–f, 7) and Table 2 are built here, Tables 3–6 in :mod:`mae.report.baseline_tables`;
:mod:`mae.report.table_render` renders them.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from mae.errors import UserError
from mae.registry.ablations import ABLATIONS, Ablation
from mae.registry.knobs import KNOBS
from mae.report import paper as P
from mae.report.baseline_tables import init_table, table6
from mae.report.evidence import Evidence
from mae.report.replicates import REPLICATES, read_replicates
from mae.report.runs_csv import (
    STATUS,
    ablation_mask,
    base_knobs,
    differs_only_in,
    read_summary,
    seed_mean,
    status_of,
    table_runs,
)
from mae.report.table_render import CI_NOTE, CI_SUFFIX, Table, not_run_text, scale_text
from mae.utils.io import atomic_path, atomic_write_text

log = logging.getLogger("mae.report.tables")


# --------------------------------------------------------------------------------------------- scale
def our_scale(frame: pd.DataFrame) -> dict[str, Any]:
    knobs = base_knobs(frame)
    seeds = frame.loc[differs_only_in(frame, []), "seed"].dropna().nunique() if len(frame) else 0
    return {
        "model": knobs.get("model", "?"),
        "dataset": knobs.get("dataset", "?"),
        "epochs": knobs.get("pretrain_epochs", "?"),
        "seeds": int(seeds),
    }


# --------------------------------------------------------------------------------------------- ablations
#: Tables 1a-f (the ablations with a table of their own and runs of their own)
TABLE1 = tuple(a for a in ABLATIONS.values() if a.stem and not a.runs_of)


def _paper_pivot(table: str, model: str, metrics: list[str]) -> pd.DataFrame:
    rows = P.paper_rows(table, model=model)
    rows = rows[rows["metric"].isin(metrics)]
    if not len(rows):
        return pd.DataFrame(columns=["setting", *metrics])
    order = list(dict.fromkeys(rows["setting"]))
    piv = rows.pivot_table(index="setting", columns="metric", values="value", aggfunc="first")
    piv = piv.reindex(index=order, columns=metrics).reset_index()
    piv.columns.name = None
    return piv


def ablation_table(evidence: Evidence, spec: Ablation, paper_model: str, scale: dict[str, Any]) -> Table:
    frame = evidence.frame
    knobs = list(spec.columns)
    rows = table_runs(frame, spec.runs_of or spec.id, knobs) if len(frame) else frame
    ours: pd.DataFrame | None = None
    for ev, metric, _, label in spec.metrics:
        m = (
            evidence.table(ev, metric, knobs, rows.index)
            if len(rows)
            else pd.DataFrame(columns=[*knobs, "mean", "ci", "n"])
        )
        m = m.rename(columns={"mean": f"{label} ours", "ci": f"{label}{CI_SUFFIX}", "n": f"_n_{label}"})
        ours = m if ours is None else ours.merge(m, on=knobs, how="outer")
    assert ours is not None
    # our settings whose evaluation did not run (no labels): rows without values, the note says why
    status = {label: status_of(rows, ev) for ev, _, _, label in spec.metrics}
    if any(status.values()):
        ours = ours.merge(rows.loc[rows[STATUS].notna(), knobs].drop_duplicates(), on=knobs, how="outer")
    ncols = [c for c in ours.columns if c.startswith("_n_")]
    ours["seeds"] = ours[ncols].max(axis=1) if ncols and len(ours) else pd.Series(dtype="float64")
    ours = ours.drop(columns=ncols)
    ours["paper setting"] = (
        [spec.to_paper(*vals) for vals in ours[knobs].itertuples(index=False)]
        if len(ours)
        else pd.Series(dtype="object")
    )
    paper_metrics = [pm for _, _, pm, _ in spec.metrics]
    pp = _paper_pivot(spec.paper_table, paper_model, paper_metrics)
    pp = pp.rename(columns={pm: f"{label} paper" for _, _, pm, label in spec.metrics}).rename(
        columns={"setting": "paper setting"}
    )
    merged = (
        ours.merge(pp, on="paper setting", how="outer", indicator=True) if len(ours) else pp.assign(_merge="right_only")
    )
    # order: paper order first (our rows at the paper's position), then ours that are not in the paper
    paper_order = {s: i for i, s in enumerate(pp["paper setting"])}
    merged["_order"] = merged["paper setting"].map(lambda s: paper_order.get(s, len(paper_order)))
    sort_cols = ["_order", *[k for k in knobs if k in merged]]
    merged = merged.sort_values(sort_cols, kind="stable", na_position="last")
    merged["note"] = merged["_merge"].map({"both": "", "left_only": "not in paper", "right_only": "paper only"})
    why = "; ".join(dict.fromkeys(v for v in status.values() if v))
    if why:
        empty = merged[[f"{label} ours" for *_, label in spec.metrics]].isna().all(axis=1) & merged["_merge"].ne(
            "right_only"
        )
        merged["note"] = [f"{n}; {why}" if n and e else why if e else n for n, e in zip(merged["note"], empty)]
    # display columns for our setting
    display = []
    for vals in merged[knobs].itertuples(index=False) if all(k in merged for k in knobs) else []:
        if any(v is pd.NA or (isinstance(v, float) and math.isnan(v)) for v in vals):
            display.append(tuple("" for _ in knobs))
        else:
            display.append(spec.show(*vals))
    out = (
        pd.DataFrame(display, columns=list(spec.headers), index=merged.index)
        if display
        else pd.DataFrame({h: [""] * len(merged) for h in spec.headers}, index=merged.index)
    )
    out["paper setting"] = merged["paper setting"]
    for _, _, _, label in spec.metrics:
        for col in (f"{label} ours", f"{label}{CI_SUFFIX}", f"{label} paper"):
            out[col] = pd.to_numeric(merged[col], errors="coerce") if col in merged else float("nan")
    out["seeds"] = pd.to_numeric(merged.get("seeds"), errors="coerce") if "seeds" in merged else float("nan")
    out["note"] = merged["note"]
    out = out.reset_index(drop=True)
    if spec.id == "1c":
        out = _add_time_rel(out, frame, rows)
    missing = [s for s in out.loc[out["note"] == "paper only", "paper setting"].astype(str)]
    no_values = [
        f"{label} ({ev})" for ev, _, _, label in spec.metrics if out[f"{label} ours"].isna().all() and not status[label]
    ]
    caption = scale_text(scale, paper_model) + CI_NOTE
    if missing:
        caption += " Paper settings not run: " + ", ".join(missing) + "."
    caption += not_run_text({f"{label} ({ev})": status[label] for ev, _, _, label in spec.metrics})
    if no_values:
        caption += " No results of ours yet for: " + ", ".join(no_values) + "."
    return Table(spec.id, spec.stem, spec.title, out, caption, missing + no_values)


def _add_time_rel(out: pd.DataFrame, frame: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Table 1c: pretraining time per image relative to the encoder without mask tokens (ours) beside the
    paper's relative FLOPs."""
    pre = rows[(rows["eval"] == "pretrain")] if len(rows) else rows
    sp = seed_mean(pre, ["mask_token_in_encoder"], "img_s") if len(pre) else pd.DataFrame()
    ours = {}
    if len(sp):
        ref = sp.loc[sp["mask_token_in_encoder"] == False, "mean"]  # noqa: E712
        if len(ref) and ref.iloc[0] > 0:
            for flag, speed in zip(sp["mask_token_in_encoder"], sp["mean"]):
                ours[KNOBS["mask_token_in_encoder"].label(bool(flag))] = (
                    float(ref.iloc[0]) / float(speed) if speed > 0 else math.nan
                )
    pp = _paper_pivot("Table 1c", P.DEFAULT_PAPER_MODEL, ["flops_rel"])
    paper_flops = dict(zip(pp["paper setting"] if "paper setting" in pp else pp["setting"], pp["flops_rel"]))
    pos = out.columns.get_loc("seeds")
    out.insert(pos, "time rel. ours", out["paper setting"].map(lambda s: ours.get(s, math.nan)).astype(float))
    out.insert(
        pos + 1, "FLOPs rel. paper", out["paper setting"].map(lambda s: paper_flops.get(s, math.nan)).astype(float)
    )
    return out


# --------------------------------------------------------------------------------------------- Table 2
def table2(frame: pd.DataFrame, paper_model: str, scale: dict[str, Any]) -> Table:
    """Pretraining wall-clock: encoder with/without mask tokens, decoder depth base vs 1 (ours: pretrain
    wall_s and img_s; speedup = img/s relative to the encoder with mask tokens)."""
    base = base_knobs(frame)
    enc = paper_model.split("/")[0]
    labels = {
        "wM": f"encoder={enc}, w/ [M]; dec_depth=8",
        "base": f"encoder={enc}; dec_depth=8",
        "d1": f"encoder={enc}; dec_depth=1",
    }
    cases = []
    if len(frame) and base:
        rel = ablation_mask(frame, ["1c", "1a"], ["mask_token_in_encoder", "decoder_depth"], base)
        sub = frame[rel]
        bd = base.get("decoder_depth")
        for key, flag, depth in (("wM", True, bd), ("base", False, bd), ("d1", False, 1)):
            if key == "d1" and bd == 1:
                continue
            sel = sub[(sub["mask_token_in_encoder"] == flag) & (sub["decoder_depth"] == depth)]
            cases.append((key, flag, depth, sel))
    paper = _paper_pivot("Table 2", paper_model, ["ft_top1", "hours", "speedup"])
    pmap = {s: r for s, r in zip(paper["setting"], paper.to_dict("records"))}
    records = []
    ref_speed = None
    for key, flag, depth, sel in cases:
        pre = sel[sel["eval"] == "pretrain"]
        ft = sel[sel["eval"] == "finetune"]
        speed = pre["img_s"].mean() if len(pre) else math.nan
        if key == "wM":
            ref_speed = speed
        records.append(
            {
                "case": ("w/ [M]" if flag else "w/o [M]") + f", decoder depth {int(depth)}",
                "paper setting": labels[key],
                "ft top-1 ours": ft["top1"].mean() if len(ft) else math.nan,
                "ft top-1 paper": pmap.get(labels[key], {}).get("ft_top1", math.nan),
                "pretrain wall-clock ours [s]": pre["wall_s"].mean() if len(pre) else math.nan,
                "pretrain wall-clock paper [h]": pmap.get(labels[key], {}).get("hours", math.nan),
                "img/s ours": speed,
                "_speed": speed,
                "speedup paper": pmap.get(labels[key], {}).get("speedup", math.nan),
                "seeds": float(pre["seed"].nunique()) if len(pre) else math.nan,
            }
        )
    for r in records:
        r["speedup ours"] = (r.pop("_speed") / ref_speed) if ref_speed and ref_speed > 0 else math.nan
    done = {r["paper setting"] for r in records if not math.isnan(r["pretrain wall-clock ours [s]"])}
    for s in paper["setting"]:
        if s not in {r["paper setting"] for r in records}:
            rec = pmap[s]
            records.append(
                {
                    "case": "",
                    "paper setting": s,
                    "ft top-1 paper": rec.get("ft_top1"),
                    "pretrain wall-clock paper [h]": rec.get("hours"),
                    "speedup paper": rec.get("speedup"),
                }
            )
    cols = [
        "case",
        "paper setting",
        "ft top-1 ours",
        "ft top-1 paper",
        "pretrain wall-clock ours [s]",
        "pretrain wall-clock paper [h]",
        "img/s ours",
        "speedup ours",
        "speedup paper",
        "seeds",
    ]
    data = pd.DataFrame(records).reindex(columns=cols)
    for c in cols[2:]:
        data[c] = pd.to_numeric(data[c], errors="coerce")
    data["note"] = [
        "" if s in done else ("paper only" if not c else "not run") for s, c in zip(data["paper setting"], data["case"])
    ]
    missing = [s for s in labels.values() if s not in done]
    caption = (
        scale_text(scale, paper_model)
        + not_run_text({"ft top-1": status_of(frame, "finetune", "mae")})
        + (
            " Paper: 128 TPU-v3 cores; ours: wall-clock of our pretraining run, speedup from images/s relative to "
            "the encoder with mask tokens. The paper's dec_depth=8 is our base decoder depth "
            f"({base.get('decoder_depth', '?')})."
        )
    )
    if missing:
        caption += " Not run: " + ", ".join(missing) + "."
    return Table("2", "table2_wall_clock", "Table 2: pretraining wall-clock", data, caption, missing)


# --------------------------------------------------------------------------------------------- all
def build_tables(frame: pd.DataFrame, paper_model: str | None = None, replicates: dict | None = None) -> list[Table]:
    """Every table of the report, in paper order (intervals from ``replicates``, see :mod:`mae.report.evidence`)."""
    evidence = Evidence(frame, replicates)
    frame = evidence.frame
    scale = our_scale(frame)
    paper_model = paper_model or P.paper_model_for(scale["model"])
    abl_model = P.DEFAULT_PAPER_MODEL if not len(P.paper_rows("Table 1a", model=paper_model)) else paper_model
    tables = [ablation_table(evidence, spec, abl_model, scale) for spec in TABLE1]
    t2_model = paper_model if len(P.paper_rows("Table 2", model=paper_model)) else P.DEFAULT_PAPER_MODEL
    tables.append(table2(frame, t2_model, scale))
    tables.append(
        init_table(
            evidence,
            id_="3",
            stem="table3_scratch_vs_mae",
            title="Table 3: MAE vs scratch fine-tuning",
            paper_table="Table 3",
            ev="finetune",
            metrics=[("top1", "ft_top1", "ft top-1")],
            inits=("scratch", "mae"),
            paper_model=paper_model,
            scale=scale,
        )
    )
    tables.append(
        init_table(
            evidence,
            id_="4",
            stem="table4_detection",
            title="Table 4: detection transfer (Mask R-CNN)",
            paper_table="Table 4",
            ev="transfer_det",
            metrics=[("ap_box", "ap_box", "AP box"), ("ap_mask", "ap_mask", "AP mask")],
            inits=("mae", "scratch", "supervised"),
            paper_model=paper_model,
            scale=scale,
        )
    )
    tables.append(
        init_table(
            evidence,
            id_="5",
            stem="table5_segmentation",
            title="Table 5: semantic segmentation transfer",
            paper_table="Table 5",
            ev="transfer_seg",
            metrics=[("miou", "miou", "mIoU")],
            inits=("mae", "scratch", "supervised"),
            paper_model=paper_model,
            scale=scale,
        )
    )
    tables.append(table6(evidence, paper_model, scale))
    t7_model = paper_model if len(P.paper_rows("Table 7", model=paper_model)) else P.DEFAULT_PAPER_MODEL
    tables.append(ablation_table(evidence, ABLATIONS["7"], t7_model, scale))
    return tables


def write_tables(tables: list[Table], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for t in tables:
        if "seeds" in t.data:
            t.data["seeds"] = pd.to_numeric(t.data["seeds"], errors="coerce").round().astype("Int64")
        with atomic_path(out_dir / f"{t.stem}.csv", suffix=".csv") as tmp:
            t.data.to_csv(tmp, index=False)
        atomic_write_text(out_dir / f"{t.stem}.md", t.markdown())
        atomic_write_text(out_dir / f"{t.stem}.tex", t.latex())
        written += [out_dir / f"{t.stem}.{ext}" for ext in ("csv", "md", "tex")]
        if t.missing:
            log.info("%s: missing %s", t.stem, ", ".join(t.missing))
    atomic_write_text(out_dir / "tables.md", "\n".join(t.markdown() for t in tables))
    written.append(out_dir / "tables.md")
    return written


TABLE_STEMS = tuple(
    [s.stem for s in TABLE1]
    + [
        "table2_wall_clock",
        "table3_scratch_vs_mae",
        "table4_detection",
        "table5_segmentation",
        "table6_classification",
        ABLATIONS["7"].stem,
    ]
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", required=True, help="results/summary/runs.csv")
    parser.add_argument("--out", required=True, help="output folder (results/tables)")
    parser.add_argument(
        "--replicates",
        default=None,
        help=f"bootstrap replicates for the ± intervals (default: {REPLICATES} beside --summary)",
    )
    parser.add_argument(
        "--paper-model",
        default=None,
        help="paper model row to compare with (default: from our model; ViT-L/16 for small models)",
    )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.paper_model is not None and args.paper_model not in set(P.load_paper()["model"]):
        raise UserError(f"--paper-model {args.paper_model!r} is not a model of the paper (e.g. ViT-B/16, ViT-L/16)")
    frame = read_summary(args.summary)
    replicates = read_replicates(args.replicates or Path(args.summary).with_name(REPLICATES))
    tables = build_tables(frame, args.paper_model, replicates)
    write_tables(tables, args.out)
    log.info("tables: %d written to %s", len(tables), args.out)
    return 0
