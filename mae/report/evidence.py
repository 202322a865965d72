"""The summary as *cells* with bootstrap replicates: what the claims check and the tables' intervals read.

A cell is one setting's value (e.g. "linear-probe top-1 of the runs with mask ratio 0.9"): an array
``(1 + n_boot,)`` whose index 0 is the point value (the mean over the setting's seeds) and index ``b`` its value
on bootstrap replicate ``b``. Replicate ``b`` resamples the *same* val images in every run (the canonical
resamples of :mod:`mae.stats`, stored per row in ``replicates.npz`` by ``mae summarize``), so differences of
cells are paired; a setting with two or more seeds has its seeds resampled too (with replacement, independently
per setting; the fine-tune and linear-probe cells of the same runs share their draws, as they share the
pretrained models). With one seed an interval covers val-image noise only, not training noise; with k seeds
the seed bootstrap understates the seed variance by a factor (k − 1)/k. A value without per-image
predictions has NaN replicates: its interval is unknown, never zero.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mae import stats
from mae.report.ablations import ABLATIONS
from mae.report.summary import ablation_mask, base_knobs, row_key

#: short names of what claims read: kind -> (evaluation, metric)
METRIC_OF = {"ft": ("finetune", "top1"), "lin": ("linprobe", "top1"), "img_s": ("pretrain", "img_s")}


@dataclass
class Cell:
    """One setting's value: ``values[0]`` the mean over seeds, ``values[1:]`` its bootstrap replicates."""

    key: tuple
    values: np.ndarray
    seeds: int
    n_val: float = math.nan

    @property
    def point(self) -> float:
        return float(self.values[0])


class Evidence:
    """The summary as cells with bootstrap replicates (see the module docstring)."""

    def __init__(self, frame: pd.DataFrame, replicates: dict | None = None, n_boot: int | None = None,
                 seed: int = 0) -> None:
        self.frame = frame.reset_index(drop=True)
        self.replicates = replicates or {}
        self.n_boot = (stats.N_BOOT if self.replicates else 0) if n_boot is None else n_boot
        self.seed = seed
        self._matrix: dict[str, np.ndarray] = {}
        self.base = base_knobs(self.frame) if len(self.frame) else {}

    # ---- values
    def matrix(self, metric: str) -> np.ndarray:
        """``(rows, 1 + n_boot)``: the point value, then the replicates (NaN without per-image predictions)."""
        if metric not in self._matrix:
            point = pd.to_numeric(self.frame[metric], errors="coerce").to_numpy(float) if metric in self.frame \
                else np.full(len(self.frame), np.nan)
            out = np.full((len(self.frame), 1 + self.n_boot), np.nan)
            out[:, 0] = point
            if self.n_boot:
                for i, row in enumerate(self.frame[["run", "eval", "eval_setting"]].itertuples(index=False)):
                    reps = self.replicates.get(row_key(*row), {}).get(metric)
                    if reps is not None and len(reps) >= self.n_boot:
                        out[i, 1:] = reps[: self.n_boot]
            self._matrix[metric] = out
        return self._matrix[metric]

    def _cell(self, key: tuple, rows: np.ndarray, metric: str) -> Cell | None:
        values = self.matrix(metric)[rows]
        values = values[np.isfinite(values[:, 0])]
        if not len(values):
            return None
        k = len(values)
        out = np.empty(1 + self.n_boot)
        out[0] = values[:, 0].mean()
        if self.n_boot:
            if k > 1:  # resample the seeds of this setting too (same draws for every evaluation of these runs)
                runs = "|".join(sorted(self.frame.loc[rows, "run"].astype(str)))
                rng = np.random.default_rng([self.seed, zlib.crc32(runs.encode())])
                draws = rng.integers(0, k, size=(k, self.n_boot))
                out[1:] = values[draws, 1 + np.arange(self.n_boot)].mean(0)
            else:
                out[1:] = values[0, 1:]
        n_val = pd.to_numeric(self.frame.loc[rows, "n_val"], errors="coerce").min() if "n_val" in self.frame \
            else math.nan
        return Cell(key, out, k, float(n_val))

    # ---- selections
    def cells(self, knobs: list[str], kind: str, eval_setting: str = "") -> list[Cell]:
        """One cell per value of ``knobs`` among the runs of the ablation that varies exactly ``knobs``
        (:func:`~mae.report.summary.ablation_mask`), or without one (``knobs`` empty: the base setting), among
        the MAE runs that differ from the base only in ``knobs``."""
        ev, metric = METRIC_OF.get(kind, ("pretrain", kind))
        ids = [a.id for a in ABLATIONS.values() if not a.runs_of and list(a.columns) == list(knobs)]
        mask = ablation_mask(self.frame, ids, knobs, self.base) if len(self.frame) else None
        return self.select(ev, metric, knobs, mask, eval_setting)

    def select(self, ev: str, metric: str, knobs: list[str], mask: pd.Series | None = None,
               eval_setting: str | None = "") -> list[Cell]:
        frame = self.frame
        if not len(frame):
            return []
        sel = frame["eval"].eq(ev).fillna(False).astype(bool)
        if eval_setting is not None:
            sel &= frame["eval_setting"].fillna("").eq(eval_setting).astype(bool)
        if mask is not None:
            sel &= mask.astype(bool)
        rows = frame[sel]
        if not len(rows):
            return []
        if not knobs:
            cell = self._cell((), rows.index.to_numpy(), metric)
            return [cell] if cell else []
        out = []
        for key, group in rows.groupby(knobs, dropna=False, sort=True):
            cell = self._cell(key if isinstance(key, tuple) else (key,), group.index.to_numpy(), metric)
            if cell:
                out.append(cell)
        return out

    def baseline(self, init: str, ev: str, metric: str, eval_setting: str | None = "") -> Cell | None:
        """The cell of a baseline init (scratch, supervised) on evaluation ``ev``."""
        cells = self.select(ev, metric, [], self.frame["init"].eq(init).fillna(False), eval_setting) \
            if len(self.frame) else []
        return cells[0] if cells else None

    def base_value(self, knob: str) -> float:
        value = self.base.get(knob)
        return float(value) if value is not None and value is not pd.NA else math.nan

    def interval(self, cell: Cell) -> tuple[float, float]:
        """95 % percentile interval of a cell (NaN when it has no replicates)."""
        reps = cell.values[1:]
        return stats.percentile_interval(reps) if len(reps) and np.isfinite(reps).all() else (math.nan, math.nan)

    def table(self, ev: str, metric: str, knobs: list[str], rows: pd.Index, eval_setting: str = "") -> pd.DataFrame:
        """Per value of ``knobs`` among ``rows`` (an index of :attr:`frame`): mean over seeds, 95 % interval
        half-width (``ci``) and number of seeds (``n``)."""
        mask = pd.Series(self.frame.index.isin(rows), index=self.frame.index)
        records = []
        for cell in self.select(ev, metric, knobs, mask, eval_setting):
            lo, hi = self.interval(cell)
            records.append({**dict(zip(knobs, cell.key)), "mean": cell.point, "ci": (hi - lo) / 2, "n": cell.seeds})
        out = pd.DataFrame(records, columns=[*knobs, "mean", "ci", "n"])
        for knob in knobs:  # keep the summary's dtypes (Int64 knobs print as 4, not 4.0)
            if knob in self.frame:
                out[knob] = out[knob].astype(self.frame[knob].dtype)
        return out
