"""runs.csv as the tables, figures and claims read it: its columns and their types, and the rows of a setting.

``mae summarize`` (:mod:`mae.report.summary`) writes runs.csv with the columns :data:`COLUMNS`;
:func:`read_summary` reads it back with stable dtypes (:func:`normalise`) and refuses a malformed one. The
helpers below it (:func:`base_run`, :func:`base_knobs`, :func:`differs_only_in`, :func:`ablation_mask`,
:func:`table_runs`, :func:`seed_mean`, :func:`status_of`) pick the rows of a setting: what the tables, figures,
claims, :mod:`mae.report.evidence` and :mod:`mae.report.simulate` read the summary with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mae.errors import UserError
from mae.registry.knobs import KNOBS as PRETRAIN_KNOBS
from mae.registry.knobs import columns as knob_columns

ID_COLUMNS = ("run", "eval", "eval_setting", "init")
METRICS = (
    "top1",
    "top5",
    "loss",
    "train_loss",
    "ap_box",
    "ap50_box",
    "ap75_box",
    "ap_mask",
    "ap50_mask",
    "ap75_mask",
    "miou",
    "epochs",
    "wall_s",
    "img_s",
    "params",
)
#: metrics with a 95 % interval over val images (``<m>_lo``/``<m>_hi``) and a spread over seeds
#: (``<m>_seed_mean``/``<m>_seed_sd``, ``seeds`` = seeds of the setting)
CI_METRICS = ("top1", "miou", "ap_box", "ap_mask")
CI_COLUMNS = (*(f"{m}_{s}" for m in CI_METRICS for s in ("lo", "hi", "seed_mean", "seed_sd")), "seeds", "n_val")
#: what describes a run in runs.csv: the model and data, then every pretraining knob (by its runs.csv column)
KNOBS = (
    "model",
    "dataset",
    "img_size",
    "patch_size",
    *(k.column for k in PRETRAIN_KNOBS.values() if k.name != "model"),
)
COLUMNS = (*ID_COLUMNS, *KNOBS, "tables", *METRICS, *CI_COLUMNS)
#: an evaluation the study planned that its data cannot give: ``not run (no labels)`` (study.json ``not_run``,
#: :func:`mae.study.not_run`); a column of runs.csv, after ``tables``, only when some row has one
STATUS = "status"
#: runs.csv column -> its type
KNOB_TYPES = {"dataset": str, "img_size": int, "patch_size": int, **{c: k.type for c, k in knob_columns().items()}}


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Give knob columns stable dtypes (nullable ints/floats/bools, strings) so that equality works."""
    frame = frame.copy()
    for col, kind in KNOB_TYPES.items():
        if col not in frame:
            continue
        if kind is int:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").round().astype("Int64")
        elif kind is float:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Float64")
        elif kind is bool:
            frame[col] = frame[col].map(_to_bool).astype("boolean")
    for col in (
        *(c for c, t in KNOB_TYPES.items() if t is str),
        "run",
        "eval",
        "eval_setting",
        "init",
        "tables",
        STATUS,
    ):
        if col in frame:
            frame[col] = frame[col].map(lambda v: None if _missing(v) else str(v)).astype("string")
    frame["eval_setting"] = frame["eval_setting"].fillna("")
    frame["tables"] = frame["tables"].fillna("")
    for col in frame.columns:
        if col not in (*COLUMNS[: len(ID_COLUMNS) + len(KNOBS) + 1], STATUS):
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    return frame


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _to_bool(value: Any) -> Any:
    if _missing(value):
        return pd.NA
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        return pd.NA
    return bool(value)


def read_summary(path: str | Path) -> pd.DataFrame:
    """Read runs.csv (written by :func:`mae.report.summary.collect`) with normalised dtypes; UserError if
    missing/malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"summary not found: {path}")
    try:
        frame = pd.read_csv(path, dtype={"eval_setting": str, "tables": str, STATUS: str})
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame(columns=list(COLUMNS))
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as err:
        raise UserError(f"{path}: not a runs.csv ({str(err).splitlines()[0][:120]})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    missing = [c for c in ("run", "eval", "init") if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    frame = frame.reindex(columns=[*COLUMNS, *[c for c in frame.columns if c not in COLUMNS]])
    if STATUS not in frame:
        frame[STATUS] = pd.NA
    _check_values(frame, path)
    return normalise(frame)


#: what identifies one row of runs.csv: one evaluation of one run (a seed of a setting)
ROW_KEY = ("run", "eval", "eval_setting", "seed")


def _check_values(frame: pd.DataFrame, path: Path) -> None:
    """A metric that is not a finite number, or a knob that is not of its type, names its row and column
    (instead of silently dropping the claims and table rows that read it); a repeated row key is refused too
    (it would be read as two seeds of one setting)."""
    numeric = [c for c in (*METRICS, *CI_COLUMNS) if c in frame]
    numeric += [c for c, t in KNOB_TYPES.items() if t in (int, float) and c in frame]
    for col in numeric:
        values = frame[col]
        parsed = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & (parsed.isna() | np.isinf(parsed.astype("float64")))
        if bad.any():
            i = int(bad.to_numpy().argmax())
            shown = f"{values.iloc[i]!r}" if pd.isna(parsed.iloc[i]) else f"{float(parsed.iloc[i])}"
            what = "is not a number" if pd.isna(parsed.iloc[i]) else "is not finite (a metric is a finite number)"
            raise UserError(
                f"{path}: row {i + 2} ({frame['run'].iloc[i]}, {frame['eval'].iloc[i]}): {col}={shown} {what}"
            )
    key = frame[list(ROW_KEY)].astype("string").fillna("")
    repeated = key.duplicated(keep=False)
    if repeated.any():
        rows = [i + 2 for i in np.flatnonzero(repeated.to_numpy())]
        first = key[repeated].iloc[0]
        rows = [r for r, same in zip(rows, (key[repeated] == first).all(axis=1)) if same]
        shown = ", ".join(f"{c}={first[c]!r}" for c in ROW_KEY)
        raise UserError(
            f"{path}: rows {' and '.join(map(str, rows))} repeat the key ({shown}): one row per run, "
            "evaluation, setting and seed"
        )
    mae = frame["init"].fillna("mae") == "mae"
    for col in (c for c in KNOBS if c in frame and c not in ("dataset", "img_size", "patch_size")):
        bad = mae & frame[col].isna() & frame["eval"].notna()
        if bad.any() and frame.loc[mae, col].notna().any():
            i = int(bad.to_numpy().argmax())
            raise UserError(
                f"{path}: row {i + 2} ({frame['run'].iloc[i]}, {frame['eval'].iloc[i]}): the knob {col} is empty"
            )


def pretraining_knobs() -> tuple[str, ...]:
    """Knobs that define a pretraining setting apart from the seed."""
    return tuple(k for k in KNOBS if k != "seed")


def base_run(frame: pd.DataFrame) -> str | None:
    """The base run: the run named ``base``; else the MAE run tagged with the most tables; else the run
    whose knobs equal the most common value of every knob."""
    mae = frame[frame["init"] == "mae"] if len(frame) else frame
    if not len(mae):
        return None
    names = list(dict.fromkeys(mae["run"]))
    if "base" in names:
        return "base"
    ntab = {r: len([t for t in str(t_).split(";") if t]) for r, t_ in zip(mae["run"], mae["tables"])}
    best = max(names, key=lambda r: ntab.get(r, 0))
    if ntab.get(best, 0) > 0:
        return best
    knobs = base_knobs(frame)
    for name in names:
        row = mae[mae["run"] == name].iloc[0]
        if all(_same(row[k], v) for k, v in knobs.items()):
            return name
    return names[0]


def base_knobs(frame: pd.DataFrame) -> dict[str, Any]:
    """The base setting: the knobs of the run named ``base`` or, without one, the most common value of every
    knob over the MAE runs (one vote per run)."""
    mae = frame[frame["init"] == "mae"].drop_duplicates("run") if len(frame) else frame
    if not len(mae):
        return {}
    if "base" in set(mae["run"]):
        row = mae[mae["run"] == "base"].iloc[0]
        return {k: row[k] for k in pretraining_knobs()}
    out = {}
    for k in pretraining_knobs():
        values = mae[k].dropna()
        out[k] = values.mode().iloc[0] if len(values) else pd.NA
    return out


def _same(a: Any, b: Any) -> bool:
    if _missing(a) and _missing(b):
        return True
    if _missing(a) or _missing(b):
        return False
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) < 1e-9
        except (TypeError, ValueError):
            return False
    return a == b


def differs_only_in(frame: pd.DataFrame, knobs: Iterable[str], base: dict[str, Any] | None = None) -> pd.Series:
    """Boolean mask: MAE rows whose pretraining knobs equal the base except (possibly) ``knobs``."""
    base = base_knobs(frame) if base is None else base
    knobs = set(knobs)
    mask = pd.Series(frame["init"].eq("mae").fillna(False).to_numpy(dtype=bool), index=frame.index)
    for k in pretraining_knobs():
        if k in knobs or k not in base:
            continue
        mask &= frame[k].map(lambda v, b=base[k]: _same(v, b)).astype(bool)
    return mask


def ablation_mask(
    frame: pd.DataFrame, table_ids: Iterable[str], knobs: Iterable[str], base: dict[str, Any] | None = None
) -> pd.Series:
    """Boolean mask: the MAE rows of the runs planned for the ablations ``table_ids`` (``1a``, ``fig5`` …).

    Those are the runs tagged with one of the ids in the ``tables`` column: the planner tags every row of a
    table, its base row included, and an ablation's base may differ from the base run (config
    ``ablation_base``: the paper's Table 1 uses raw pixels, its final runs normalised pixels). When no run is
    tagged (a summary without a study file), the rows that differ from the base only in ``knobs``.
    """
    ids = set(table_ids)
    tagged = frame["tables"].fillna("").map(lambda t: bool(ids & set(str(t).split(";")))).astype(bool)
    tagged &= frame["init"].eq("mae").fillna(False).astype(bool)
    return tagged if tagged.any() else differs_only_in(frame, knobs, base)


def table_runs(frame: pd.DataFrame, table_id: str, knobs: Iterable[str]) -> pd.DataFrame:
    """Rows of the MAE runs that serve table ``table_id`` (:func:`ablation_mask`)."""
    return frame[ablation_mask(frame, [table_id], knobs)] if len(frame) else frame


def seed_mean(frame: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Mean, standard deviation and number of seeds of ``metric`` per group ``by`` (groups with no value
    are dropped)."""
    cols = [*by, "mean", "std", "n"]
    if not len(frame) or metric not in frame:
        return pd.DataFrame(columns=cols)
    data = frame[frame[metric].notna()]
    if not len(data):
        return pd.DataFrame(columns=cols)
    if not by:
        values = data[metric]
        return pd.DataFrame([{"mean": values.mean(), "std": values.std(), "n": int(values.count())}])
    grouped = data.groupby(by, dropna=False, sort=False)[metric]
    out = grouped.agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
    return out[cols]


def status_of(frame: pd.DataFrame, ev: str, init: str | None = None) -> str:
    """What the summary says of evaluation ``ev`` (of ``init``) that did not run: ``not run (no labels)``, or
    "" when nothing says so (the tables' notes)."""
    if STATUS not in frame or not len(frame):
        return ""
    sel = frame["eval"].eq(ev).fillna(False) & frame[STATUS].notna()
    if init is not None:
        sel &= frame["init"].eq(init).fillna(False)
    return "; ".join(dict.fromkeys(str(v) for v in frame.loc[sel.astype(bool), STATUS]))
