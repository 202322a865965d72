"""Plan a study: expand the ablation grid of a config into deduplicated, stably named runs.

The Snakefile imports this module (so the planning logic is tested by pytest, not buried in the DAG). A *run* is
one pretraining setting: the base setting plus the knobs that differ. Every table/figure lists the settings it
needs; identical settings are trained once and the run records every table it serves.

The ablations (``ablations:``) vary the *ablation base*: ``base`` with the knobs of ``ablation_base:`` over it
(the paper's Table 1, Figs. 5 and 7 use raw pixels, its final runs normalised pixels); every table also gets
its ablation base as a row, so a table is exactly the runs tagged with it. Run names, and the run ``base``
(the final runs: partial fine-tuning, transfer, the comparison with scratch), are relative to ``base``.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mae.errors import UserError
from mae.knobs import FITTED_TARGETS, KNOBS
from mae.knobs import check as check_knobs
from mae.report.ablations import STUDY_TABLES

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
        (knob, values), = spec.items()
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
    """Every dataset the study names (``pretrain_dataset``, ``transfer_cls.datasets``) is a key of ``datasets``:
    one line naming the missing one (at plan time, so ``snakemake -n`` says it)."""
    datasets = config.get("datasets") or {}
    named = [("pretrain_dataset", config.get("pretrain_dataset"))]
    named += [("transfer_cls.datasets", d) for d in (config.get("transfer_cls") or {}).get("datasets") or []]
    for key, name in named:
        if name not in datasets:
            raise UserError(f"study config '{key}': dataset {name!r} is not under 'datasets:' (defined: "
                            f"{', '.join(map(str, datasets)) or 'none'})")


def needs_target_file(run: Run) -> str | None:
    """'pca' or 'token' when the run's target needs a fitted file, else None."""
    return run.settings["target"] if run.settings["target"] in FITTED_TARGETS else None


def study_plan(config: dict[str, Any]) -> dict[str, Any]:
    """The study manifest that the summary reads: base, runs (settings + tables), scale (JSON values)."""
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

