"""The bootstrap replicates of the summary's metrics: ``replicates.npz`` beside runs.csv.

One entry per runs.csv row (:func:`row_key`) and metric: the metric on every canonical bootstrap resample of the
val images (:mod:`mae.report.stats`), from the per-image predictions of the row's evaluation
(:func:`replicates_of`), so that the values of different runs are paired over images. ``mae summarize``
(:mod:`mae.report.summary`) builds and writes them; :mod:`mae.report.evidence`, the tables, figures and claims
read them back with :func:`read_replicates`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mae.errors import UserError
from mae.utils.io import atomic_path

#: bootstrap replicates of the summary's metrics, beside runs.csv (read by tables, figures and claims)
REPLICATES = "replicates.npz"


def row_key(run: str, ev: str, setting: str = "") -> str:
    """Key of one runs.csv row in ``replicates.npz``: ``run|eval|setting``."""
    return f"{run}|{ev}|{setting or ''}"


def replicates_of(per_image: dict[str, Any]) -> dict[str, np.ndarray]:
    """Bootstrap replicates (the canonical resamples of :mod:`mae.report.stats`) of every metric that a stage's
    ``predictions.npz`` allows: top1 from ``pred``/``target``, miou from ``inter``/``union``, and any
    ``<metric>_boot`` a stage computed itself (detection AP)."""
    from mae.report import stats

    out: dict[str, np.ndarray] = {}
    if "pred" in per_image and "target" in per_image and len(per_image["target"]):
        correct = np.asarray(per_image["pred"]) == np.asarray(per_image["target"])
        out["top1"] = stats.mean_accuracy_replicates(correct)[0]
    if "inter" in per_image and "union" in per_image and len(per_image["inter"]):
        out["miou"] = stats.miou_replicates(per_image["inter"], per_image["union"])
    for key, value in per_image.items():
        if key.endswith("_boot"):
            out[key[: -len("_boot")]] = np.asarray(value, dtype=np.float64)
    return {k: v.astype(np.float32) for k, v in out.items()}


def write_replicates(replicates: dict[str, dict[str, np.ndarray]], path: str | Path) -> None:
    """``replicates.npz`` beside runs.csv: ``<row_key>::<metric>`` -> (N_BOOT,) float32."""
    flat = {f"{key}::{metric}": arr for key, reps in replicates.items() for metric, arr in reps.items()}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **flat)


def read_replicates(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Inverse of :func:`write_replicates`; an empty dict when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return {}
    out: dict[str, dict[str, np.ndarray]] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for name in data.files:
                key, _, metric = name.rpartition("::")
                out.setdefault(key, {})[metric] = data[name].astype(np.float64)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable replicates file ({err})") from None
    return out
