"""How a table of the report is rendered: a :class:`Table` as Markdown and LaTeX, and its caption's sentences.

A :class:`Table` holds one table's numbers (per metric an ``ours`` column, the half-width of its 95 % interval
and a ``paper`` column), its caption and what is missing; :meth:`Table.markdown` and :meth:`Table.latex` fold
each interval into its value's cell ("22.1 ± 1.2"). :func:`scale_text`, :data:`CI_NOTE` and
:func:`not_run_text` are the sentences every caption shares: the scale of our runs and the paper's, what the ±
means, what did not run. The builders in :mod:`mae.report.tables` and :mod:`mae.report.baseline_tables` make the
tables; :func:`to_markdown` also writes claims.md (:mod:`mae.report.claims_render`) and the pages of docs/bench.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

PAPER_SCALE = "ImageNet-1K, {epochs} pretraining epochs"
#: column suffix of a 95 % interval half-width beside our value (``lin top-1 ±``)
CI_SUFFIX = " ±"
CI_NOTE = (
    " Ours: mean over seeds ± half-width of its 95% interval (training noise between seeds, pooled over "
    "the settings of the same evaluation where a setting has fewer than 3, plus val-image noise by the paired "
    "bootstrap; t interval, docs/statistics.md); no ± where no seed-variance estimate exists."
)


@dataclass
class Table:
    """One rendered table: the data (numbers), its caption, and what is missing."""

    id: str
    stem: str
    title: str
    data: pd.DataFrame
    caption: str
    missing: list[str] = field(default_factory=list)

    def display(self) -> pd.DataFrame:
        """The data with each ``<metric> ±`` column folded into its ``<metric> ours`` cell ("22.1 ± 1.2")."""
        out = self.data.copy()
        for col in [c for c in out.columns if c.endswith(CI_SUFFIX)]:
            ours = col[: -len(CI_SUFFIX)] + " ours"
            if ours in out:
                out[ours] = [
                    _fmt_cell(v) + (f" ± {_fmt_cell(ci)}" if pd.notna(ci) and pd.notna(v) else "")
                    for v, ci in zip(out[ours], out[col])
                ]
            out = out.drop(columns=col)
        return out

    def markdown(self) -> str:
        lines = [f"**{self.title}.** {self.caption}", "", to_markdown(self.display())]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        return self.display().to_latex(
            index=False,
            na_rep="--",
            escape=True,
            float_format=_latex_float,
            caption=_tex_escape(f"{self.title}. {self.caption}"),
            label=f"tab:{self.stem}",
            position="t",
        )


# --------------------------------------------------------------------------------------------- formatting
def _fmt_cell(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.1:
            return f"{value:.3g}"
        return f"{value:.1f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def _latex_float(value: float) -> str:
    return _fmt_cell(value)


def _tex_escape(text: str) -> str:
    repl = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(repl.get(ch, ch) for ch in text)


def to_markdown(frame: pd.DataFrame) -> str:
    """GitHub Markdown table (numbers with one decimal, missing as an en dash)."""
    header = [str(c) for c in frame.columns]
    rows = [[_fmt_cell(v).replace("|", "\\|") for v in row] for row in frame.itertuples(index=False)]
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def scale_text(scale: dict[str, Any], paper_model: str, paper_epochs: int | str = 800) -> str:
    def show(v: Any) -> str:
        return "?" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v)

    seeds = f", {scale['seeds']} seed(s)" if scale.get("seeds") else ""
    return (
        f"Ours: {show(scale['model'])}, data {show(scale['dataset'])}, {show(scale['epochs'])} pretraining "
        f"epochs{seeds}. Paper: {paper_model}, {PAPER_SCALE.format(epochs=paper_epochs)}."
    )


def not_run_text(status: dict[str, str]) -> str:
    """The caption's sentence on what did not run: ``{"ft top-1 (finetune)": "not run (no labels)"}`` gives
    ``" Not run (no labels): ft top-1 (finetune)."``; "" when nothing says so."""
    by_why: dict[str, list[str]] = {}
    for what, why in status.items():
        if why:
            by_why.setdefault(why, []).append(what)
    return "".join(f" {why[:1].upper()}{why[1:]}: {', '.join(whats)}." for why, whats in by_why.items())
