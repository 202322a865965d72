"""Plan a study: expand the ablation grid of a config into deduplicated, stably named runs.

The Snakefile imports this module (so the planning logic is tested by pytest, not buried in the DAG). A *run* is
one pretraining setting: the base setting plus the knobs that differ. Every table/figure lists the settings it
needs; identical settings are trained once and the run records every table it serves.

The ablations (``ablations:``) vary the *ablation base*: ``base`` with the knobs of ``ablation_base:`` over it
(the paper's Table 1, Figs. 5 and 7 use raw pixels, its final runs normalised pixels); every table also gets
its ablation base as a row, so a table is exactly the runs tagged with it. Run names, and the run ``base``
(the final runs: partial fine-tuning, transfer, the comparison with scratch), are relative to ``base``.

A study of your own images (``config/custom.yaml``, docs/own-data.md): ``data_root`` names the folder of the
pretraining dataset (:func:`use_data_root`); :func:`folder_layout` is how a folder is read (class folders are
labels); without labels the evaluations on the pretraining data are not planned (:func:`unrunnable_evaluations`)
and the plan lists them (:func:`not_run`), so that the summary and tables say ``not run (no labels)``.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mae.errors import UserError
from mae.registry.ablations import STUDY_TABLES
from mae.registry.evaluations import EVALUATIONS, folders
from mae.registry.knobs import FITTED_TARGETS, KNOBS
from mae.registry.knobs import check as check_knobs


@dataclass
class Run:
    name: str
    settings: dict[str, Any]
    tables: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "tables": self.tables}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_name(settings: dict[str, Any], base: dict[str, Any]) -> str:
    """Readable, stable name: the knobs that differ from the base, in KNOBS order; ``base`` when none."""
    parts = [f"{k}-{_fmt(settings[k])}" for k in KNOBS if settings[k] != base[k]]
    return "_".join(parts) if parts else "base"


def _table_settings(table: str, spec: Any) -> list[dict[str, Any]]:
    """A table spec is a one-factor sweep ``{knob: [values]}`` or an explicit list of setting dicts."""
    where = f"ablations.{table}"
    if table not in STUDY_TABLES:
        raise UserError(f"ablations: unknown table '{table}' (valid: {', '.join(STUDY_TABLES)})")
    if isinstance(spec, dict):
        if len(spec) != 1:
            raise UserError(f"{where}: a sweep names exactly one knob (got {', '.join(spec) or 'none'})")
        ((knob, values),) = spec.items()
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}.{knob}: expected a non-empty list of values")
        settings = [{knob: v} for v in values]
    elif isinstance(spec, list) and spec and all(isinstance(s, dict) for s in spec):
        settings = spec
    else:
        raise UserError(f"{where}: expected {{knob: [values]}} or a list of settings")
    return [check_knobs(setting, where) for setting in settings]


def ablation_base(config: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The setting the ablations vary: ``base`` with the study's ``ablation_base`` knobs over it."""
    over = config.get("ablation_base") or {}
    if not isinstance(over, dict):
        raise UserError("ablation_base: expected a mapping of knob: value")
    if "seed" in over:
        raise UserError("ablation_base: 'seed' cannot differ from the base (the seeds come from `seeds`)")
    return {**base, **check_knobs(dict(over), "ablation_base")}


#: parts of a study, besides its tables, whose seeds ``seeds_per`` may set: the base run's evaluations (k-NN,
#: partial fine-tuning, transfer) and the baselines (scratch, and supervised: transfer of the scratch fine-tune)
SEED_GROUPS = ("base_run", "scratch")
#: the inits that are baselines of ours (no pretraining): run folders ``<init>`` and ``<init>_seed-<s>``
BASELINES = ("scratch", "supervised")


def _base(config: dict[str, Any]) -> dict[str, Any]:
    base = check_knobs(dict(config["base"]), "base")
    missing = [k for k in KNOBS if k not in base]
    if missing:
        raise UserError(f"base: missing knob(s) {', '.join(missing)}")
    return base


def _seed_list(values: Any, where: str) -> list[int]:
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}: expected a non-empty list of seeds")
    return list(dict.fromkeys(check_knobs({"seed": s}, where)["seed"] for s in values))


def seeds_of(config: dict[str, Any], part: str | None = None) -> list[int]:
    """The seeds of one part of a study (a table id, or one of :data:`SEED_GROUPS`; None: the base setting):
    ``seeds_per[part]`` where the config sets it, else ``seeds`` (default ``[base.seed]``). Every compared
    setting is run once per seed, baselines and base-run evaluations included."""
    per = config.get("seeds_per") or {}
    if not isinstance(per, dict):
        raise UserError("seeds_per: expected a mapping of table id / base_run / scratch: [seeds]")
    tables = [str(t) for t, spec in (config.get("ablations") or {}).items() if spec is not None]
    for key in per:
        if str(key) not in (*SEED_GROUPS, *tables):
            raise UserError(f"seeds_per: unknown part '{key}' (valid: {', '.join((*SEED_GROUPS, *tables))})")
    if part is not None and part in per:
        return _seed_list(per[part], f"seeds_per.{part}")
    return _seed_list(config.get("seeds") or [config["base"]["seed"]], "seeds")


def base_run_names(config: dict[str, Any]) -> list[str]:
    """The runs of the base setting that get the base-run evaluations: ``base`` and ``seed-<s>``."""
    base = _base(config)
    return [run_name({**base, "seed": s}, base) for s in seeds_of(config, "base_run")]


def baseline_name(init: str, seed: int, base_seed: int) -> str:
    """``scratch`` / ``supervised`` for the base seed, ``scratch_seed-1`` … for the others (as MAE runs)."""
    return init if seed == base_seed else f"{init}_seed-{seed}"


def parse_baseline_name(name: str) -> tuple[str, int | None] | None:
    """``scratch`` -> ('scratch', None); ``supervised_seed-2`` -> ('supervised', 2); an MAE run -> None."""
    init, _, seed = name.partition("_seed-")
    if init not in BASELINES:
        return None
    if not seed:
        return (init, None) if name == init else None
    return (init, int(seed)) if seed.isdigit() else None


def baseline_runs(config: dict[str, Any], init: str = "scratch") -> list[str]:
    """The runs of a baseline, one per seed of ``seeds_per.scratch`` (or ``seeds``): ``scratch``,
    ``scratch_seed-1`` …; ``supervised_seed-<s>`` transfers the fine-tune of ``scratch_seed-<s>``."""
    base_seed = _base(config)["seed"]
    return [baseline_name(init, s, base_seed) for s in seeds_of(config, "scratch")]


def plan_runs(config: dict[str, Any]) -> dict[str, Run]:
    """All pretraining runs of a study, deduplicated, keyed by name (base first, then in table order)."""
    base = _base(config)
    table_base = ablation_base(config, base)
    runs: dict[str, Run] = {}

    def add(setting: dict[str, Any], table: str | None, start: dict[str, Any], seeds: list[int]) -> None:
        for seed in seeds if "seed" not in setting else [setting["seed"]]:
            full = {**start, **setting, "seed": seed}
            name = run_name(full, base)
            run = runs.setdefault(name, Run(name, full))
            if table and table not in run.tables:
                run.tables.append(table)

    add({}, None, base, list(dict.fromkeys(seeds_of(config) + seeds_of(config, "base_run"))))
    for table, spec in (config.get("ablations") or {}).items():
        if spec is None:  # a table switched off (e.g. by an overriding config file)
            continue
        for setting in [{}, *_table_settings(str(table), spec)]:  # the table's base row first
            add(setting, str(table), table_base, seeds_of(config, str(table)))
    return runs


def check_datasets(config: dict[str, Any]) -> None:
    """Every dataset the study names (``pretrain_dataset``, ``transfer_cls.datasets``) is a key of ``datasets``,
    and one of a folder kind has a ``root``: one line naming the missing one (at plan time, so ``snakemake -n``
    says it)."""
    datasets = config.get("datasets") or {}
    named = [("pretrain_dataset", config.get("pretrain_dataset"))]
    named += [("transfer_cls.datasets", d) for d in (config.get("transfer_cls") or {}).get("datasets") or []]
    for key, name in named:
        if name not in datasets:
            raise UserError(
                f"study config '{key}': dataset {name!r} is not under 'datasets:' (defined: "
                f"{', '.join(map(str, datasets)) or 'none'})"
            )
        spec = datasets[name] or {}
        if spec.get("kind") in FOLDER_KINDS and not spec.get("root"):
            how = "--config data_root=/path/to/images" if key == "pretrain_dataset" else f"datasets.{name}.root"
            raise UserError(f"study config '{key}': dataset {name!r} (kind {spec['kind']}) has no folder: give {how}")


# ----------------------------------------------------------------------------------------- your own images
#: the dataset kinds read from a folder by path (``root``)
FOLDER_KINDS = ("imagefolder", "coco", "ade20k")
#: the files an image folder is read from (any case); names that start with "." are never read (.DS_Store, the
#: ._photo.jpg files macOS leaves on other disks)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: why the evaluations on the pretraining data do not run when its folder has no class folders
NO_LABELS = "no labels"


def is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class FolderLayout:
    """How an image folder (kind ``imagefolder``) is read; :func:`folder_layout` finds it, the planner reads
    whether it has labels, :mod:`mae.data.adapters` lists its images by it."""

    root: Path
    split: bool  # root/train and root/val exist: the split is given (else mae prepare-data makes one)
    classes: tuple[str, ...]  # the class folders (of root/train when split); () = no labels

    @property
    def labelled(self) -> bool:
        return bool(self.classes)


def folder_layout(root: str | os.PathLike, unlabelled: bool = False) -> FolderLayout:
    """The layout of an image folder: ``root/{train,val}/`` (a given split) or not, and its classes: the folder
    (``root/train`` for a given split) has labels when it holds two or more sub-folders and no image of its own;
    each sub-folder is a class. One or no sub-folder (or ``unlabelled``): every image below it, no labels. An
    empty folder, half a split (``train/`` without ``val/``) or images beside class folders: one line naming it."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder {'is not a folder' if root.exists() else 'not found'}: {root}")
    halves = [h for h in ("train", "val") if (root / h).is_dir()]
    if len(halves) == 1:
        other = "val" if halves == ["train"] else "train"
        raise UserError(
            f"{root} has a {halves[0]}/ folder but no {other}/ folder: give both (the split) or "
            "neither (a split is made)"
        )
    pool = root / "train" if halves else root
    return FolderLayout(root, bool(halves), () if unlabelled else _class_folders(pool))


def _class_folders(pool: Path) -> tuple[str, ...]:
    try:
        entries = [e for e in os.scandir(pool) if not e.name.startswith(".")]
    except OSError as err:
        raise UserError(f"cannot read folder {pool}: {err.strerror}") from None
    subfolders = sorted(e.name for e in entries if e.is_dir())
    images = sorted(e.name for e in entries if e.is_file() and is_image(e.name))
    if len(subfolders) < 2:
        if not subfolders and not images:
            raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {pool}")
        return ()
    if images:
        raise UserError(
            f"{pool} holds class folders ({', '.join(subfolders[:3])}{', …' if len(subfolders) > 3 else ''}"
            f") and images beside them ({pool / images[0]}): move every image into a class folder, "
            "or read the folder without labels (dataset key unlabelled: true)"
        )
    return tuple(subfolders)


def use_data_root(config: dict[str, Any]) -> None:
    """``data_root`` (``--config data_root=DIR``) is the folder of the pretraining dataset, an ``imagefolder``:
    it becomes that dataset's ``root`` (in ``config``). A missing folder is one line naming it."""
    given = config.get("data_root")
    if given is None:
        return
    name = config.get("pretrain_dataset")
    spec = (config.get("datasets") or {}).get(name) or {}
    if spec.get("kind") != "imagefolder":
        what = f"of kind {spec['kind']}" if spec.get("kind") else "not defined"
        raise UserError(
            f"data_root: the pretraining dataset {name!r} is {what}; data_root is the folder of an "
            "imagefolder dataset (--configfile config/custom.yaml)"
        )
    root = Path(str(given)).expanduser()
    if not str(given).strip() or not root.is_dir():
        raise UserError(f"data_root: {'not a folder' if root.exists() else 'folder not found'}: {given}")
    config["datasets"][name] = {**spec, "root": str(root)}


def dataset_labelled(spec: dict[str, Any] | None) -> bool:
    """Whether a dataset has image labels: every kind but an image folder without class folders. A root that is
    not on this machine counts as labelled (it may exist only where jobs run; ``mae prepare-data`` names it)."""
    if not spec or spec.get("kind") != "imagefolder" or not spec.get("root"):
        return True
    root = Path(str(spec["root"])).expanduser()
    return not root.exists() or folder_layout(root, bool(spec.get("unlabelled"))).labelled


def unrunnable_evaluations(config: dict[str, Any]) -> dict[str, str]:
    """The evaluations the study config names that its data cannot give, with why: without labels in the
    pretraining data, every evaluation on it (fine-tuning, probes, k-NN; the transfers have data of their own).
    They are not planned; the summary and tables say ``not run (<why>)``."""
    if dataset_labelled((config.get("datasets") or {}).get(config.get("pretrain_dataset"))):
        return {}
    groups = config.get("evaluations") or {}
    named = [ev for g in ("every_run", "base_run", "scratch") for ev in groups.get(g) or []]
    named += [ev for evs in (groups.get("per_table") or {}).values() for ev in evs or []]
    return {ev: NO_LABELS for ev in dict.fromkeys(named) if ev in EVALUATIONS and not EVALUATIONS[ev].transfer}


def evaluation_folders(config: dict[str, Any], skip: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """``(run, evaluation, folder)`` of every evaluation of the study (the summary's inputs besides pretraining),
    without the evaluations in ``skip``: the every-run ones and those of the tables a run serves (``per_table``)
    on every pretraining run, the base-run ones on the base setting's runs, the baselines' on ``scratch`` and,
    for a transfer when the baselines fine-tune, on ``supervised`` (the transfer of that fine-tune)."""
    skip = skip or {}
    groups = config.get("evaluations") or {}

    def pick(evs: list[str] | None) -> list[str]:
        return [ev for ev in evs or [] if ev not in skip]

    per_table = {str(t): pick(evs) for t, evs in (groups.get("per_table") or {}).items()}
    scratch = pick(groups.get("scratch"))
    out: list[tuple[str, str, str]] = []

    def add(run: str, evs: list[str]) -> None:
        out.extend((run, ev, folder) for ev in evs for folder in folders(ev, config))

    every = pick(groups.get("every_run"))
    for name, run in plan_runs(config).items():
        add(name, list(dict.fromkeys(every + [ev for t in run.tables for ev in per_table.get(t, [])])))
    for name in base_run_names(config):
        add(name, pick(groups.get("base_run")))
    for ev in scratch:
        for name in baseline_runs(config, "scratch"):
            add(name, [ev])
        if EVALUATIONS[ev].transfer and "finetune" in scratch:
            for name in baseline_runs(config, "supervised"):
                add(name, [ev])
    return list(dict.fromkeys(out))


def not_run(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(run, folder, why)`` of every evaluation the study config asks for that its data cannot give
    (:func:`unrunnable_evaluations`; a supervised transfer needs the baseline's fine-tune)."""
    skip = unrunnable_evaluations(config)
    if not skip:
        return []
    planned = set(evaluation_folders(config, skip))
    return [
        (run, folder, skip.get(ev) or skip["finetune"])
        for run, ev, folder in evaluation_folders(config)
        if (run, ev, folder) not in planned
    ]


def needs_target_file(run: Run) -> str | None:
    """'pca' or 'token' when the run's target needs a fitted file, else None."""
    return run.settings["target"] if run.settings["target"] in FITTED_TARGETS else None


def study_plan(config: dict[str, Any]) -> dict[str, Any]:
    """The study manifest that the summary reads: base, runs (settings + tables), scale (JSON values) and, when
    the data cannot give an evaluation the config asks for, ``not_run`` (run, folder, why; :func:`not_run`)."""
    runs = plan_runs(config)
    plan = {
        "base": config["base"],
        "runs": {name: run.to_dict() for name, run in runs.items()},
        "scale": {
            "model": config["base"]["model"],
            "dataset": config["pretrain_dataset"],
            "epochs": config["base"]["epochs"],
            "name": config.get("scale", ""),
        },
    }
    missing = not_run(config)
    if missing:  # the summary's rows `not run (<why>)`
        plan["not_run"] = [{"run": run, "folder": folder, "why": why} for run, folder, why in missing]
    return json.loads(json.dumps(plan))


def write_plan(config: dict[str, Any], path: str | Path) -> None:
    """:func:`study_plan` of ``config`` as a JSON file."""
    from mae.utils.io import atomic_write_json

    atomic_write_json(path, study_plan(config))


def plan_is_current(config: dict[str, Any], path: str | Path) -> bool:
    """Whether ``path`` (a study.json) holds the plan of ``config``: compared by content, so that a fresh clone
    (whose Snakemake has no record of the params that made the committed file) still notices a changed config."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")) == study_plan(config)
    except (OSError, ValueError):
        return False


def cli_overrides(section: dict[str, Any] | None) -> str:
    """Render a config section as ``--set key=value`` flags (values as JSON, which YAML parses back)."""
    flags: list[str] = []
    for key, value in (section or {}).items():
        flags.append(f"--set {key}={_shell_quote(json.dumps(value))}")
    return " ".join(flags)


def cli_flags(section: dict[str, Any] | None) -> str:
    """Render a config section as plain flags: ``{img_size: 32, verify: true}`` -> ``--img-size 32 --verify``."""
    flags: list[str] = []
    for key, value in (section or {}).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value not in (False, None):
            flags.append(f"{flag} {_shell_quote(str(value))}")
    return " ".join(flags)


def _shell_quote(text: str) -> str:
    return shlex.quote(text)
