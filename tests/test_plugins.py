"""A plug-in package reaches every process of a study: installed with pip (tests/fixtures/plugin, the two
walkthroughs of docs/ARCHITECTURE.md done outside the package), its `checker` sampler and `ncm` evaluation are
planned by Snakemake, listed by `mae --help`, and run by the `mae` processes a job starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MAE = [sys.executable, "-m", "mae"]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """The environment of a process that has the toy plug-in installed (pip, into a folder on PYTHONPATH)."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(REPO / "tests" / "fixtures" / "plugin", tmp / "source")
    site = tmp / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    proc = subprocess.run([*pip, "--target", str(site), str(source)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def run(args, env, **kw):
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_plugin_choices_reach_the_registry_and_the_cli(plugin_env):
    code = "from mae.registry import choices as C, evaluations as E; print(C.names('sampling'), list(E.EVALUATIONS))"
    out = run([sys.executable, "-c", code], plugin_env).stdout
    assert "'checker'" in out and "'ncm'" in out
    assert "ncm" in run([*MAE, "--help"], plugin_env).stdout
    assert "global_pool" in run([*MAE, "ncm", "--help"], plugin_env).stdout  # its settings class's --set keys


def test_plugin_sampler_and_evaluation_run_in_the_processes_a_study_starts(plugin_env, tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    run([*MAE, "prepare-data", "--kind", "shapes", "--out", str(data), "--n-train", "64", "--n-val", "32"], plugin_env)
    sets = ["model=mae_vit_micro_patch4", "sampling=checker", "epochs=1", "batch_size=32", "mask_ratio=0.5"]
    run(
        [*MAE, "pretrain", "--data", str(data), "--out", str(out / "pretrain"), "--device", "cpu"]
        + [a for s in sets for a in ("--set", s)],
        plugin_env,
    )
    assert json.loads((out / "settings.json").read_text())["sampling"] == "checker"
    init = str(out / "pretrain" / "checkpoint.pt")
    run([*MAE, "ncm", "--data", str(data), "--out", str(out / "ncm"), "--init", init, "--device", "cpu"], plugin_env)
    metrics = json.loads((out / "ncm" / "metrics.json").read_text())
    assert 0 <= metrics["top1"] <= 100 and metrics["n_val"] == 32


def test_snakemake_plans_the_plugin_sampler_and_evaluation(plugin_env, tmp_path):
    """A study config names them like shipped ones: a Table 1f row `sampling-checker`, and the `ncm` evaluation
    of the base run with its own config section (checked against NcmConfig, not rejected by the schema)."""
    study = {
        "ablations": {"1f": [{"sampling": "random", "mask_ratio": 0.75}, {"sampling": "checker", "mask_ratio": 0.5}]},
        "evaluations": {"every_run": ["linprobe"], "base_run": ["ncm"], "scratch": []},
        "ncm": {"global_pool": "token"},
    }
    configfile = tmp_path / "study.yaml"
    configfile.write_text(yaml.safe_dump(study))
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "2", "--configfile", "config/smoke.yaml"]
    proc = run([*cmd, str(configfile), "--config", f"results={results}"], plugin_env, cwd=REPO)
    ncm = [line for line in proc.stdout.splitlines() if " mae ncm " in line]
    assert len(ncm) == 1 and "--set global_pool=" in ncm[0] and f"{results}/runs/base/ncm" in ncm[0]
    pretrain = [
        line for line in proc.stdout.splitlines() if " mae pretrain " in line and "sampling-checker/pretrain" in line
    ]
    assert pretrain and "--set sampling='\"checker\"'" in pretrain[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**study, "ncm": {"global_pol": "token"}}))
    proc = subprocess.run(
        [*cmd, str(bad), "--config", f"results={results}"],
        env=plugin_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "global_pol" in proc.stdout + proc.stderr
