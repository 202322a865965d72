"""The evaluations of a pretrained encoder, declared once.

Each :class:`Evaluation` names its ``mae`` sub-command and module, its settings class, its folder under
``runs/<run>/`` and, for an evaluation run once per setting (partial fine-tuning per block count, classification
transfer per dataset), the key of its config section that lists the settings (folders ``<name>-<setting>``), and
what its Snakemake job needs. The ``mae`` command line (:mod:`mae.cli`), the DAG (``workflow/rules/eval.smk``: one
rule per evaluation, of one shape; ``common.smk``: which metrics files a study needs), the plan-time checks of a
study config (:func:`check_study_evaluations`, :func:`check_study_sections`) and the summary
(:mod:`mae.report.summary`: which folders are evaluations) read :data:`EVALUATIONS`. Installed packages add
evaluations through the entry-point group ``mae_study.evaluations``. Kept free of torch and pandas: the Snakefile
imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any

from mae.errors import UserError
from mae.registry import choices as C


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: its command, settings and folder, and what its Snakemake job needs (one generic rule,
    ``workflow/rules/eval.smk``, is made from these fields for every evaluation)."""

    name: str  # folder, config-section, rule and stage name; the command is the name with dashes
    module: str  # defines add_arguments(parser) and main(args)
    help: str
    config: str  # its settings class, "module:Class" (the shipped ones in mae.stage_configs: no torch import)
    per: str = ""  # key of the config section listing its settings: one run per setting, folder <name>-<setting>
    flag: str = ""  # per-setting: the command's flag that takes the setting ("": the setting names the dataset)
    transfer: bool = False  # runs on another task/dataset (Tables 4-7); the supervised encoder is transferred too
    dag_keys: tuple[str, ...] = ()  # keys of its config section that the DAG uses (not passed to the command)
    distributed: bool = True  # its job may start several processes (torchrun on a multi-GPU cluster job)
    mem_mb: int = 4000  # the job's memory and time limits on a cluster (minutes)
    runtime: int = 120

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def wildcard(self) -> str:
        """The rule's wildcard of a per-setting evaluation: the flag's name, else ``dataset``."""
        return self.flag.lstrip("-") if self.flag else "dataset"

    def config_class(self) -> type:
        return C.resolve(self.config, f"evaluation '{self.name}'")


SC = "mae.stage_configs:"
#: the shipped evaluations
BUILTIN: tuple[Evaluation, ...] = (
    Evaluation("finetune", "mae.stages.finetune", "end-to-end fine-tuning (or --scratch)", SC + "FinetuneConfig"),
    Evaluation(
        "linprobe", "mae.stages.linprobe", "linear probing of the frozen encoder", SC + "LinprobeConfig", runtime=60
    ),
    # K > 0 blocks: the fine-tuning settings with the partial_ft section over them; K = 0: the linprobe settings
    # head: probe (K > 0 starts from the run's trained linear probe, `--head-from`) or new (a fresh head)
    Evaluation(
        "partial_ft",
        "mae.stages.partial_ft",
        "fine-tune the last K blocks",
        SC + "FinetuneConfig",
        per="blocks",
        flag="--blocks",
        dag_keys=("head",),
    ),
    Evaluation(
        "knn",
        "mae.stages.knn",
        "weighted k-NN monitor on frozen features",
        SC + "KnnConfig",
        distributed=False,
        runtime=30,
    ),
    Evaluation(
        "transfer_det",
        "mae.stages.transfer_det",
        "ViTDet-style Mask R-CNN detection transfer",
        SC + "DetConfig",
        transfer=True,
        dag_keys=("dataset",),
        mem_mb=6000,
        runtime=240,
    ),
    Evaluation(
        "transfer_seg",
        "mae.stages.transfer_seg",
        "semantic segmentation transfer",
        SC + "SegConfig",
        transfer=True,
        dag_keys=("dataset",),
        mem_mb=6000,
        runtime=240,
    ),
    Evaluation(
        "transfer_cls",
        "mae.stages.transfer_cls",
        "classification transfer",
        SC + "TransferClsConfig",
        per="datasets",
        transfer=True,
    ),
)
#: entry-point group of plug-in evaluations: each names an :class:`Evaluation` in a module that imports no torch
GROUP = "mae_study.evaluations"


def _plugins() -> list[Evaluation]:
    found = []
    for ep in metadata.entry_points(group=GROUP):
        ev = C.resolve(ep.value, f"entry point {GROUP}:{ep.name}")
        if not isinstance(ev, Evaluation) or ev.name != ep.name:
            raise UserError(f"entry point {GROUP}:{ep.name}: {ep.value} must be an Evaluation named {ep.name!r}")
        found.append(ev)
    return found


#: every evaluation: the shipped ones, then the installed plug-ins'
EVALUATIONS: dict[str, Evaluation] = {e.name: e for e in (*BUILTIN, *_plugins())}


def schema_view(config: dict[str, Any], schema_path: str) -> dict[str, Any]:
    """``config`` without the sections of evaluations that the JSON schema does not list (a plug-in's, a new
    one's): the schema's top level rejects unknown keys, and :func:`check_study_sections` checks those sections
    against their settings classes instead."""
    import yaml

    with open(schema_path) as fh:
        known = yaml.safe_load(fh)["properties"]
    return {k: v for k, v in config.items() if k in known or k not in EVALUATIONS}


#: the lists under `evaluations:` in a study config
GROUPS = ("every_run", "base_run", "scratch", "per_table")


#: sections of a study config laid over another stage's section (scratch fine-tuning, partial fine-tuning and
#: classification transfer use the fine-tuning recipe with their own keys over it)
OVERLAYS = {"scratch_finetune": "finetune", "partial_ft": "finetune", "transfer_cls": "finetune"}
#: ``partial_ft.head``: where the head of K >= 1 blocks starts (the default: the trained linear probe)
PARTIAL_FT_HEADS = ("probe", "new")


def partial_ft_head(config: dict[str, Any]) -> str:
    """``probe`` or ``new``, checked: a probe head needs the probe's pooling to be the fine-tuning one."""
    section = config.get("partial_ft") or {}
    head = section.get("head", "probe") if isinstance(section, dict) else "probe"
    if head not in PARTIAL_FT_HEADS:
        raise UserError(f"study config 'partial_ft: head': must be one of {', '.join(PARTIAL_FT_HEADS)}, got {head!r}")
    groups = config.get("evaluations") or {}
    named = [ev for group in groups.values() for ev in (group.values() if isinstance(group, dict) else [group])]
    used = any("partial_ft" in (ev if isinstance(ev, list) else [ev]) for ev in named)
    if head == "probe" and used and any(int(k) > 0 for k in section.get("blocks", [])):
        from mae.stage_configs import FinetuneConfig, LinprobeConfig

        pools = [
            (config.get(section) or {}).get("global_pool", cls.global_pool)
            for section, cls in (("linprobe", LinprobeConfig), ("finetune", FinetuneConfig))
        ]
        if pools[0] != pools[1]:
            raise UserError(
                f"study config 'partial_ft: head: probe' starts K >= 1 blocks from the linear probe, "
                f"but it pools with global_pool={pools[0]!r} and fine-tuning with {pools[1]!r}: set "
                "the same global_pool, or 'partial_ft: head: new'"
            )
    return head


def _section_classes() -> dict[str, Any]:
    """Stage section of a study config -> a function giving its settings class."""
    from mae.config import PretrainConfig

    return {
        "pretrain": lambda: PretrainConfig,
        "scratch_finetune": EVALUATIONS["finetune"].config_class,
        **{e.name: e.config_class for e in EVALUATIONS.values()},
    }


def trains(section: str) -> bool:
    """Whether the stage of ``section`` trains through ``fit`` (its settings have ``on_change``)."""
    from dataclasses import fields

    return any(f.name == "on_change" for f in fields(_section_classes()[section]()))


def stage_settings(section: str, values: dict[str, Any] | None) -> dict[str, Any]:
    """A study config's section without the keys the DAG itself uses (an evaluation's list of settings, e.g.
    ``partial_ft.blocks``, and its ``dag_keys``): what its command gets as ``--set`` flags."""
    ev = EVALUATIONS.get(section)
    drop = (ev.per, *ev.dag_keys) if ev else ()
    return {k: v for k, v in (values or {}).items() if k not in drop}


def check_study_sections(config: dict[str, Any]) -> None:
    """Every stage section of a study config (``pretrain:``, ``finetune:``, …) against its settings class, at
    plan time: a typo'd key or a bad value fails ``snakemake -n`` with one line naming it."""
    from mae.config import config_from_mapping

    partial_ft_head(config)
    for section, config_class in _section_classes().items():
        values = config.get(section)
        if values is None:
            continue
        cls = config_class()
        where = f"study config '{section}:'"
        if not isinstance(values, dict):
            raise UserError(f"{where} must be a mapping of key: value")
        if "seed" in values:
            raise UserError(
                f"{where} sets 'seed': the seeds of a study come from `seeds` / `seeds_per` (every "
                "run of a setting, baselines included, once per seed)"
            )
        own = stage_settings(section, values)
        base = (config.get(OVERLAYS[section]) or {}) if section in OVERLAYS else {}
        try:
            config_from_mapping(cls, {**base, **own})
        except UserError as err:
            raise UserError(f"{where}: {err}") from None


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
    named += [
        (f"evaluations.per_table.{t}", ev) for t, evs in (groups.get("per_table") or {}).items() for ev in evs or []
    ]
    for where, name in named:
        ev = evaluation(name, where)
        if ev.per and not (config.get(name) or {}).get(ev.per):
            raise UserError(f"{where}: evaluation '{name}' needs a non-empty list {name}.{ev.per} in the config")
