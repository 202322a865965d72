"""claims.csv and claims.md: the result of :func:`mae.report.claims.check_claims` as ``mae claims`` writes it.

:func:`write_claims` writes the result as CSV and as a Markdown table under the verdict counts (:func:`headline`)
and a paragraph on how to read a margin; :func:`fmt_p` and :func:`fmt_interval` are the formats of a p-value and
an interval there and in the log of ``mae claims`` (:func:`mae.report.claims.main`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from mae.report.table_render import to_markdown
from mae.report.verdicts import FAILS, HOLDS, INCONCLUSIVE, NO_TRAINING_NOISE, NOT_RUN
from mae.utils.io import atomic_path, atomic_write_text


def fmt_interval(lo: float, hi: float) -> str:
    return "–" if math.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]"


def _signed(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:+.2f}"


def fmt_p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.2g}"


def headline(result: pd.DataFrame) -> str:
    """The verdict counts: Holm-adjusted first (the headline), then unadjusted."""
    holm, raw = result["verdict_holm"].value_counts(), result["verdict"].value_counts()
    tested = int(result["p_value"].notna().sum())
    undecided = holm.get(INCONCLUSIVE, 0) + holm.get(NO_TRAINING_NOISE, 0)
    return (
        f"holds: {holm.get(HOLDS, 0)}, fails: {holm.get(FAILS, 0)}, inconclusive: {undecided} "
        f"({holm.get(NO_TRAINING_NOISE, 0)} without a training-noise estimate), not run: "
        f"{holm.get(NOT_RUN, 0)} (Holm-adjusted over the {tested} claims with a p-value; unadjusted: holds "
        f"{raw.get(HOLDS, 0)}, fails {raw.get(FAILS, 0)})"
    )


def write_claims(result: pd.DataFrame, out: str | Path) -> Path:
    """claims.csv and claims.md at ``out`` (a .csv/.md path, or a folder); returns the .md path."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix in (".csv", ".md") else out / "claims"
    with atomic_path(stem.with_suffix(".csv"), suffix=".csv") as tmp:
        result.to_csv(tmp, index=False)
    shown = result.reindex(columns=[*result.columns, *(["paper_margin"] if "paper_margin" not in result else [])])
    shown = shown.assign(
        ci=[fmt_interval(lo, hi) for lo, hi in zip(result["ci_lo"], result["ci_hi"])],
        p=[fmt_p(p) for p in result["p_value"]],
        p_adj=[fmt_p(p) for p in result["p_holm"]],
        margin=[_signed(m) for m in result["margin"]],
        paper_margin=[_signed(m) for m in shown["paper_margin"]],
        noise=[f"{s} ({d:.0f} df)" if math.isfinite(d) else s for s, d in zip(result["seed_var"], result["df"])],
        verdict_holm=[
            v + (" (fragile)" if str(f).startswith("yes") else "")
            for v, f in zip(result["verdict_holm"], result["fragile"])
        ],
    )
    shown = shown[
        [
            "claim",
            "verdict_holm",
            "verdict",
            "p",
            "p_adj",
            "rule",
            "contrast",
            "margin",
            "ci",
            "seeds",
            "noise",
            "fragile",
            "paper_margin",
            "evidence",
        ]
    ].rename(
        columns={
            "verdict_holm": "verdict (Holm)",
            "verdict": "raw verdict",
            "p_adj": "p (Holm)",
            "margin": "our margin",
            "ci": "95% CI",
            "noise": "seed variance",
            "paper_margin": "paper margin",
        }
    )
    head = (
        f"# Claims of the paper, checked on our runs\n\n{headline(result)}.\n\n"
        "Every margin is a linear contrast of setting means (means over seeds), read with two levels of noise: "
        "seeds of a setting (their own variance with ≥ 3 seeds, else pooled over the settings of the same "
        "evaluation) and val images (paired bootstrap); a t interval with Satterthwaite df "
        "(docs/statistics.md). A claim holds when every contrast is above its threshold (`all > 0`), fails "
        "when one contrast is below it after adjusting over the claim's contrasts; `|·| < t` claims are "
        "equivalence tests (two one-sided tests). `p` decides at 5% per claim; `verdict (Holm)` adjusts over "
        "the claims of the study. The CI is the deciding contrast's. `fragile`: the verdict changes when one "
        "seed is left out. No claim is decided without a training-noise estimate. Margins in accuracy points "
        "(mIoU/AP points for transfer); the paper's margin is the same contrast on the paper's numbers "
        "(ViT-L/16; the weakest one where there are several).\n\n"
    )
    md = stem.with_suffix(".md")
    atomic_write_text(md, head + to_markdown(shown) + "\n")
    return md
