"""The paper's published numbers (shipped as ``mae/report/paper_results.csv``) and the paper's rows recast as
runs of ours (setting labels mapped to knobs by :mod:`mae.registry.ablations`).

The CSV is read through :mod:`importlib.resources` and never edited. Columns: ``table, setting_group, setting,
model, metric, value, status, source``. Metrics used here: ``ft_top1`` (end-to-end fine-tuning), ``lin_top1``
(linear probing), ``top1`` (partial fine-tuning / transfer), ``ap_box``, ``ap_mask``, ``miou``, ``hours``,
``speedup``, ``flops_rel``.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import pandas as pd

from mae.registry.ablations import ABLATIONS
from mae.registry.knobs import KNOBS

PAPER_CSV = "paper_results.csv"

#: our model name -> the paper's model row. Models smaller than ViT-B compare with ViT-L/16, the model of
#: the paper's ablations (Table 1, Figures 5/7/9).
PAPER_MODEL_OF = {
    "mae_vit_base_patch16": "ViT-B/16",
    "mae_vit_large_patch16": "ViT-L/16",
    "mae_vit_huge_patch14": "ViT-H/14",
}
DEFAULT_PAPER_MODEL = "ViT-L/16"


def paper_model_for(model: str | None) -> str:
    """The paper's model row that our model is compared with."""
    return PAPER_MODEL_OF.get(str(model), DEFAULT_PAPER_MODEL)


@functools.lru_cache(maxsize=1)
def _load() -> pd.DataFrame:
    with resources.files("mae.report").joinpath(PAPER_CSV).open("r", encoding="utf-8") as fh:
        frame = pd.read_csv(fh)
    frame["value"] = pd.to_numeric(frame["value"], errors="raise")
    return frame


def load_paper() -> pd.DataFrame:
    """All of the paper's numbers as a DataFrame (a fresh copy: callers may modify it)."""
    return _load().copy()


def paper_rows(table: str, model: str | None = None, metric: str | None = None) -> pd.DataFrame:
    """The rows of one paper table (``'Table 1a'``, ``'Fig 5'`` …), optionally one model / metric only."""
    frame = _load()
    sel = frame["table"] == table
    if model is not None:
        sel &= frame["model"] == model
    if metric is not None:
        sel &= frame["metric"] == metric
    return frame[sel].copy()


def paper_value(table: str, setting: str, metric: str, model: str | None = None) -> float:
    """One paper number, or NaN when the paper has none for that table/setting/metric/model."""
    rows = paper_rows(table, model=model, metric=metric)
    rows = rows[rows["setting"] == setting]
    return float(rows["value"].iloc[0]) if len(rows) else float("nan")


def _after_eq(setting: str) -> str:
    return setting.split("=")[1]


#: the paper's default setting (Table 1 baselines: pixels w/o norm, decoder 8 x 512, 800 epochs)
PAPER_BASE = dict(
    dataset="IN1K",
    img_size=224,
    patch_size=16,
    mask_ratio=0.75,
    decoder_depth=8,
    decoder_width=512,
    mask_token_in_encoder=False,
    target="pixel",
    aug="crop_rand",
    sampling="random",
    pretrain_epochs=800,
    seed=0,
)
_EVAL_OF = {"ft_top1": "finetune", "lin_top1": "linprobe"}
#: paper table -> the ablation with runs of its own (Table 7 shows Table 1d's runs: not a row set of its own)
_ABLATION_OF = {a.paper_table: a for a in ABLATIONS.values() if not a.runs_of}


def _ablation_row(r: Any, row: dict) -> dict | None:
    """Tables 1a-f, Figs. 5 and 7: the ablation spec parses the paper's label into knobs."""
    spec = _ABLATION_OF[r.table]
    values = spec.from_paper(r.setting) if r.metric in _EVAL_OF else None
    if values is None:
        return None
    knobs = {KNOBS[k].column: v for k, v in values.items()}
    return {
        **row,
        **knobs,
        "run": "_".join(f"{k}-{v}" for k, v in knobs.items()),
        "eval": _EVAL_OF[r.metric],
        "tables": spec.id,
        "top1": r.value,
    }


def _fig9_row(r: Any, row: dict) -> dict | None:
    """Fig. 9: the MAE curve's block counts as partial fine-tuning of the base run."""
    if not (r.setting.startswith("blocks=") and r.model.startswith("MAE ")):
        return None
    return {
        **row,
        "run": "base",
        "eval": "partial_ft",
        "eval_setting": _after_eq(r.setting),
        "tables": "fig9",
        "top1": r.value,
    }


def _table3_row(r: Any, row: dict) -> dict | None:
    """Table 3: scratch vs MAE fine-tuning (the paper's MAE entry is the 1600-epoch, normalised-pixel model)."""
    if r.metric != "ft_top1":
        return None
    if r.setting.startswith("method=scratch"):
        return {**row, "run": "scratch", "eval": "finetune", "init": "scratch", "tables": "3", "top1": r.value}
    if r.setting.startswith("method=MAE;"):
        return {
            **row,
            "run": "table3-mae",
            "eval": "finetune",
            "target": "norm_pixel",
            "pretrain_epochs": 1600,
            "tables": "3",
            "top1": r.value,
        }
    return None


def _transfer_row(r: Any, row: dict) -> dict | None:
    """Tables 4, 5: MAE and supervised pretraining, detection AP box / segmentation mIoU."""
    if r.metric not in ("ap_box", "miou") or not r.setting.startswith(("method=MAE;", "method=supervised;")):
        return None
    init = "mae" if r.setting.startswith("method=MAE;") else "supervised"
    return {
        **row,
        "run": "base" if init == "mae" else init,
        "init": init,
        "tables": r.table[-1],
        "eval": "transfer_det" if r.table == "Table 4" else "transfer_seg",
        r.metric: r.value,
    }


#: the paper's table -> how one of its numbers becomes a runs.csv row (each table owns its label mapping)
_ROW_OF = {
    **{table: _ablation_row for table in _ABLATION_OF},
    "Fig 9": _fig9_row,
    "Table 3": _table3_row,
    "Table 4": _transfer_row,
    "Table 5": _transfer_row,
}


def _paper_row(r: Any, base: dict) -> dict | None:
    """One paper number as a runs.csv row (None when it is not one the claims read)."""
    row_of = _ROW_OF.get(r.table)
    return row_of(r, dict(eval_setting="", init="mae", **base)) if row_of else None


def paper_as_runs(model: str = DEFAULT_PAPER_MODEL) -> pd.DataFrame:
    """The paper's numbers recast as rows of our runs.csv (one row per setting × evaluation).

    Lets the claim checks run on the paper's own numbers (their margins appear beside ours) and documents
    the mapping between the paper's labels and our knobs (:data:`mae.registry.ablations.ABLATIONS`).
    """
    base = {"model": model, **PAPER_BASE}
    rows = []
    for r in _load().itertuples(index=False):
        if r.model == model or (r.table == "Fig 9" and r.model.startswith("MAE ")):
            row = _paper_row(r, base)
            if row is not None:
                rows.append(row)
    frame = pd.DataFrame(rows)
    # Pretraining speed (Table 2): images/s relative to the encoder with mask tokens, from the hours.
    t2 = paper_rows("Table 2", model=model, metric="hours")
    hours = {s: v for s, v in zip(t2["setting"], t2["value"])}
    enc = model.split("/")[0]
    speed = [
        ("mask_token-True", {"mask_token_in_encoder": True}, hours.get(f"encoder={enc}, w/ [M]; dec_depth=8")),
        ("mask_token-False", {}, hours.get(f"encoder={enc}; dec_depth=8")),
        ("decoder_depth-1", {"decoder_depth": 1}, hours.get(f"encoder={enc}; dec_depth=1")),
    ]
    for run, knobs, h in speed:
        if h is None:
            continue
        epochs = 800
        rows_ = dict(
            run=run,
            eval="pretrain",
            eval_setting="",
            init="mae",
            **{**base, **knobs},
            tables="2",
            wall_s=h * 3600.0,
            img_s=1_281_167 * epochs / (h * 3600.0),
            epochs=epochs,
        )
        frame = pd.concat([frame, pd.DataFrame([rows_])], ignore_index=True)
    return frame
