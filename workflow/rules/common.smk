# Shared helpers of the DAG: the run plan (mae.study), paths, and how a rule calls the `mae` CLI.
import os
import shlex
import sys

from mae.registry.evaluations import (
    EVALUATIONS,
    OVERLAYS,
    check_study_evaluations,
    check_study_sections,
    folders,
    partial_ft_head,
    stage_settings,
    trains,
)
from mae.config import load_yaml_strict
from mae.tools.launch import launcher
from mae.study import (
    base_run_names,
    baseline_runs,
    cli_flags,
    check_datasets,
    cli_overrides,
    evaluation_folders,
    needs_target_file,
    parse_baseline_name,
    plan_is_current,
    plan_runs,
    unrunnable_evaluations,
    use_data_root,
)
from mae.utils.lock import acquire as take_study_lock, release as release_study_lock
from mae.tools import warmstart


envvars:
    "PATH",


# Rules call the `mae` console script installed beside this Snakemake (also when the env is not activated).
os.environ["PATH"] = os.pathsep.join(
    [os.path.dirname(sys.executable), os.environ.get("PATH", "")]
)

# Snakemake's YAML loader keeps the last of a key given twice in one mapping, silently: refuse it, naming it.
for configfile_path in workflow.configfiles:
    if str(configfile_path).endswith((".yaml", ".yml")):
        load_yaml_strict(open(configfile_path).read(), str(configfile_path))

R = config["results"]
# `--config data_root=DIR`: the image folder of the pretraining dataset (config/custom.yaml, docs/own-data.md)
use_data_root(config)
check_datasets(config)
RUNS = plan_runs(config)
check_study_evaluations(config)
check_study_sections(config)
# Evaluations the data cannot give (an image folder without class folders has no labels): not planned, and the
# summary and tables say `not run (no labels)` (study.json lists them, mae.study.not_run).
NOT_RUN = unrunnable_evaluations(config)
# The runs of the base setting that get the base-run evaluations (one per seed: base, seed-1, ...) and the
# baselines' runs (scratch, scratch_seed-1, ...; supervised_seed-<s> transfers scratch_seed-<s>'s fine-tune).
BASE_RUNS = base_run_names(config)
SCRATCH_RUNS = baseline_runs(config, "scratch")
SUPERVISED_RUNS = baseline_runs(config, "supervised")
PRETRAIN_DATA = config["pretrain_dataset"]
EVALS = config["evaluations"]
EVERY_RUN = [ev for ev in EVALS.get("every_run", []) if ev not in NOT_RUN]
BASE_RUN = [ev for ev in EVALS.get("base_run", []) if ev not in NOT_RUN]
SCRATCH = [ev for ev in EVALS.get("scratch", []) if ev not in NOT_RUN]
# Extra evaluations of every run of a table, e.g. {"1d": [transfer_det, transfer_seg]} for Table 7.
PER_TABLE = {
    table: [ev for ev in evs or [] if ev not in NOT_RUN]
    for table, evs in (EVALS.get("per_table") or {}).items()
}


wildcard_constraints:
    run="|".join(sorted(RUNS)),
    any_run="|".join(sorted(RUNS) + SCRATCH_RUNS + SUPERVISED_RUNS),
    dataset="[A-Za-z0-9_]+",
    blocks="[0-9]+",


# The study plan's config: not `partial` (a partial report) nor `warm_start` (how jobs start), which must not
# make the plan (and every job after it) out of date.
PLAN_CONFIG = {k: v for k, v in config.items() if k not in ("partial", "warm_start")}


def plan_request():
    """The study_plan rule's input: none while summary/study.json holds this config's plan; otherwise a file
    written now (newer than study.json), so that the plan is rebuilt even without Snakemake's record of the
    params that made it (a fresh clone of a committed study: the config edited, the plan kept). A dry run
    writes it too (a one-line marker in the results folder)."""
    plan = f"{R}/summary/study.json"
    if not os.path.exists(plan) or plan_is_current(PLAN_CONFIG, plan):
        return []
    request = f"{R}/.plan_request"
    os.makedirs(R, exist_ok=True)
    with open(request, "w") as fh:
        fh.write(
            "the config's study plan differs from summary/study.json: rebuild it\n"
        )
    return [request]


def config_flag(key, default=False):
    """A true/false config key; `--config key=true` passes a string (the schema accepts both)."""
    return str(config.get(key, default)).lower() == "true"


def data_dir(name):
    return f"{R}/data/{name}"


def section_overrides(section):
    """A stage's config section as `--set key=value` flags (mae.registry.evaluations.stage_settings)."""
    return cli_overrides(stage_settings(section, config.get(section)))


def stage_flags(section):
    """`--device` and the stage's section as `--set` flags; training stages restart from zero when a checkpoint
    left in the run folder was made with other settings or inputs (Snakemake reruns a job only then).
    """
    restart = " --set on_change=restart" if trains(section) else ""
    return f"--device {config['device']} {section_overrides(section)}{restart}"


def launch(wildcards, resources):
    """The command that starts `mae` in a training job (one process, torchrun on one node, or srun + torchrun
    on several; mae/tools/launch.py), from the job's `nodes` and `gpu`/`gres` resources (profiles/slurm).
    """
    return launcher({name: resources[name] for name in resources.keys()})


def run_flags(run):
    """The pretraining knobs of a run as `--set` flags for `mae pretrain`."""
    return cli_overrides(RUNS[run].settings)


def target_file(run):
    kind = needs_target_file(RUNS[run])
    if kind == "pca":
        return f"{R}/targets/{PRETRAIN_DATA}/pca.pt"
    if kind == "token":
        return f"{R}/targets/{PRETRAIN_DATA}/tokenizer.pt"
    return None


def pretrain_done(run):
    return f"{R}/runs/{run}/pretrain/metrics.json"


def scratch_of(run):
    """The scratch run whose fine-tuned encoder a supervised run transfers (the same seed)."""
    return run.replace("supervised", "scratch", 1)


def init_input(wildcards):
    """What an evaluation/transfer of `any_run` starts from: a pretrain run, nothing (scratch) or the
    supervised encoder (the from-scratch fine-tuned model, the paper's supervised baseline).
    """
    run = wildcards.any_run
    baseline = parse_baseline_name(run)
    if baseline is None:
        return [pretrain_done(run)]
    if baseline[0] == "scratch":
        return []
    return [f"{R}/runs/{scratch_of(run)}/finetune/metrics.json"]


def init_flag(wildcards):
    """How the encoder starts; a baseline run of another seed than the base's also seeds its evaluation
    (`--set seed=<s>`: random init, head, data order); MAE runs' evaluations keep the stage's seed.
    """
    run = wildcards.any_run
    baseline = parse_baseline_name(run)
    if baseline is None:
        return f"--init {shlex.quote(f'{R}/runs/{run}/pretrain/checkpoint.pt')}"
    init, seed = baseline
    seeded = "" if seed is None else f" --set seed={seed}"
    if init == "scratch":  # random init of the base run's architecture
        return f"--scratch --set model={config['base']['model']}{seeded}"
    return (
        f"--init {shlex.quote(f'{R}/runs/{scratch_of(run)}/finetune/model.pt')}{seeded}"
    )


def eval_files(run, ev):
    """The metrics files of evaluation `ev` of `run` (one per block count / transfer dataset)."""
    return [f"{R}/runs/{run}/{folder}/metrics.json" for folder in folders(ev, config)]


def all_metrics():
    """Every metrics file of the study (the summary's inputs): each run's pretraining and every evaluation the
    planner lists (mae.study.evaluation_folders), but those the data cannot give."""
    files = [pretrain_done(run) for run in RUNS]
    files += [
        f"{R}/runs/{run}/{folder}/metrics.json"
        for run, _, folder in evaluation_folders(config, NOT_RUN)
    ]
    return files


def study_parts():
    """Target files per part of the study: each ablation table/figure (its runs, every-run evaluations), `fig9`
    (partial fine-tuning), `scratch` (Table 3 and the random-init probe) and `transfer` (Tables 4-6).
    """
    parts = {}
    for run_name, run in RUNS.items():
        for table in run.tables:
            files = parts.setdefault(table, [])
            files.append(pretrain_done(run_name))
            evals = EVERY_RUN + PER_TABLE.get(table, [])
            files += [f for ev in evals for f in eval_files(run_name, ev)]
    base_evals = [
        f for run in BASE_RUNS for ev in EVERY_RUN for f in eval_files(run, ev)
    ]
    if "partial_ft" in BASE_RUN:
        parts["fig9"] = base_evals + [
            f for run in BASE_RUNS for f in eval_files(run, "partial_ft")
        ]
    scratch = [ev for ev in SCRATCH if not EVALUATIONS[ev].transfer]
    if scratch:
        parts["scratch"] = base_evals + [
            f for ev in scratch for run in SCRATCH_RUNS for f in eval_files(run, ev)
        ]
    transfer = [ev for ev in BASE_RUN if EVALUATIONS[ev].transfer]
    if transfer:
        baselines = SCRATCH_RUNS + (SUPERVISED_RUNS if "finetune" in SCRATCH else [])
        parts["transfer"] = [
            f
            for ev in transfer
            for run in BASE_RUNS + (baselines if ev in SCRATCH else [])
            for f in eval_files(run, ev)
        ]
    return {part: list(dict.fromkeys(files)) for part, files in parts.items()}


def finetune_flags(wildcards):
    """Fine-tuning settings; the from-scratch baseline adds its own overrides (`scratch_finetune`)."""
    flags = stage_flags("finetune")
    if (parse_baseline_name(wildcards.any_run) or (None,))[0] == "scratch":
        flags = f"{flags} {cli_overrides(config.get('scratch_finetune'))}"
    return flags


# The one evaluation rule shape (workflow/rules/eval.smk), from an evaluation's registry entry.
def eval_folder(ev):
    """The folder under runs/<run>/, with the setting's wildcard of a per-setting evaluation."""
    return f"{ev.name}-{{{ev.wildcard}}}" if ev.per else ev.name


def eval_data(ev):
    """The dataset: the setting's (transfer_cls-<dataset>), the section's `dataset`, or the pretraining data."""
    if ev.per and not ev.flag:
        return lambda wc: data_dir(wc[ev.wildcard])
    section = (config.get(ev.name) or {}) if "dataset" in ev.dag_keys else {}
    return data_dir(section.get("dataset", PRETRAIN_DATA))


def eval_stage(ev):
    """`--device` and the settings; sections laid over another (mae.registry.evaluations.OVERLAYS) add theirs to
    it: classification transfer and partial fine-tuning (K > 0) use the study's fine-tuning recipe, as the paper
    does (the class defaults alone are the ImageNet recipe)."""
    if ev.name == "finetune":
        return finetune_flags
    if ev.name in OVERLAYS:
        return f"{stage_flags(OVERLAYS[ev.name])} {section_overrides(ev.name)}"
    return stage_flags(ev.name)


def eval_extras(ev):
    """Inputs and flags of one evaluation beyond the shape. partial_ft.head probe (the default): K > 0 blocks start
    their head from this run's trained linear probe (K = 0 is the probe itself: partial_ft_linear, below).
    """
    if ev.name != "partial_ft":
        return {}, {}
    probe = lambda wc: (
        [f"{R}/runs/{wc.any_run}/linprobe/metrics.json"]
        if partial_ft_head(config) == "probe"
        else []
    )
    head = lambda wc, input: (
        f"--head-from {shlex.quote(os.path.dirname(input.probe[0]))}"
        if input.probe
        else ""
    )
    return {"probe": probe}, {"head": head}


def eval_params(ev):
    params = {"launcher": launch} if ev.distributed else {}
    params.update(
        out=lambda wc, output: os.path.dirname(output.metrics),
        init=init_flag,
        stage=eval_stage(ev),
    )
    return {**params, **eval_extras(ev)[1]}


def eval_shell(ev):
    launcher = "{params.launcher}" if ev.distributed else "mae"
    setting = f" {ev.flag} {{wildcards.{ev.wildcard}}}" if ev.flag else ""
    extras = "".join(f" {{params.{name}}}" for name in eval_extras(ev)[1])
    return (
        f"OMP_NUM_THREADS={{threads}} {launcher} {ev.command}{setting} --data {{input.data:q}} --out {{params.out:q}}"
        f" {{params.init}}{extras} {{params.stage}} > {{log:q}} 2>&1"
    )


def eval_shell_of(rule):
    """The shell command of an evaluation's rule. Snakemake evaluates a `shell:` expression when it defines a
    rule, and again when a job runs, after the loop of eval.smk has moved on: there the name of the job's rule
    (the job's variable `rule`) says which; partial_ft_linear is a variant of partial_ft.
    """
    return eval_shell(
        EVALUATIONS["partial_ft" if rule == "partial_ft_linear" else rule]
    )


def runs_dir(wildcards, input):
    """results/runs, found from the summary's study plan (results/summary/study.json)."""
    return os.path.join(os.path.dirname(os.path.dirname(input.plan[0])), "runs")


# One study per results folder (mae/utils/lock.py): real runs only; dry runs and remote jobs take no lock.
# Jobs this process runs on this machine start in a warm-start server that has imported torch once
# (mae/tools/warmstart.py); cluster executors (jobs on other nodes) start none.
WARM_START = {}


onstart:
    take_study_lock(R, {"scale": config.get("scale", "")})
    if config_flag("warm_start", True) and not workflow.non_local_exec:
        WARM_START["server"] = warmstart.start("logs/warm_start.log")


onsuccess:
    release_study_lock(R)
    warmstart.stop(WARM_START.pop("server", None))


onerror:
    release_study_lock(R)
    warmstart.stop(WARM_START.pop("server", None))
