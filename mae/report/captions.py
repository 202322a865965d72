"""The name of each table and figure in the HTML report (``snakemake --report``), and of the study behind it.

The ``report()`` flags of ``workflow/rules/report.smk`` give every file these names as its labels; the
captions (``workflow/report/tables.rst``, ``figures.rst``) print them. Nothing here lists a table: each one
is named by its own title, the bold first line of its Markdown file as :mod:`mae.report.tables` writes it
(``**Table 1a: decoder depth.** Ours: ...``). A figure drawn from an ablation (Figs. 5, 7) takes the title
of :data:`mae.registry.ablations.ABLATIONS`, the others the title in :data:`FIGURES`.

Kept free of pandas and torch, like :mod:`mae.registry.ablations`: the Snakefile imports it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mae.registry.ablations import ABLATIONS

#: the figures of ``mae figures`` that are not an ablation of ABLATIONS: file stem -> title
FIGURES = {
    "fig9_partial_ft": "Partial fine-tuning (paper Fig. 9)",
    "fig_mask_sampling": "Mask sampling strategies (paper Fig. 6)",
    "fig_reconstructions": "Reconstructions of held-out validation images (paper Figs. 2–3)",
    "fig_loss_curves": "Pretraining loss of every run (not a figure of the paper)",
}

_TITLE = re.compile(r"^\*\*(.+?)\.\*\*", re.MULTILINE)


def table_title(markdown: str | Path) -> str:
    """The title of a table file of ``mae tables`` (``Table 1a: decoder depth``); for the page of all tables
    (``tables.md``) the range of their numbers (``Tables 1a–7: all on one page``)."""
    titles = _TITLE.findall(Path(markdown).read_text(encoding="utf-8"))
    if not titles:
        raise ValueError(f"{markdown}: no '**Table ...: title.**' line")
    if len(titles) == 1:
        return titles[0]
    first, last = (t.split(":")[0].removeprefix("Table ") for t in (titles[0], titles[-1]))
    return f"Tables {first}–{last}: all on one page"


def figure_title(stem: str) -> str:
    """The title of a figure of ``mae figures`` by its file stem (``fig5_masking_ratio``)."""
    spec = ABLATIONS.get(stem.split("_")[0])
    if spec is not None and not spec.stem:  # an ablation drawn as a figure
        return spec.title
    if stem not in FIGURES:
        raise KeyError(f"figure '{stem}' has no title in mae/report/captions.py (FIGURES)")
    return FIGURES[stem]


def study_name(config: dict[str, Any], configfiles: Iterable[str | Path], overlays: Iterable[str | Path] = ()) -> str:
    """The study a report is of: its scale and config files in the order they apply, the ``configfile:`` of
    the Snakefile first, then each ``--configfile`` (``overlays``) over it: ``smoke (CI): config/config.yaml +
    config/smoke.yaml``."""
    overlays = [Path(f) for f in overlays]
    ordered = [Path(f) for f in configfiles if Path(f) not in overlays] + overlays
    files = " + ".join(dict.fromkeys(_shown(f) for f in ordered)) or "no config file"
    return f"{config.get('scale') or 'unnamed scale'}: {files}"


def _shown(path: Path) -> str:
    """A path relative to the working directory where it lies below it."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)
