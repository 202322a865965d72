"""The evaluations of a pretrained encoder, declared once.

Each :class:`Evaluation` names its ``mae`` sub-command and module, its folder under ``runs/<run>/`` and, for an
evaluation run once per setting (partial fine-tuning per block count, classification transfer per dataset), the
key of its config section that lists the settings (folders ``<name>-<setting>``). The ``mae`` command line
(:mod:`mae.cli`), the DAG (``workflow/rules/common.smk``: which metrics files a study needs), the study-config
check (:func:`check_study_evaluations`) and the summary (:mod:`mae.report.summary`: which folders are
evaluations) read :data:`EVALUATIONS`. Kept free of torch and pandas: the Snakefile imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mae.errors import UserError


@dataclass(frozen=True)
class Evaluation:
    name: str  # folder and config-section name
    module: str  # defines add_arguments(parser) and main(args)
    help: str
    per: str = ""  # key of the config section listing its settings: one run per setting, folder <name>-<setting>
    transfer: bool = False  # runs on another task/dataset (Tables 4-7); the supervised encoder is transferred too

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")


EVALUATIONS: dict[str, Evaluation] = {e.name: e for e in (
    Evaluation("finetune", "mae.eval.finetune", "end-to-end fine-tuning (or --scratch)"),
    Evaluation("linprobe", "mae.eval.linprobe", "linear probing of the frozen encoder"),
    Evaluation("partial_ft", "mae.eval.partial_ft", "fine-tune the last K blocks", per="blocks"),
    Evaluation("knn", "mae.eval.knn", "weighted k-NN monitor on frozen features"),
    Evaluation("transfer_det", "mae.transfer.det", "ViTDet-style Mask R-CNN detection transfer", transfer=True),
    Evaluation("transfer_seg", "mae.transfer.seg", "semantic segmentation transfer", transfer=True),
    Evaluation("transfer_cls", "mae.transfer.cls", "classification transfer", per="datasets", transfer=True),
)}
#: the lists under `evaluations:` in a study config
GROUPS = ("every_run", "base_run", "scratch", "per_table")


def evaluation(name: str, where: str) -> Evaluation:
    if name not in EVALUATIONS:
        raise UserError(f"{where}: unknown evaluation '{name}' (valid: {', '.join(EVALUATIONS)})")
    return EVALUATIONS[name]


def folders(name: str, config: dict[str, Any]) -> list[str]:
    """The folders of evaluation ``name`` under a run: ``[name]``, or ``<name>-<setting>`` per setting."""
    ev = EVALUATIONS[name]
    if not ev.per:
        return [name]
    return [f"{name}-{s}" for s in (config.get(name) or {}).get(ev.per, [])]


def check_study_evaluations(config: dict[str, Any]) -> None:
    """Every evaluation a study config names exists, and one run per setting has its settings listed."""
    groups = config.get("evaluations") or {}
    named = [(f"evaluations.{g}", ev) for g in GROUPS if g != "per_table" for ev in groups.get(g) or []]
    named += [(f"evaluations.per_table.{t}", ev) for t, evs in (groups.get("per_table") or {}).items()
              for ev in evs or []]
    for where, name in named:
        ev = evaluation(name, where)
        if ev.per and not (config.get(name) or {}).get(ev.per):
            raise UserError(f"{where}: evaluation '{name}' needs a non-empty list {name}.{ev.per} in the config")
