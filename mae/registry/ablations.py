"""The paper's ablations, declared once: the table/figure each one is, the knobs it varies and its labels.

An :class:`Ablation` is one table or figure of the paper whose rows are pretraining settings (Table 1a–f, Fig.
5, Fig. 7, Table 7). Its id is the key under ``ablations:`` in the study config, and its ``label`` is the
paper's setting label with one ``{knob}`` field per knob it varies (``"depth={decoder_depth}"``): the same
pattern formats our setting as the paper's label (the knob's paper label, :mod:`mae.registry.knobs`) and parses the
paper's label back into knob values. The study planner, the tables, the figures and the paper's rows as runs
(:func:`mae.report.paper.paper_as_runs`) all read :data:`ABLATIONS`; nothing else lists them.

Kept free of pandas and torch: the Snakefile imports it (through :mod:`mae.study`).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

from mae.registry.knobs import KNOBS

#: (evaluation, our metric, the paper's metric, column label)
Metric = tuple[str, str, str, str]
FT_LIN: tuple[Metric, ...] = (
    ("finetune", "top1", "ft_top1", "ft top-1"),
    ("linprobe", "top1", "lin_top1", "lin top-1"),
)


@dataclass(frozen=True)
class Ablation:
    id: str  # key under `ablations:` in the study config (and in runs.csv's `tables`)
    paper_table: str  # the paper's table/figure ('Table 1a', 'Fig 5')
    title: str
    label: str  # the paper's setting label with a {knob} field per knob: "depth={decoder_depth}"
    headers: tuple[str, ...]  # display header of each knob in our table
    stem: str = ""  # table file stem ("" for a figure: drawn by mae.report.figures)
    metrics: tuple[Metric, ...] = FT_LIN
    show_labels: bool = False  # display the knobs' paper labels instead of their values
    runs_of: str = ""  # the ablation whose runs this one shows (Table 7 shows Table 1d's runs)

    @property
    def knobs(self) -> tuple[str, ...]:
        return tuple(f for _, f, _, _ in string.Formatter().parse(self.label) if f)

    @property
    def columns(self) -> tuple[str, ...]:
        """The runs.csv columns of the knobs."""
        return tuple(KNOBS[k].column for k in self.knobs)

    def to_paper(self, *values: Any) -> str | None:
        """The paper's label of our setting (None for a value the knob does not know)."""
        try:
            return self.label.format(**{k: KNOBS[k].label(KNOBS[k].type(v)) for k, v in zip(self.knobs, values)})
        except (TypeError, ValueError):
            return None

    def show(self, *values: Any) -> tuple:
        """Our setting as the table displays it: the values, or (``show_labels``) the paper's labels, a ratio
        in percent as a number."""
        if not self.show_labels:
            return tuple(values)
        labels = [(KNOBS[k], KNOBS[k].label(KNOBS[k].type(v))) for k, v in zip(self.knobs, values)]
        return tuple(int(text) if knob.percent else text for knob, text in labels)

    def from_paper(self, label: str) -> dict[str, Any] | None:
        """The paper's label -> our knob values (None when it is not a setting we can express)."""
        parts = [
            re.escape(lit) + (f"(?P<{f}>.+?)" if f else "") for lit, f, _, _ in string.Formatter().parse(self.label)
        ]
        match = re.fullmatch("".join(parts), label)
        if match is None:
            return None
        try:
            values = {k: KNOBS[k].parse_label(match.group(k)) for k in self.knobs}
        except ValueError:
            return None
        if any(KNOBS[k].options() is not None and v not in KNOBS[k].options() for k, v in values.items()):
            return None
        return values


ABLATIONS: dict[str, Ablation] = {
    a.id: a
    for a in (
        Ablation(
            "1a",
            "Table 1a",
            "Table 1a: decoder depth",
            "depth={decoder_depth}",
            ("decoder depth",),
            "table1a_decoder_depth",
        ),
        Ablation(
            "1b",
            "Table 1b",
            "Table 1b: decoder width",
            "width={decoder_width}",
            ("decoder width",),
            "table1b_decoder_width",
        ),
        Ablation(
            "1c",
            "Table 1c",
            "Table 1c: mask token in the encoder",
            "{mask_token_in_encoder}",
            ("case",),
            "table1c_mask_token",
            show_labels=True,
        ),
        Ablation("1d", "Table 1d", "Table 1d: reconstruction target", "{target}", ("target",), "table1d_target"),
        Ablation("1e", "Table 1e", "Table 1e: data augmentation", "{aug}", ("augmentation",), "table1e_augmentation"),
        Ablation(
            "1f",
            "Table 1f",
            "Table 1f: mask sampling",
            "{sampling} {mask_ratio}",
            ("sampling", "ratio %"),
            "table1f_mask_sampling",
            show_labels=True,
        ),
        Ablation("fig5", "Fig 5", "Masking ratio (paper Fig. 5)", "mask_ratio={mask_ratio}", ("masking ratio (%)",)),
        Ablation("fig7", "Fig 7", "Training schedule (paper Fig. 7)", "epochs={epochs}", ("pretraining epochs",)),
        Ablation(
            "7",
            "Table 7",
            "Table 7: pixels vs tokens in transfer",
            "target={target}",
            ("target",),
            "table7_pixels_vs_tokens",
            runs_of="1d",
            metrics=(
                ("finetune", "top1", "ft_top1", "ft top-1"),
                ("transfer_det", "ap_box", "ap_box", "AP box"),
                ("transfer_seg", "miou", "miou", "mIoU"),
            ),
        ),
    )
}
#: ids a study config may list under `ablations:` (Table 7 has no runs of its own)
STUDY_TABLES = tuple(a.id for a in ABLATIONS.values() if not a.runs_of)
