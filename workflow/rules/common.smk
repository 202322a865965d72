# Shared helpers of the DAG: the run plan (mae.study), paths, and how a rule calls the `mae` CLI.
import os
import sys

from mae.study import cli_flags, cli_overrides, needs_target_file, plan_runs


envvars:
    "PATH",


# Rules call the `mae` console script installed beside this Snakemake (also when the env is not activated).
os.environ["PATH"] = os.pathsep.join(
    [os.path.dirname(sys.executable), os.environ.get("PATH", "")]
)

R = config["results"]
RUNS = plan_runs(config)
BASE = "base"
PRETRAIN_DATA = config["pretrain_dataset"]
EVALS = config["evaluations"]
EVERY_RUN = EVALS.get("every_run", [])
BASE_RUN = EVALS.get("base_run", [])
SCRATCH = EVALS.get("scratch", [])
# Knob name in the study config -> key of `mae pretrain`.
PRETRAIN_KEYS = {"sampling": "sampler"}


wildcard_constraints:
    run="|".join(sorted(RUNS)),
    any_run="|".join(sorted(RUNS) + ["scratch", "supervised"]),
    dataset="[A-Za-z0-9_]+",
    blocks="[0-9]+",


def data_dir(name):
    return f"{R}/data/{name}"


def stage_flags(section, drop=()):
    """`--device` and the config section of a stage as `--set key=value` flags (keys the DAG itself uses
    are dropped)."""
    values = {k: v for k, v in (config.get(section) or {}).items() if k not in drop}
    return f"--device {config['device']} {cli_overrides(values)}"


def run_flags(run):
    """The pretraining knobs of a run as `--set` flags for `mae pretrain`."""
    settings = {PRETRAIN_KEYS.get(k, k): v for k, v in RUNS[run].settings.items()}
    return cli_overrides(settings)


def target_file(run):
    kind = needs_target_file(RUNS[run])
    if kind == "pca":
        return f"{R}/targets/{PRETRAIN_DATA}/pca.pt"
    if kind == "token":
        return f"{R}/targets/{PRETRAIN_DATA}/tokenizer.pt"
    return None


def pretrain_done(run):
    return f"{R}/runs/{run}/pretrain/metrics.json"


def init_input(wildcards):
    """What an evaluation/transfer of `any_run` starts from: a pretrain run, nothing (scratch) or the
    supervised encoder (the from-scratch fine-tuned model, the paper's supervised baseline).
    """
    run = wildcards.any_run
    if run == "scratch":
        return []
    if run == "supervised":
        return [f"{R}/runs/scratch/finetune/metrics.json"]
    return [pretrain_done(run)]


def init_flag(wildcards):
    run = wildcards.any_run
    if run == "scratch":  # random init of the base run's architecture
        return f"--scratch --set model={config['base']['model']}"
    if run == "supervised":
        return f"--init {R}/runs/scratch/finetune/model.pt"
    return f"--init {R}/runs/{run}/pretrain/checkpoint.pt"


def all_metrics():
    """Every metrics file of the study (the summary's inputs)."""
    files = []
    for run in RUNS:
        files.append(pretrain_done(run))
        files += [f"{R}/runs/{run}/{ev}/metrics.json" for ev in EVERY_RUN]
    for ev in BASE_RUN:
        if ev == "partial_ft":
            files += [
                f"{R}/runs/{BASE}/partial_ft-{k}/metrics.json"
                for k in config["partial_ft"]["blocks"]
            ]
        elif ev == "transfer_cls":
            files += [
                f"{R}/runs/{BASE}/transfer_cls-{d}/metrics.json"
                for d in config["transfer_cls"]["datasets"]
            ]
        else:
            files.append(f"{R}/runs/{BASE}/{ev}/metrics.json")
    for ev in SCRATCH:
        files.append(f"{R}/runs/scratch/{ev}/metrics.json")
        if ev.startswith("transfer_") and "finetune" in SCRATCH:
            files.append(f"{R}/runs/supervised/{ev}/metrics.json")
    return files


def finetune_flags(wildcards):
    """Fine-tuning settings; the from-scratch baseline adds its own overrides (`scratch_finetune`)."""
    flags = stage_flags("finetune")
    if wildcards.any_run == "scratch":
        flags = f"{flags} {cli_overrides(config.get('scratch_finetune'))}"
    return flags


def runs_dir(wildcards, input):
    """results/runs, found from the summary's study plan (results/summary/study.json)."""
    return os.path.join(os.path.dirname(os.path.dirname(input.plan[0])), "runs")


def partial_ft_flags(wildcards):
    """K = 0 is linear probing (the `linprobe` settings); K > 0 uses the fine-tuning recipe with the
    `partial_ft` overrides (paper Fig. 9)."""
    if int(wildcards.blocks) == 0:
        return stage_flags("linprobe")
    overrides = {k: v for k, v in config["partial_ft"].items() if k != "blocks"}
    return f"{stage_flags('finetune')} {cli_overrides(overrides)}"
