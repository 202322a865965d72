"""The shipped toy studies compare like with like: a compute-matched scratch baseline, transfers and partial
fine-tuning on the study's fine-tuning recipe, K >= 1 blocks started from the trained probe."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: every shipped study config but the paper's (read from config/, so a new one is checked without a list to edit)
TOY = tuple(sorted(p.stem for p in (ROOT / "config").glob("*.yaml") if p.stem != "paper"))


def study_config(name: str) -> dict:
    """config/config.yaml with config/NAME.yaml over it, merged as Snakemake merges --configfile."""
    from snakemake.utils import update_config

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()))
    return config


@pytest.mark.parametrize("name", TOY)
def test_scratch_is_compute_matched(name):
    """The from-scratch baseline trains as many epochs as MAE's pretraining plus its fine-tuning (the paper's
    scratch recipe is longer than its fine-tuning too; App. A.2)."""
    config = study_config(name)
    assert config["scratch_finetune"]["epochs"] == config["base"]["epochs"] + config["finetune"]["epochs"], name


@pytest.mark.parametrize("name", ("config", "cpu", "mae_vs_scratch", "gpu", "transfer_budget"))
def test_dense_transfers_get_the_budget_they_learn_in(name):
    """Detection and segmentation train at least the image-steps in which they learnt on the default study's data
    (docs/calibration.md, "Transfer budgets": 8 epochs of 600 images, 20 of 1 000; 1 and 2 learnt nothing). A floor,
    not convergence: segmentation on the shallow ViT still gains past it ("Segmentation on the shallow ViT")."""
    config = study_config(name)
    n_train = config["datasets"][config["pretrain_dataset"]]["n_train"]
    for stage, needed in (("transfer_det", 8 * 600), ("transfer_seg", 20 * 1000)):
        section = config[stage]
        images = section["epochs"] * min(section.get("train_images") or n_train, n_train)
        assert images >= needed, (name, stage, images)


def test_gpu_study_runs_the_cpu_studys_grid():
    """config/gpu.yaml is the CPU study in config/mae_vs_scratch.yaml's regime: the same settings and evaluations
    (Fig. 7's schedules end at its 40 pretraining epochs), that study's model, data and pretraining length, and
    partial fine-tuning of fewer blocks than the model has."""
    from mae.models.specs import model_spec

    cpu, gpu, regime = study_config("cpu"), study_config("gpu"), study_config("mae_vs_scratch")
    assert {**gpu["ablations"], "fig7": None} == {**cpu["ablations"], "fig7": None}
    assert gpu["evaluations"] == cpu["evaluations"] and gpu["seeds"] == cpu["seeds"]
    assert max(gpu["ablations"]["fig7"]["epochs"]) == gpu["base"]["epochs"]
    for key in ("model", "epochs"):
        assert gpu["base"][key] == regime["base"][key], key
    for key in ("img_size", "n_train", "difficulty"):
        assert gpu["datasets"]["shapes"].get(key, "clean") == regime["datasets"]["shapes"].get(key, "clean"), key
    assert max(gpu["partial_ft"]["blocks"]) < model_spec(gpu["base"]["model"])["depth"]
    assert gpu["device"] == "cuda" and gpu["results"] == "results/gpu_study"


def test_finetune_budget_reruns_the_default_study_at_a_longer_fine_tune():
    """config/finetune_budget.yaml is the default study with only the fine-tuning budget changed: the same
    settings but Table 1c's (its claim reads the linear probe), the same pretraining, data, seeds and evaluations,
    a fine-tune three times as long, and a scratch baseline still compute-matched (checked above)."""
    default, budget = study_config("config"), study_config("finetune_budget")
    kept = {k: v for k, v in budget["ablations"].items() if v is not None}
    assert kept == {k: v for k, v in default["ablations"].items() if k != "1c"}
    for key in ("base", "datasets", "seeds", "seeds_per", "partial_ft"):
        assert budget[key] == default[key], key
    assert set(budget["evaluations"]["every_run"]) >= {"linprobe", "finetune"}
    assert budget["finetune"]["epochs"] == 3 * default["finetune"]["epochs"]


def test_transfer_budget_reruns_the_default_studys_transfers_at_longer_budgets():
    """config/transfer_budget.yaml is the default study's base setting and baselines with only the dense transfers'
    budgets changed: the same pretraining, data and seeds, no table's settings, segmentation on 4x the images,
    detection longer, and the supervised init trained as long as finetune_budget's compute-matched scratch."""
    default, budget, ft_budget = (
        study_config("config"),
        study_config("transfer_budget"),
        study_config("finetune_budget"),
    )
    assert all(v is None for v in budget["ablations"].values()) and set(budget["ablations"]) == set(
        default["ablations"]
    )
    for key in ("base", "datasets", "seeds", "seeds_per", "pretrain"):
        assert budget[key] == default[key], key
    assert budget["transfer_seg"]["train_images"] == 4 * default["transfer_seg"]["train_images"]
    assert budget["transfer_seg"]["epochs"] == default["transfer_seg"]["epochs"]
    assert budget["transfer_det"]["epochs"] > default["transfer_det"]["epochs"]
    assert budget["scratch_finetune"]["epochs"] == ft_budget["scratch_finetune"]["epochs"]
    assert "finetune" in budget["evaluations"]["scratch"]  # the supervised init is the scratch run's fine-tune


def _dry_run_commands(configfile: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--configfile", configfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [line for line in proc.stdout.splitlines() if "OMP_NUM_THREADS" in line]


def _settings(command: str) -> dict:
    words = shlex.split(command)
    return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--set")


def test_transfer_and_partial_ft_commands_carry_the_fine_tuning_recipe():
    config = study_config("smoke")
    commands = _dry_run_commands("config/smoke.yaml")
    cls = [c for c in commands if " transfer-cls " in c]
    partial = [c for c in commands if " partial-ft --blocks 1 " in c]
    assert cls and partial
    for command in cls + partial:
        got = _settings(command)
        for key in ("mixup", "cutmix", "auto_augment", "reprob", "layer_decay"):
            assert yaml.safe_load(got[key]) == config["finetune"][key], (key, command)
    assert all(_settings(c)["epochs"] == str(config["transfer_cls"]["epochs"]) for c in cls)
    # K >= 1 starts from the run's own trained probe
    assert all("--head-from results/runs/base/linprobe" in c for c in partial)
