"""Tables 3–6: MAE beside the other initialisations of the same encoder (from scratch, supervised).

:func:`init_table` is one evaluation of the base run beside the baselines of the summary, with the paper's
methods beside ours (Table 3: fine-tuning vs scratch, Table 4: detection, Table 5: segmentation transfer);
:func:`table6` is classification transfer per dataset, ours and the paper's listed apart.
:func:`mae.report.tables.build_tables` builds them with the other tables of ``mae tables``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mae.report import paper as P
from mae.report.evidence import Evidence
from mae.report.runs_csv import base_run, differs_only_in, status_of
from mae.report.table_render import CI_NOTE, CI_SUFFIX, Table, not_run_text, scale_text

# --------------------------------------------------------------------------------------------- inits
INIT_LABELS = {"mae": "MAE (ours, base run)", "scratch": "scratch", "supervised": "supervised"}
PAPER_METHOD = {"mae": "method=MAE", "scratch": "method=scratch", "supervised": "method=supervised"}


def init_table(
    evidence: Evidence,
    *,
    id_: str,
    stem: str,
    title: str,
    paper_table: str,
    ev: str,
    metrics: list[tuple[str, str, str]],
    inits: tuple[str, ...],
    paper_model: str,
    scale: dict[str, Any],
    paper_epochs: int | str = 1600,
) -> Table:
    """MAE (base run) vs other inits on one evaluation; the paper's methods beside ours."""
    frame = evidence.frame
    base = base_run(frame)
    records = []
    paper = P.paper_rows(paper_table, model=paper_model)
    settings = list(dict.fromkeys(paper["setting"]))
    used: set[str] = set()
    missing, status = [], {}
    for init in inits:
        if not len(frame):
            sel = frame
        elif init == "mae":
            sel = frame[differs_only_in(frame, [])] if base is not None else frame.iloc[0:0]
        else:
            sel = frame[frame["init"] == init]
        sel = sel[sel["eval"] == ev] if len(sel) else sel
        psetting = next((s for s in settings if s.split(";")[0].startswith(PAPER_METHOD[init])), None)
        rec: dict[str, Any] = {"init": INIT_LABELS[init], "paper setting": psetting or ""}
        for metric, paper_metric, label in metrics:
            cell = evidence.table(ev, metric, [], sel.index) if len(sel) else pd.DataFrame()
            rec[f"{label} ours"] = float(cell["mean"].iloc[0]) if len(cell) else math.nan
            rec[f"{label}{CI_SUFFIX}"] = float(cell["ci"].iloc[0]) if len(cell) else math.nan
            pv = paper[(paper["setting"] == psetting) & (paper["metric"] == paper_metric)]["value"]
            rec[f"{label} paper"] = float(pv.iloc[0]) if len(pv) else math.nan
        rec["seeds"] = float(sel["seed"].nunique()) if len(sel) and sel["seed"].notna().any() else math.nan
        has = any(not math.isnan(rec[f"{label} ours"]) for _, _, label in metrics)
        why = "" if has else status_of(sel, ev)
        if why:  # nothing ran: no seeds
            rec["seeds"] = math.nan
        rec["note"] = ("" if psetting else "not in paper") if has else why or "not run"
        if why:
            status[INIT_LABELS[init]] = why
        elif not has:
            missing.append(INIT_LABELS[init])
        if psetting:
            used.add(psetting)
        records.append(rec)
    for s in settings:
        if s in used:
            continue
        rec = {"init": "", "paper setting": s, "note": "paper only"}
        for _, paper_metric, label in metrics:
            pv = paper[(paper["setting"] == s) & (paper["metric"] == paper_metric)]["value"]
            rec[f"{label} ours"] = math.nan
            rec[f"{label} paper"] = float(pv.iloc[0]) if len(pv) else math.nan
        records.append(rec)
    cols = [
        "init",
        "paper setting",
        *[f"{label}{side}" for _, _, label in metrics for side in (" ours", CI_SUFFIX, " paper")],
        "seeds",
        "note",
    ]
    data = pd.DataFrame(records).reindex(columns=cols)
    for c in cols[2:-1]:
        data[c] = pd.to_numeric(data[c], errors="coerce")
    caption = scale_text(scale, paper_model, paper_epochs) + CI_NOTE + not_run_text(status)
    if missing:
        caption += " Missing from our summary: " + ", ".join(missing) + "."
    return Table(id_, stem, title, data, caption, missing + list(status))


def table6(evidence: Evidence, paper_model: str, scale: dict[str, Any]) -> Table:
    """Classification transfer: our transfer datasets (per init) and the paper's datasets (paper only)."""
    frame = evidence.frame
    records = []
    sub = frame[frame["eval"] == "transfer_cls"] if len(frame) else frame
    base = base_run(frame)
    if len(sub):
        mae_rows = sub[differs_only_in(sub, [])] if base is not None else sub.iloc[0:0]
        other = sub[sub["init"] != "mae"]
        for part in (mae_rows, other):
            for (init, ds), g in part.groupby(["init", "eval_setting"], sort=True):
                cell = evidence.table("transfer_cls", "top1", [], g.index, ds)
                records.append(
                    {
                        "dataset": ds,
                        "init": INIT_LABELS.get(init, init),
                        "paper setting": "",
                        "top-1 ours": g["top1"].mean(),
                        f"top-1{CI_SUFFIX}": float(cell["ci"].iloc[0]) if len(cell) else math.nan,
                        "top-1 paper": math.nan,
                        "seeds": float(g["seed"].nunique()),
                        "note": "not in paper",
                    }
                )
    paper = P.paper_rows("Table 6", model=paper_model, metric="top1")
    for s, v in zip(paper["setting"], paper["value"]):
        records.append(
            {
                "dataset": "",
                "init": "",
                "paper setting": s,
                "top-1 ours": math.nan,
                "top-1 paper": v,
                "seeds": math.nan,
                "note": "paper only",
            }
        )
    cols = ["dataset", "init", "paper setting", "top-1 ours", f"top-1{CI_SUFFIX}", "top-1 paper", "seeds", "note"]
    data = pd.DataFrame(records).reindex(columns=cols)
    for c in ("top-1 ours", f"top-1{CI_SUFFIX}", "top-1 paper", "seeds"):
        data[c] = pd.to_numeric(data[c], errors="coerce")
    missing = [] if len(sub) else ["classification transfer (transfer_cls)"]
    caption = (
        scale_text(scale, paper_model, 1600)
        + CI_NOTE
        + (
            " Our transfer datasets differ from the paper's (iNaturalist, Places), so the two sides are listed "
            "separately."
        )
    )
    if missing:
        caption += " Missing from our summary: " + ", ".join(missing) + "."
    return Table("6", "table6_classification", "Table 6: classification transfer", data, caption, missing)
