"""Killing the study during a pretraining job and rerunning resumes that job from its last checkpoint."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
IGNORE = shutil.ignore_patterns(".venv", ".git", "results", ".snakemake", "logs", "benchmarks", "__pycache__")


@pytest.mark.slow
def test_killed_pretraining_resumes_from_checkpoint(repo_root, tmp_path):
    work = tmp_path / "study"
    shutil.copytree(repo_root, work, ignore=IGNORE)
    smoke = yaml.safe_load((work / "config/smoke.yaml").read_text())
    smoke["base"]["epochs"] = 6
    (work / "config/resume.yaml").write_text(yaml.safe_dump(smoke))
    target = "results/runs/base/pretrain/metrics.json"
    cmd = [*SNAKEMAKE, target, "--cores", "1", "--configfile", "config/resume.yaml"]
    ckpt = work / "results/runs/base/pretrain/checkpoint.pt"

    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint was written before the deadline"
    os.killpg(proc.pid, signal.SIGKILL)  # the hard way: no clean-up of any kind
    proc.wait()
    assert not (work / target).exists()
    epoch_at_kill = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
    assert epoch_at_kill < 5

    # A SIGKILL leaves Snakemake's lock behind (Ctrl-C does not): `--unlock` first, as the README says.
    subprocess.run([*cmd, "--unlock"], cwd=work, capture_output=True, text=True, timeout=120, check=True)
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)  # profile: rerun-incomplete
    assert done.returncode == 0, done.stderr[-3000:]
    job_log = (work / "logs/pretrain/base.log").read_text()
    assert f"after epoch {epoch_at_kill + 1}" in job_log
    assert json.loads((work / target).read_text())["epochs"] == 6
    epochs = [
        row["epoch"]
        for row in map(json.loads, (work / "results/runs/base/pretrain/log.jsonl").open())
        if row.get("kind") == "epoch"
    ]
    assert epochs == sorted(set(epochs)) and len(epochs) == 6
