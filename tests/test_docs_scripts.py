"""The scripts behind docs/calibration.md and docs/learning-curves.md read what the stages write."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "docs" / "bench"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibration_table_reads_the_committed_records():
    cal = _module("calibration_table")
    frame = cal.load(BENCH.parent / "calibration")
    assert {"clean 24 px", "hard 32 px"} <= set(frame["data"])
    text = cal.table(frame)
    assert "| logistic regression on pixels |" in text and "clean 24 px: top-1 %" in text


def _log(path: Path, records: list[dict]) -> None:
    path.mkdir(parents=True)
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_learning_curves_summary_and_plot(tmp_path):
    curves = _module("learning_curves")
    runs = tmp_path / "runs"
    _log(runs / "base" / "finetune", [{"kind": "eval", "epoch": e, "top1": 20.0 + 10 * e} for e in range(4)])
    _log(
        runs / "scratch" / "finetune",
        [{"kind": "step", "epoch": 0, "loss": 2.0}, {"kind": "eval", "epoch": 0, "top1": 15.0}],
    )
    _log(
        runs / "base" / "transfer_seg",
        [{"kind": "eval", "epoch": 0, "miou": 30.0}, {"kind": "eval", "epoch": 1, "miou": 31.0}],
    )
    _log(runs / "base" / "pretrain", [{"kind": "eval", "epoch": 0, "top1": 1.0}])  # pretraining is not an evaluation
    _log(runs / "decoder_depth-1" / "finetune", [{"kind": "eval", "epoch": 0, "top1": 1.0}])  # not a default run
    frame = curves.load(tmp_path)
    assert set(frame["evaluation"]) == {"finetune", "transfer_seg"} and set(frame["run"]) == {"base", "scratch"}
    table = curves.summary(frame).set_index(["evaluation", "run"])
    base = table.loc[("finetune", "base")]
    assert (base["epochs"], base["first"], base["last"], base["best"], base["last_quarter_gain"]) == (4, 20, 50, 50, 10)
    assert table.loc[("transfer_seg", "base"), "metric"] == "miou"
    curves.plot(frame, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="no eval records"):
        curves.load(tmp_path / "nothing")


def test_lever_table_reads_the_sweep_records(tmp_path):
    levers = _module("levers")
    cpu = {"pretrain": 100.0, "linprobe": 8.0, "finetune": 150.0}
    for name, probe, ft, scratch in (("base", 23.9, 39.0, None), ("depth3", 26.5, 45.6, 47.0)):
        (tmp_path / name).mkdir()
        c = dict(cpu, scratch_finetune=300.0) if scratch else cpu
        record = dict(lever=name, what=levers.LEVERS[name][0], params=1.2e6, probe_top1=probe, finetune_top1=ft)
        (tmp_path / name / "lever.json").write_text(json.dumps(dict(record, scratch_top1=scratch, cpu_s=c)))
    rows = levers.table(tmp_path).splitlines()
    assert len(rows) == 4 and rows[2].startswith("| `base` |") and "| 23.9 | 39.0 |  | 100 | 150 | 1.20 M |" in rows[2]
    assert "| 26.5 | 45.6 | 47.0 (300 s) |" in rows[3]
    committed = json.loads((BENCH.parent / "calibration" / "sweeps" / "levers.json").read_text())
    assert {r["lever"] for r in committed} <= set(levers.LEVERS)  # every committed record names a lever of the script


def test_recipe_script_runs_the_study_recipe_with_overrides(tmp_path):
    """docs/bench/recipe.sh runs a stage with the default study's recipe and a variant's overrides."""
    import os
    import subprocess

    import torch

    from mae.models import create_mae
    from tests.test_eval import _write_dataset

    data = _write_dataset(tmp_path / "data")
    ckpt = tmp_path / "checkpoint.pt"
    torch.manual_seed(0)
    model = create_mae("mae_vit_micro_patch4", decoder_depth=1)
    torch.save({"model": model.state_dict(), "config": {"model": "mae_vit_micro_patch4"}, "epoch": 0}, ckpt)
    script = [str(BENCH / "recipe.sh"), str(tmp_path / "out"), str(ckpt), str(data)]
    env = {**os.environ, "MODEL": "mae_vit_micro_patch4"}
    done = subprocess.run(
        [*script, "linprobe:short:epochs=2,batch_size=16"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    name, top1, _ = done.stdout.split()
    assert name == "linprobe-short" and 0 <= float(top1) <= 100
    used = json.loads((tmp_path / "out" / "linprobe-short" / "metrics.json").read_text())
    assert used["epochs"] == 2 and used["config"]["optimizer"] == "sgd"  # the override and the study's recipe
    scratch = subprocess.run(  # a list of scratch variants needs no checkpoint
        [script[0], script[1], "-", script[3], "scratch:s:epochs=1,batch_size=16"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert scratch.returncode == 0, scratch.stderr
    used = json.loads((tmp_path / "out" / "scratch-s" / "metrics.json").read_text())
    assert used["init"] == "scratch" and used["config"]["weight_decay"] == 0.3  # scratch_finetune over finetune
    bad = subprocess.run([*script, "pretrain:x"], env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "bad VARIANT 'pretrain:x'" in bad.stderr
    missing = [script[0], str(tmp_path / "out2"), "-", script[3], "scratch:a:epochs=1", "finetune:b"]
    bad = subprocess.run(missing, env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "CHECKPOINT not found: -" in bad.stderr  # checked before the scratch one runs
    assert not (tmp_path / "out2").exists()


def test_study_cost_reads_the_jobs_of_a_dry_run():
    """docs/bench/study_cost.py prices the jobs that `snakemake -n -p` lists: rule, benchmark, epochs, data."""
    root = BENCH.parents[1]
    args = ["--configfile", "config/smoke.yaml", "--config", "results=/tmp/study-cost-test"]
    jobs = _module("study_cost").plan(root, args)
    finetunes = [j for j in jobs if j["rule"] == "finetune"]
    assert len(finetunes) == 10 and all(j["bench"].startswith("benchmarks/finetune/") for j in finetunes)
    assert {j["data"] for j in finetunes} == {"/tmp/study-cost-test/data/shapes"}
    assert all(j["epochs"] >= 1 for j in jobs)
