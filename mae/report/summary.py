"""Collect every run's metrics into one tidy table: ``results/summary/runs.csv``.

One row per run × evaluation with every knob of the run and every metric of the evaluation::

    results/runs/<run>/settings.json                 knobs (written by pretrain)
    results/runs/<run>/<evaluation>/metrics.json     pretrain, finetune, linprobe, knn, partial_ft-<k>,
                                                     transfer_det, transfer_seg, transfer_cls-<dataset>
    results/runs/scratch/<evaluation>/metrics.json   from-scratch baselines (init = scratch)

An evaluation the study planned that its data cannot give (an image folder without class folders has no
labels: study.json ``not_run``) is a row without metrics whose ``status`` is ``not run (no labels)``.

``mae summarize`` also writes ``metrics.json`` (headline numbers for ``dvc metrics``) and ``loss_curves.csv``
(the pretraining loss of every run, from ``pretrain/log.jsonl``, for ``dvc plots``) beside ``runs.csv``.

The tables, figures and claims read runs.csv back with :mod:`mae.report.runs_csv` (its columns, dtypes and
the rows of a setting) and ``replicates.npz`` with :mod:`mae.report.replicates`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mae.errors import UserError
from mae.registry.evaluations import EVALUATIONS
from mae.registry.knobs import KNOBS as PRETRAIN_KNOBS
from mae.report.replicates import REPLICATES, replicates_of, row_key, write_replicates
from mae.report.runs_csv import CI_METRICS, COLUMNS, KNOBS, STATUS, base_run, normalise, pretraining_knobs
from mae.study import parse_baseline_name
from mae.utils.io import atomic_path, atomic_write_json

log = logging.getLogger("mae.report.summary")

#: the evaluations that are part of an evaluation folder's name: ``partial_ft-4`` -> (partial_ft, "4")
EVALS = ("pretrain", *EVALUATIONS)
#: runs whose folder name says how the encoder was initialised (no pretraining of ours): ``scratch``,
#: ``scratch_seed-1``, ``supervised``, … (:func:`mae.study.parse_baseline_name`)
BASELINE_INITS = ("scratch", "supervised")
#: settings.json / study.json key -> runs.csv column (a knob's name -> its column)
ALIASES = {k.name: k.column for k in PRETRAIN_KNOBS.values()}


# --------------------------------------------------------------------------------------------- collecting
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def _knobs(settings: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in (settings or {}).items():
        key = ALIASES.get(key, key)
        if key in KNOBS:
            out[key] = value
    return out


def load_study(path: str | Path | None) -> dict[str, Any]:
    """STUDY.json written by the Snakefile: ``{"base": {...}, "runs": {name: {settings, tables}}, "scale"}``."""
    if path is None:
        return {"base": {}, "runs": {}, "scale": {}}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"study file not found: {path}")
    study = _read_json(path)
    if not isinstance(study, dict) or not isinstance(study.get("runs", {}), dict):
        raise UserError(f"{path}: expected an object with 'base', 'runs' and 'scale'")
    study.setdefault("base", {})
    study.setdefault("runs", {})
    study.setdefault("scale", {})
    return study


def parse_eval_dir(name: str) -> tuple[str, str] | None:
    """``partial_ft-4`` -> ('partial_ft', '4'); ``transfer_cls-digits`` -> ('transfer_cls', 'digits')."""
    for ev in EVALS:
        if name == ev:
            return ev, ""
        if name.startswith(ev + "-") and len(name) > len(ev) + 1:
            return ev, name[len(ev) + 1 :]
    return None


def _metric_values(metrics: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = float("nan")
            continue
        out[key] = value
    return out


def collect(runs_dir: str | Path, study: dict[str, Any] | None = None) -> pd.DataFrame:
    """Walk ``runs_dir`` and return the summary DataFrame (columns :data:`~mae.report.runs_csv.COLUMNS` + any
    extra metrics)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"runs folder not found: {runs_dir}")
    study = study or {"base": {}, "runs": {}, "scale": {}}
    base = _knobs(study.get("base", {}))
    scale = study.get("scale", {}) or {}
    if "dataset" not in base and scale.get("dataset"):
        base["dataset"] = scale["dataset"]
    rows: list[dict[str, Any]] = []
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = run_dir.name
        init, knobs, tables = _run_columns(name, run_dir, study, base)
        found = False
        for eval_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
            parsed = parse_eval_dir(eval_dir.name)
            metrics_path = eval_dir / "metrics.json"
            if parsed is None or not metrics_path.is_file():
                continue
            metrics = _read_json(metrics_path)
            if not isinstance(metrics, dict):
                raise UserError(f"{metrics_path}: expected a JSON object of metrics")
            ev, setting = parsed
            values = _metric_values(metrics)
            values.setdefault("n_val", values.get("eval_images", math.nan))  # detection/segmentation
            rows.append(
                {"run": name, "eval": ev, "eval_setting": setting, "init": init, **knobs, "tables": tables, **values}
            )
            found = True
        if not found:
            log.info("run %s: no evaluation with metrics.json yet", name)
    rows += _not_run_rows(runs_dir, study, base, {(r["run"], r["eval"], r["eval_setting"]) for r in rows})
    frame = pd.DataFrame(rows)
    extra = sorted(c for c in frame.columns if c not in (*COLUMNS, STATUS))
    status = [STATUS] if STATUS in frame else []
    at = COLUMNS.index("tables") + 1
    frame = frame.reindex(columns=[*COLUMNS[:at], *status, *COLUMNS[at:], *extra])
    frame = normalise(frame)
    order = {ev: i for i, ev in enumerate(EVALS)}
    if len(frame):
        frame = (
            frame.assign(_o=frame["eval"].map(order))
            .sort_values(["run", "_o", "eval_setting"], kind="stable")
            .drop(columns="_o")
            .reset_index(drop=True)
        )
    return frame


def _run_columns(
    name: str, run_dir: Path, study: dict[str, Any], base: dict[str, Any]
) -> tuple[str, dict[str, Any], str]:
    """A run's init, knobs and tables: from its settings.json (written by pretraining) and its study entry; a
    baseline (scratch, supervised) has the base's architecture and data, and its own seed."""
    entry = study.get("runs", {}).get(name, {}) or {}
    settings_path = run_dir / "settings.json"
    own = _read_json(settings_path) if settings_path.is_file() else {}
    baseline = parse_baseline_name(name)
    init = str(own.get("init") or entry.get("settings", {}).get("init") or (baseline[0] if baseline else "mae"))
    if init in BASELINE_INITS and not own:
        # no pretraining of ours: only the architecture/data knobs of the base apply; the seed is the run's
        knobs = {k: base[k] for k in ("model", "dataset", "img_size", "patch_size", "seed") if k in base}
        if baseline and baseline[1] is not None:
            knobs["seed"] = baseline[1]
        knobs.update(_knobs(entry.get("settings", {})))
    else:
        knobs = {**base, **_knobs(entry.get("settings", {})), **_knobs(own)}
    return init, knobs, ";".join(str(t) for t in entry.get("tables", []) or [])


def _not_run_rows(
    runs_dir: Path, study: dict[str, Any], base: dict[str, Any], have: set[tuple[str, str, str]]
) -> list[dict[str, Any]]:
    """One row per evaluation the study planned that its data cannot give (study.json ``not_run``), with the
    run's knobs, no metrics and ``status`` = ``not run (<why>)`` (none where a metrics.json exists after all)."""
    rows = []
    for item in study.get("not_run") or []:
        parsed = parse_eval_dir(str(item.get("folder", "")))
        if parsed is None or (item.get("run"), *parsed) in have:
            continue
        name = str(item["run"])
        init, knobs, tables = _run_columns(name, runs_dir / name, study, base)
        rows.append(
            {
                "run": name,
                "eval": parsed[0],
                "eval_setting": parsed[1],
                "init": init,
                **knobs,
                "tables": tables,
                STATUS: f"not run ({item['why']})" if item.get("why") else "not run",
            }
        )
    return rows


# ------------------------------------------------------------------------------------------- uncertainty
def collect_replicates(runs_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``{row_key: {metric: (N_BOOT,) replicates}}`` for every evaluation folder with a ``predictions.npz``."""
    from mae.utils.io import PER_IMAGE, read_per_image

    out: dict[str, dict[str, np.ndarray]] = {}
    for path in sorted(Path(runs_dir).glob(f"*/*/{PER_IMAGE}")):
        parsed = parse_eval_dir(path.parent.name)
        if parsed is None or not (path.parent / "metrics.json").is_file():
            continue
        per_image = read_per_image(path)
        if not _matches_metrics(path, per_image, _read_json(path.parent / "metrics.json")):
            continue
        reps = replicates_of(per_image)
        if reps:
            out[row_key(path.parent.parent.name, *parsed)] = reps
    return out


def _matches_metrics(path: Path, per_image: dict[str, Any], metrics: Any) -> bool:
    """Whether a predictions file is the one behind its metrics.json: a stale file would pair the wrong images,
    so its row gets no interval (logged)."""
    if not isinstance(metrics, dict) or "pred" not in per_image or "target" not in per_image:
        return True
    pred, target = np.asarray(per_image["pred"]), np.asarray(per_image["target"])
    top1 = metrics.get("top1")
    if pred.shape == target.shape and not (
        isinstance(top1, (int, float)) and len(target) and abs(100.0 * float(np.mean(pred == target)) - top1) > 1e-6
    ):
        return True
    log.warning(
        "%s: predictions do not give top1=%s of metrics.json beside it; no interval for this row "
        "(rerun the evaluation)",
        path,
        top1,
    )
    return False


def add_intervals(frame: pd.DataFrame, replicates: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Fill the :data:`~mae.report.runs_csv.CI_COLUMNS`: a 95 % percentile interval over val images from the
    replicates (Wilson for a top-1 without per-image predictions), and the mean/sd over the seeds of each setting."""
    from mae.report import stats

    frame = frame.copy()
    for i, row in enumerate(frame.itertuples(index=False)):
        reps = replicates.get(row_key(row.run, row.eval, row.eval_setting), {})
        for metric in CI_METRICS:
            value = getattr(row, metric, math.nan)
            if metric in reps:
                lo, hi = stats.percentile_interval(reps[metric])
            elif metric == "top1" and pd.notna(value) and pd.notna(getattr(row, "n_val", math.nan)):
                lo, hi = stats.wilson_interval(float(value) / 100.0 * row.n_val, float(row.n_val))
            else:
                continue
            frame.iat[i, frame.columns.get_loc(f"{metric}_lo")] = lo
            frame.iat[i, frame.columns.get_loc(f"{metric}_hi")] = hi
    if not len(frame):
        return frame
    group = [c for c in ("eval", "eval_setting", "init", *pretraining_knobs()) if c in frame]
    keys = frame[group].astype("string").fillna("<NA>").agg("|".join, axis=1)
    frame["seeds"] = frame.groupby(keys)["run"].transform("nunique").astype("float64")
    if STATUS in frame:  # an evaluation that did not run has no seeds
        frame.loc[frame[STATUS].notna().to_numpy(bool), "seeds"] = math.nan
    for metric in CI_METRICS:
        grouped = frame.groupby(keys)[metric]
        frame[f"{metric}_seed_mean"] = grouped.transform("mean")
        frame[f"{metric}_seed_sd"] = grouped.transform("std")
    return frame


def loss_curves(runs_dir: str | Path) -> pd.DataFrame:
    """Pretraining log of every run (``pretrain/log.jsonl``): run, epoch, step, loss, lr, img_s."""
    frames = []
    for log_path in sorted(Path(runs_dir).glob("*/pretrain/log.jsonl")):
        records = []
        for i, line in enumerate(log_path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{log_path}: line {i + 1} is not valid JSON") from None
            if isinstance(rec, dict) and "loss" in rec:
                records.append(rec)
        if records:
            frame = pd.DataFrame(records).reindex(columns=["epoch", "step", "loss", "lr", "img_s"])
            frame.insert(0, "run", log_path.parent.parent.name)
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run", "epoch", "step", "loss", "lr", "img_s"])
    return pd.concat(frames, ignore_index=True)


def headline_metrics(frame: pd.DataFrame) -> dict[str, Any]:
    """A few numbers of the base run for ``dvc metrics``: fine-tune/linear/kNN top-1, transfer, speed."""
    out: dict[str, Any] = {"runs": int(frame["run"].nunique()) if len(frame) else 0}
    base = base_run(frame)
    if base is None:
        return out
    out["base_run"] = base
    rows = frame[frame["run"] == base]
    picks = {
        "finetune_top1": ("finetune", "", "top1"),
        "linprobe_top1": ("linprobe", "", "top1"),
        "knn_top1": ("knn", "", "top1"),
        "pretrain_loss": ("pretrain", "", "train_loss"),
        "pretrain_img_s": ("pretrain", "", "img_s"),
        "det_ap_box": ("transfer_det", "", "ap_box"),
        "det_ap_mask": ("transfer_det", "", "ap_mask"),
        "seg_miou": ("transfer_seg", "", "miou"),
    }
    for key, (ev, setting, metric) in picks.items():
        sel = rows[(rows["eval"] == ev) & (rows["eval_setting"].fillna("") == setting)]
        if metric in sel and sel[metric].notna().any():
            out[key] = round(float(sel[metric].dropna().iloc[0]), 4)
    scratch = frame[(frame["init"] == "scratch") & (frame["eval"] == "finetune")]
    if "top1" in scratch and scratch["top1"].notna().any():
        out["scratch_finetune_top1"] = round(float(scratch["top1"].dropna().mean()), 4)
    return out


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)


# --------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", required=True, help="results/runs folder (one sub-folder per run)")
    parser.add_argument("--study", default=None, help="STUDY.json written by the Snakefile (base, runs, scale)")
    parser.add_argument("--out", required=True, help="output runs.csv")
    parser.add_argument(
        "--metrics", default=None, help="headline metrics JSON for `dvc metrics` (default: metrics.json beside --out)"
    )
    parser.add_argument(
        "--replicates",
        default=None,
        help=f"bootstrap replicates of every metric for paired comparisons (default: {REPLICATES} beside --out)",
    )
    parser.add_argument(
        "--loss-curves",
        default=None,
        help="pretraining loss curves CSV for `dvc plots` (default: loss_curves.csv beside --out)",
    )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    study = load_study(args.study)
    frame = collect(args.runs, study)
    replicates = collect_replicates(args.runs)
    frame = add_intervals(frame, replicates)
    out = Path(args.out)
    write_replicates(replicates, args.replicates or out.with_name(REPLICATES))
    write_csv(frame, out)
    atomic_write_json(args.metrics or out.with_name("metrics.json"), headline_metrics(frame))
    write_csv(loss_curves(args.runs), args.loss_curves or out.with_name("loss_curves.csv"))
    log.info("summary: %d rows from %d runs -> %s", len(frame), frame["run"].nunique() if len(frame) else 0, out)
    return 0
