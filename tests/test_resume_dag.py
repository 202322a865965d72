"""Killing the study during a pretraining job and rerunning resumes that job from its last checkpoint."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


@pytest.mark.slow
def test_killed_pretraining_resumes_from_checkpoint(repo_root, tmp_path):
    work = tmp_path / "study"
    shutil.copytree(
        repo_root,
        work,
        ignore=shutil.ignore_patterns(".venv", ".git", "results", ".snakemake", "logs", "benchmarks", "__pycache__"),
    )
    smoke = yaml.safe_load((work / "config/smoke.yaml").read_text())
    smoke["base"]["epochs"] = 6
    (work / "config/resume.yaml").write_text(yaml.safe_dump(smoke))
    target = "results/runs/base/pretrain/metrics.json"
    cmd = [*SNAKEMAKE, "--cores", "1", "--configfile", "config/resume.yaml", target]
    ckpt = work / "results/runs/base/pretrain/checkpoint.pt"

    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert ckpt.exists(), "no checkpoint was written before the deadline"
    os.killpg(proc.pid, signal.SIGKILL)  # the hard way: no cleanup of any kind
    proc.wait()
    assert not (work / target).exists()

    import torch

    epoch_at_kill = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
    done = subprocess.run([*cmd, "--rerun-incomplete"], cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = [json.loads(line) for line in (work / "results/runs/base/pretrain/log.jsonl").read_text().splitlines()]
    epochs_trained_after = {row["epoch"] for row in log if row.get("resumed_from") is None} 
    first_after = min(row["epoch"] for row in log if row.get("event") == "resume")
    assert first_after == epoch_at_kill + 1 or first_after == epoch_at_kill
    assert json.loads((work / target).read_text())["epochs"] == 6
