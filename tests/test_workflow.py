"""The Snakemake DAG: shape of the smoke/default/paper studies, config validation, and a real smoke run."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests import plans
from tests.test_report_html import assert_report_complete

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def dry_run(repo_root, *args, cwd=None, results=None, config=()):
    """A dry run into an empty results folder (so that earlier local results never hide jobs)."""
    results = results or Path(tempfile.mkdtemp()) / "results"
    proc = subprocess.run(
        [*SNAKEMAKE, "-n", "--quiet", "rules", "--cores", "2", *args, "--config", f"results={results}", *config],
        cwd=cwd or repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc


def job_counts(output: str) -> dict[str, int]:
    counts = {}
    for line in output.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_smoke_dag_shape(repo_root):
    proc = dry_run(repo_root, "--configfile", "config/smoke.yaml")
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout + proc.stderr)
    # base, 1a depth 2, 1c mask token, 1d pca/token, 1e none, 1f grid, fig5 0.5, fig7 2 epochs: 9 runs, each once.
    assert counts["pretrain"] == 9
    assert counts["linprobe"] == 10  # every run + the random-init probe
    assert counts["knn"] == 1  # the base run only
    assert counts["finetune"] == 10  # every run + the from-scratch baseline
    assert counts["partial_ft"] == 1 and counts["partial_ft_linear"] == 1  # K = 0 reuses the base run's probe
    assert counts["transfer_det"] == counts["transfer_seg"] == 3  # MAE, scratch, supervised
    assert counts["fit_pca"] == counts["train_tokenizer"] == 1
    for rule in ("summary", "tables", "figures", "claims", "study_plan"):
        assert counts[rule] == 1


def test_default_and_paper_dag_shapes(repo_root):
    default = job_counts((p := dry_run(repo_root)).stdout + p.stderr)
    assert default["pretrain"] == 10 * 3, p.stderr  # 10 settings x 3 seeds
    assert default["transfer_cls"] == 3 * 3  # (MAE, scratch, supervised) x 3 seeds x digits (cpu.yaml adds shapes2)
    cpu = job_counts((p := dry_run(repo_root, "--configfile", "config/cpu.yaml")).stdout + p.stderr)
    assert cpu["pretrain"] == 21 * 3, p.stderr  # 21 settings x 3 seeds, the base setting's evaluations and the
    # baselines (scratch, supervised) three as well -- 272 jobs
    assert cpu["finetune"] == cpu["linprobe"] == 21 * 3 + 3  # every run + scratch, scratch_seed-1, -2
    assert cpu["knn"] == 3 and cpu["partial_ft"] == 3 * 2 and cpu["partial_ft_linear"] == 3  # K = 1, 2 of 3 blocks
    assert cpu["transfer_cls"] == 3 * 3 * 2  # (MAE, scratch, supervised) x 3 seeds x (shapes2, digits)
    assert cpu["transfer_det"] == cpu["transfer_seg"] == 3 * 3 + 3 * 3  # inits x seeds + Table 7's other targets
    assert cpu["total"] == 272
    gpu = job_counts((p := dry_run(repo_root, "--configfile", "config/gpu.yaml")).stdout + p.stderr)
    assert p.returncode == 0, p.stderr
    assert gpu["pretrain"] == cpu["pretrain"]  # the CPU study's grid, on the micro ViT's 6 blocks:
    assert gpu["partial_ft"] == 3 * 3 and gpu["partial_ft_linear"] == 3  # K = 1, 2, 4
    assert gpu["total"] == 275


def test_study_parts_are_targets(repo_root):
    """A long study runs in parts: `part_<table>` builds that table's runs and evaluations only."""
    fig5 = job_counts((p := dry_run(repo_root, "part_fig5", "--configfile", "config/cpu.yaml")).stdout + p.stderr)
    assert p.returncode == 0, p.stderr
    assert fig5["pretrain"] == fig5["linprobe"] == fig5["finetune"] == 3 * 5  # 5 ratios x the table's 3 seeds
    assert "transfer_det" not in fig5 and "summary" not in fig5
    part = job_counts((p := dry_run(repo_root, "part_transfer")).stdout + p.stderr)
    assert part["transfer_det"] == 3 * 3 and part["pretrain"] == 3 and "linprobe" not in part  # 3 seeds
    partial = dry_run(repo_root, "claims", "--forcerun", "summary", config=["partial=true"])
    assert job_counts(partial.stdout + partial.stderr).get("pretrain") is None, partial.stderr
    paper = job_counts((p := dry_run(repo_root, "--configfile", "config/paper.yaml")).stdout + p.stderr)
    assert p.returncode == 0, p.stderr
    assert paper["pretrain"] == 32
    assert paper["partial_ft"] == 7 and paper["partial_ft_linear"] == 1  # K = 0: the linear probe, reused
    assert paper["transfer_det"] == paper["transfer_seg"] == 3 + 3  # Table 4/5 inits + Table 7 target runs
    assert paper["prepare_data"] == 5  # ImageNet, COCO, ADE20K, iNat, Places described by path


def test_paper_scratch_baselines_use_the_base_architecture(repo_root, tmp_path):
    proc = subprocess.run(
        [
            *SNAKEMAKE,
            "-n",
            "-p",
            "--cores",
            "2",
            "--configfile",
            "config/paper.yaml",
            "--config",
            f"results={tmp_path / 'results'}",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    scratch = [line for line in proc.stdout.splitlines() if " --scratch " in line]
    assert len(scratch) == 4  # finetune, linprobe, transfer_det, transfer_seg
    assert all("--scratch --set model=mae_vit_large_patch16 " in line for line in scratch)
    det = next(line for line in scratch if "transfer-det" in line)
    assert "--set train_images=null" in det  # all of COCO, not the toy config's 600 images
    ft = next(line for line in scratch if "mae finetune" in line)
    assert "--set ema_decay=0.9999" in ft and "--set betas=" in ft  # App. A.2: EMA, beta2 0.95
    # Table 1 ablations pretrain on raw pixels, the final run (transfers, partial fine-tuning) on normalised pixels
    targets = dict(
        re.findall(r"mae pretrain .*?--out \S*/runs/(\S+)/pretrain .*?--set target='\"(\w+)\"'", proc.stdout)
    )
    assert len(targets) == 32 and targets["base"] == "norm_pixel" and targets["target-pixel"] == "pixel"
    assert {t for run, t in targets.items() if run not in ("base", "target-pca", "target-token")} == {"pixel"}
    inits = set(re.findall(r"mae (?:transfer-\S+|partial-ft) .*?--init \S*/runs/(\S+?)/", proc.stdout))
    assert inits == {"base", "scratch", "target-pixel", "target-pca", "target-token"}  # Table 7: 1d's runs


def test_mae_vs_scratch_dag_shape(repo_root):
    counts = job_counts((p := dry_run(repo_root, "--configfile", "config/mae_vs_scratch.yaml")).stdout + p.stderr)
    assert p.returncode == 0, p.stderr
    assert counts["pretrain"] == 3  # every ablation switched off: the base run only, 3 seeds
    assert counts["finetune"] == counts["linprobe"] == 2 * 3  # base run + random init, 3 seeds each
    assert counts["knn"] == 3 and "transfer_det" not in counts


def test_transfer_budget_dag_shape(repo_root):
    """config/transfer_budget.yaml: the base run and the two baselines, 3 seeds, their dense transfers only."""
    p = dry_run(repo_root, "--configfile", "config/transfer_budget.yaml")
    assert p.returncode == 0, p.stderr
    counts = job_counts(p.stdout + p.stderr)
    assert counts["pretrain"] == 3 and counts["finetune"] == 3  # base seeds; the supervised init (scratch fine-tune)
    assert counts["transfer_det"] == counts["transfer_seg"] == 3 * 3  # MAE, random init, supervised; 3 seeds
    assert not {"linprobe", "knn", "partial_ft", "transfer_cls"} & set(counts)


def test_transfer_budget_seg8000_overlay_dag_shape(repo_root):
    """docs/bench/transfer_budget_seg8000.yaml over transfer_budget: the same runs, segmentation only, 8 000 images."""
    overlay = "docs/bench/transfer_budget_seg8000.yaml"
    p = dry_run(repo_root, "--configfile", "config/transfer_budget.yaml", overlay)
    assert p.returncode == 0, p.stderr
    counts = job_counts(p.stdout + p.stderr)
    assert counts["pretrain"] == 3 and counts["finetune"] == 3 and counts["transfer_seg"] == 3 * 3
    assert not {"transfer_det", "linprobe", "knn", "partial_ft", "transfer_cls"} & set(counts)
    settings = yaml.safe_load((repo_root / overlay).read_text())
    assert settings["transfer_seg"] == {"train_images": 8000}
    assert settings["results"] != yaml.safe_load((repo_root / "config/transfer_budget.yaml").read_text())["results"]


def _merged(repo_root, overlay: str) -> dict:
    """The config Snakemake runs with `--configfile overlay`: config/config.yaml updated recursively."""
    from snakemake.utils import update_config

    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((repo_root / "config" / overlay).read_text()))
    return config


def test_paper_config_restates_every_stage_key_of_the_default(repo_root):
    """--configfile merges: a stage key that config.yaml sets and paper.yaml leaves out keeps its toy value."""
    default = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    paper = yaml.safe_load((repo_root / "config" / "paper.yaml").read_text())
    stages = [
        k
        for k, v in default.items()
        if isinstance(v, dict) and k not in ("datasets", "base", "ablations", "evaluations")
    ]
    assert "finetune" in stages and "transfer_det" in stages
    missing = {s: sorted(set(default[s]) - set(paper.get(s) or {})) for s in stages}
    assert not {s: keys for s, keys in missing.items() if keys}


def test_paper_config_restores_every_paper_recipe(repo_root):
    """--configfile merges: every toy-scale deviation of config.yaml must be undone by paper.yaml."""
    from mae.stages.finetune import FinetuneConfig
    from mae.stages.linprobe import LinprobeConfig

    paper = _merged(repo_root, "paper.yaml")
    assert paper["pretrain"]["base_lr"] == 1.5e-4 and paper["pretrain"]["batch_size"] == 4096
    ft, paper_ft = paper["finetune"], FinetuneConfig()
    for key in ("mixup", "cutmix", "reprob", "auto_augment"):
        assert ft[key] == getattr(paper_ft, key), key
    assert tuple(ft["crop_scale"]) == paper_ft.crop_scale == (0.08, 1.0)
    lp, paper_lp = paper["linprobe"], LinprobeConfig()
    assert (lp["optimizer"], lp["global_pool"]) == (paper_lp.optimizer, paper_lp.global_pool) == ("lars", "token")
    assert paper["knn"]["global_pool"] == "token" and paper["scratch_finetune"]["layer_decay"] == 1.0
    for stage in ("transfer_det", "transfer_seg"):
        assert paper[stage]["train_images"] is None and paper[stage]["eval_images"] is None, stage


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"pretrain_dataste": "shapes"}, "pretrain_dataste"),
        ({"base": {"mask_ratio": 1.5}}, "mask_ratio"),
        ({"ablations": {"1z": {"decoder_depth": [1]}}}, "1z"),
        ({"evaluations": {"every_run": ["linprobe", "knearest"]}}, "knearest"),
        ({"device": "tpu"}, "tpu"),
    ],
)
def test_bad_config_fails_at_once_naming_the_key(repo_root, tmp_path, patch, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(patch))
    proc = dry_run(repo_root, "--configfile", str(bad))
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


@pytest.mark.slow
def test_smoke_study_end_to_end(repo_root, tmp_path):
    """The real smoke study; a second invocation has nothing to do; the HTML report lists every table and
    figure; `dvc repro` in a git checkout of the result rebuilds the tables from the summary alone."""
    work = tmp_path / "study"
    shutil.copytree(
        repo_root,
        work,
        ignore=shutil.ignore_patterns(".venv", ".git", "results", ".snakemake", "logs", "benchmarks", "__pycache__"),
    )
    run = [*SNAKEMAKE, "--cores", "2", "--configfile", "config/smoke.yaml"]
    # as from an activated venv's shell (Snakemake drops PS1 from its jobs' environment)
    activated = {**os.environ, "PS1": "(.venv) $ ", "VIRTUAL_ENV": str(Path(sys.executable).parents[1])}
    proc = subprocess.run(run, cwd=work, capture_output=True, text=True, timeout=1200, env=activated)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = (work / "results/summary/runs.csv").read_text().splitlines()
    # every job started in the warm-start server (mae/tools/warmstart.py), none refused; the server is gone
    jobs = list((work / "logs").rglob("*.log"))
    assert (work / "logs/warm_start.log").read_text().count("warm start: worker") >= 40
    assert not [j for j in jobs if "warm start: not used" in j.read_text(errors="replace")]
    assert "server stopped" in (work / "logs/warm_start.log").read_text()
    assert len(summary) > 30  # 9 runs x (pretrain, linprobe, finetune) + base/scratch/supervised evaluations
    # evidence: per-image predictions of every evaluation, replicates and intervals in the summary and claims
    for folder in (
        "base/linprobe",
        "base/finetune",
        "base/knn",
        "scratch/linprobe",
        "base/transfer_seg",
        "base/transfer_det",
        "base/transfer_cls-digits",
    ):
        assert (work / "results/runs" / folder / "predictions.npz").is_file(), folder
    assert (work / "results/summary/replicates.npz").is_file() and "top1_lo" in summary[0]
    assert "95% CI" in (work / "results/claims/claims.md").read_text()
    tables = {p.stem for p in (work / "results/tables").glob("*.md")}
    for table in (
        "table1a_decoder_depth",
        "table1c_mask_token",
        "table1d_target",
        "table1f_mask_sampling",
        "table2_wall_clock",
        "table3_scratch_vs_mae",
        "table4_detection",
        "table5_segmentation",
        "table6_classification",
    ):
        assert table in tables
    figures = {p.stem for p in (work / "results/figures").glob("*.png")}
    assert {
        "fig5_masking_ratio",
        "fig7_schedule",
        "fig9_partial_ft",
        "fig_mask_sampling",
        "fig_reconstructions",
        "fig_loss_curves",
    } <= figures
    again = subprocess.run([*run, "-n"], cwd=work, capture_output=True, text=True, timeout=120)
    assert "Nothing to be done" in again.stdout + again.stderr

    report = subprocess.run(
        [*run, "--report", "results/report.html"], cwd=work, capture_output=True, text=True, timeout=300
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert_report_complete(work)  # every table and figure, each with a caption naming its paper table/figure

    shutil.rmtree(work / "results/tables")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "repro", "--single-item", "tables", "claims"]):
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (work / "results/tables/table1a_decoder_depth.md").exists()


def test_snakemake_lint_and_snakefmt_are_clean(repo_root):
    lint = subprocess.run([*SNAKEMAKE, "--lint"], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout[-3000:]
    fmt = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fmt.returncode == 0, fmt.stderr[-3000:]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(repo_root, args):
    """`make lint`'s Python half (pyproject.toml [tool.ruff]; .pre-commit-config.yaml runs the same)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=repo_root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def test_the_plan_follows_the_config_in_a_fresh_clone(repo_root, tmp_path):
    """A fresh clone has the committed summary/study.json and no Snakemake record of the params behind it: an
    edited config still rebuilds the plan (by content), and the new run carries its table tags."""
    import json

    work = tmp_path / "clone"
    shutil.copytree(
        repo_root,
        work,
        ignore=shutil.ignore_patterns(".venv", ".git", ".snakemake", "logs", "benchmarks", "__pycache__"),
    )
    results = work / "results"
    for stale in (results / "runs", results / "data"):
        shutil.rmtree(stale, ignore_errors=True)
    (results / ".plan_request").unlink(missing_ok=True)
    plan = results / "summary" / "study.json"
    unchanged = dry_run(repo_root, cwd=work, results=results)
    assert unchanged.returncode == 0, unchanged.stderr
    assert "study_plan" not in job_counts(unchanged.stdout + unchanged.stderr)  # the committed plan is current
    config = work / "config" / "config.yaml"
    text = config.read_text()
    assert "fig5: {mask_ratio: [0.5, 0.75, 0.9]}" in text
    config.write_text(text.replace("fig5: {mask_ratio: [0.5, 0.75, 0.9]}", "fig5: {mask_ratio: [0.5, 0.6, 0.75, 0.9]}"))
    edited = dry_run(repo_root, cwd=work, results=results)
    assert job_counts(edited.stdout + edited.stderr).get("study_plan") == 1, edited.stdout + edited.stderr
    proc = subprocess.run(
        [*SNAKEMAKE, str(plan), "--cores", "1", "--config", f"results={results}"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(plan.read_text())["runs"]
    assert "fig5" in runs["mask_ratio-0.6"]["tables"]


def test_a_results_folder_with_a_space(repo_root, tmp_path):
    """Every path in the rules is quoted: a study into 'my results' runs its jobs."""
    work = tmp_path / "study"
    shutil.copytree(
        repo_root,
        work,
        ignore=shutil.ignore_patterns(".venv", ".git", "results", ".snakemake", "logs", "benchmarks", "__pycache__"),
    )
    results = work / "my results"
    target = results / "runs" / "base" / "linprobe" / "metrics.json"
    proc = subprocess.run(
        [
            *SNAKEMAKE,
            str(target),
            "--cores",
            "2",
            "--configfile",
            "config/smoke.yaml",
            "--config",
            f"results={results}",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert target.is_file() and (results / "runs" / "base" / "pretrain" / "encoder.safetensors").is_file()


@pytest.mark.parametrize("name", plans.CONFIGS)
def test_every_config_plans_the_recorded_jobs(name):
    """Every job of the smoke, default, CPU and paper configs (rule, outputs, log, benchmark, threads, resources
    and command) is the recorded one: a change to the rules that changes a plan shows here, job by job
    (tests/plans.py; rewrite the records with `python -m tests.plans` when the change is meant)."""
    recorded = (plans.FIXTURES / f"{name}.txt").read_text().splitlines()
    now = plans.plan(name)
    assert sorted(set(now) - set(recorded)) == [] and sorted(set(recorded) - set(now)) == []
    assert now == recorded
