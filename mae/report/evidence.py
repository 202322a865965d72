"""The summary as *cells* with a two-level noise model: what the claims, the tables' ± and the figures' bars read.

A cell is one setting's value (e.g. "linear-probe top-1 of the runs with mask ratio 0.9"): the mean over its
seeds, with each seed's value on every canonical bootstrap replicate of :mod:`mae.report.stats` (replicate ``b``
resamples the *same* val images in every run, stored per row in ``replicates.npz`` by ``mae summarize``), so
differences of cells are paired over images.

Noise has two levels (docs/statistics.md): training noise between seeds of a setting, then val-image noise. A
cell's seed variance is its own sample variance when it has ≥ :data:`~mae.report.stats.MIN_OWN_SEEDS` seeds, else the
within-setting variance pooled over every setting of the same evaluation kind (fine-tune, linear probe, k-NN,
partial fine-tuning, each transfer and transfer dataset; :func:`kind_of`) that has ≥ 2 seeds, whatever its
init; a kind without any such setting has none, and a value read with none gets no interval at all — never an
interval of image noise alone. :meth:`Evidence.estimate` turns a linear contrast of cells into a
:class:`~mae.report.stats.Estimate` (t interval, Satterthwaite df). A value without per-image predictions has NaN
replicates: its interval is unknown, never zero.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mae.registry.ablations import ABLATIONS
from mae.report import stats
from mae.report.replicates import row_key
from mae.report.runs_csv import ablation_mask, base_knobs, differs_only_in, pretraining_knobs

#: short names of what claims read: kind -> (evaluation, metric)
METRIC_OF = {"ft": ("finetune", "top1"), "lin": ("linprobe", "top1"), "img_s": ("pretrain", "img_s")}


def kind_of(ev: str, metric: str, eval_setting: str = "") -> tuple[str, str, str]:
    """The evaluation kind whose settings share a pooled seed variance: the evaluation and metric, plus the
    dataset of a classification transfer (each dataset its own scale). ``partial_ft-0`` is the run's linear
    probe (copied by ``mae partial-ft --reuse``), so it reads the linear probe's variance."""
    if ev == "partial_ft" and str(eval_setting) == "0":
        return ("linprobe", metric, "")
    return (ev, metric, str(eval_setting) if ev == "transfer_cls" else "")


@dataclass
class Cell:
    """One setting's value: its seeds' values ``(k,)``, their replicates ``(k, n_boot)`` and its seed variance."""

    key: tuple
    seed_values: np.ndarray
    replicates: np.ndarray
    noise: stats.SeedVariance
    rows: np.ndarray
    seed_ids: tuple = ()
    n_val: float = math.nan

    @property
    def point(self) -> float:
        """The mean over seeds."""
        return float(self.seed_values.mean())

    @property
    def seeds(self) -> int:
        return len(self.seed_values)

    @property
    def mean_replicates(self) -> np.ndarray:
        """The mean over seeds on every bootstrap replicate ``(n_boot,)``."""
        return self.replicates.mean(0)


Term = tuple[float, Cell]


class Evidence:
    """The summary as cells with the two-level noise model (see the module docstring)."""

    def __init__(self, frame: pd.DataFrame, replicates: dict | None = None, n_boot: int | None = None) -> None:
        self.frame = frame.reset_index(drop=True)
        self.replicates = replicates or {}
        lengths = [len(a) for reps in self.replicates.values() for a in reps.values()]
        self.n_boot = (min(lengths) if lengths else 0) if n_boot is None else n_boot  # 1 000 in summaries
        self._matrix: dict[str, np.ndarray] = {}
        self._pools: dict[str, dict] = {}
        self.base = base_knobs(self.frame) if len(self.frame) else {}

    # ---- values
    def matrix(self, metric: str) -> np.ndarray:
        """``(rows, 1 + n_boot)``: the point value, then the replicates (NaN without per-image predictions)."""
        if metric not in self._matrix:
            point = (
                pd.to_numeric(self.frame[metric], errors="coerce").to_numpy(float)
                if metric in self.frame
                else np.full(len(self.frame), np.nan)
            )
            out = np.full((len(self.frame), 1 + self.n_boot), np.nan)
            out[:, 0] = point
            if self.n_boot:
                for i, row in enumerate(self.frame[["run", "eval", "eval_setting"]].itertuples(index=False)):
                    reps = self.replicates.get(row_key(*row), {}).get(metric)
                    if reps is not None and len(reps) >= self.n_boot:
                        out[i, 1:] = reps[: self.n_boot]
            self._matrix[metric] = out
        return self._matrix[metric]

    @functools.cached_property
    def setting_of(self) -> pd.Series:
        """Per row, the key of its setting: evaluation, setting, init and every pretraining knob but the seed."""
        columns = [c for c in ("eval", "eval_setting", "init", *pretraining_knobs()) if c in self.frame]
        return self.frame[columns].astype("string").fillna("<NA>").agg("|".join, axis=1)

    @functools.cached_property
    def _columns(self) -> tuple[np.ndarray, np.ndarray]:
        """The seed and the val-image count of every row, as arrays (cells read them often)."""
        seeds = self.frame["seed"].to_numpy(object) if "seed" in self.frame else np.full(len(self.frame), None)
        n_val = (
            pd.to_numeric(self.frame["n_val"], errors="coerce").to_numpy(float)
            if "n_val" in self.frame
            else np.full(len(self.frame), np.nan)
        )
        return seeds, n_val

    @functools.cached_property
    def base_rows(self) -> pd.Series:
        """The MAE rows of the base setting (every seed; :func:`~mae.report.runs_csv.differs_only_in`)."""
        return differs_only_in(self.frame, [], self.base)

    def pools(self, metric: str) -> dict[tuple, stats.SeedVariance]:
        """The pooled seed variance of every evaluation kind (:func:`kind_of`), from its settings with ≥ 2
        seeds (``partial_ft-0`` rows are copies of linear probes and are left out)."""
        if metric not in self._pools:
            values = self.matrix(metric)
            finite = np.isfinite(values[:, 0]) & ~(
                self.frame["eval"].eq("partial_ft") & self.frame["eval_setting"].eq("0")
            ).to_numpy(bool)
            parts: dict[tuple, list] = {}
            codes = pd.factorize(self.setting_of)[0]
            for code in np.unique(codes[finite]):
                rows = np.flatnonzero(finite & (codes == code))
                reps = values[rows, 1:] if self.n_boot else None
                kind = kind_of(self.frame.at[rows[0], "eval"], metric, self.frame.at[rows[0], "eval_setting"])
                parts.setdefault(kind, []).append(stats.within_variance(values[rows, 0], reps))
            self._pools[metric] = {kind: stats.pooled_variance(p, ("pooled", kind)) for kind, p in parts.items()}
        return self._pools[metric]

    def _noise(self, kind: tuple, values: np.ndarray, reps: np.ndarray | None, rows: np.ndarray) -> stats.SeedVariance:
        if len(values) >= stats.MIN_OWN_SEEDS:
            ss, df, image_ss = stats.within_variance(values, reps)
            return stats.SeedVariance(ss / df, df, image_ss / df, stats.OWN, ("own", kind, tuple(rows)))
        return self.pools(kind[1]).get(kind, stats.NO_SEED_VARIANCE)

    def _cell(self, key: tuple, rows: np.ndarray, metric: str) -> Cell | None:
        values = self.matrix(metric)[rows]
        keep = np.isfinite(values[:, 0])
        values, rows = values[keep], rows[keep]
        if not len(values):
            return None
        kind = kind_of(self.frame.at[rows[0], "eval"], metric, self.frame.at[rows[0], "eval_setting"])
        reps = values[:, 1:]
        noise = self._noise(kind, values[:, 0], reps if self.n_boot else None, rows)
        seeds, n_val = self._columns
        counts = n_val[rows][np.isfinite(n_val[rows])]
        return Cell(
            key, values[:, 0], reps, noise, rows, tuple(seeds[rows]), float(counts.min()) if len(counts) else math.nan
        )

    # ---- estimates
    def estimate(self, terms: Sequence[Term]) -> stats.Estimate:
        """The linear contrast ``Σ weight · cell`` with its two-level standard error
        (:func:`mae.report.stats.contrast`); a cell that appears twice has its weights added."""
        merged: dict[int, list] = {}
        for weight, cell in terms:
            merged.setdefault(id(cell), [0.0, cell])[0] += weight
        weights = [w for w, _ in merged.values()]
        cells = [c for _, c in merged.values()]
        reps = np.stack([c.mean_replicates for c in cells]) if self.n_boot else np.empty((len(cells), 0))
        return stats.contrast(
            weights, [c.point for c in cells], reps, [c.seeds for c in cells], [c.noise for c in cells]
        )

    def interval(self, cell: Cell, level: float = stats.LEVEL) -> tuple[float, float]:
        """The ``level`` interval of one cell's mean (NaN without a training-noise estimate or replicates)."""
        return self.estimate([(1.0, cell)]).interval(level)

    # ---- selections
    def cells(self, knobs: list[str], kind: str, eval_setting: str = "") -> list[Cell]:
        """One cell per value of ``knobs`` among the runs of the ablation that varies exactly ``knobs``
        (:func:`~mae.report.runs_csv.ablation_mask`), or without one (``knobs`` empty: the base setting), among
        the MAE runs that differ from the base only in ``knobs``."""
        ev, metric = METRIC_OF.get(kind, ("pretrain", kind))
        ids = [a.id for a in ABLATIONS.values() if not a.runs_of and list(a.columns) == list(knobs)]
        mask = ablation_mask(self.frame, ids, knobs, self.base) if len(self.frame) else None
        return self.select(ev, metric, knobs, mask, eval_setting)

    def select(
        self, ev: str, metric: str, knobs: list[str], mask: pd.Series | None = None, eval_setting: str | None = ""
    ) -> list[Cell]:
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
        cells = (
            self.select(ev, metric, [], self.frame["init"].eq(init).fillna(False), eval_setting)
            if len(self.frame)
            else []
        )
        return cells[0] if cells else None

    def base_value(self, knob: str) -> float:
        value = self.base.get(knob)
        return float(value) if value is not None and value is not pd.NA else math.nan

    def table(self, ev: str, metric: str, knobs: list[str], rows: pd.Index, eval_setting: str = "") -> pd.DataFrame:
        """Per value of ``knobs`` among ``rows`` (an index of :attr:`frame`): mean over seeds, 95 % interval
        half-width (``ci``: NaN without a training-noise estimate) and number of seeds (``n``)."""
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
