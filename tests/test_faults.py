"""The fault battery: kill -9, SIGTERM and SIGINT at random points of a pretraining and of an evaluation, and
kill -9 of a whole Snakemake study mid-job. After the rerun every metric equals the uninterrupted run's.

The kill points come from a seeded RNG; the seed is printed (``pytest -s`` shows it; it is also in the assertion
messages) and ``MAE_FAULT_SEED=N`` replays a run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("MAE_FAULT_SEED") or time.time_ns() % 1_000_000)
#: metrics that measure the machine, not the result
TIMING = {
    "img_s",
    "wall_s",
    "setup_s",
    "time_s",
    "step_img_s",
    "data_img_s",
    "feature_s",
    "feature_img_s_train",
    "feature_img_s_val",
    "feature_step_img_s_train",
    "feature_step_img_s_val",
}
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
MODEL = [
    "--set",
    "model=mae_vit_micro_patch4",
    "--set",
    "batch_size=32",
    "--set",
    "save_every=1",
    "--set",
    "log_every=1",
    "--device",
    "cpu",
]
pytestmark = pytest.mark.slow


def setup_module(module):
    print(f"\nfault battery seed {SEED} (MAE_FAULT_SEED={SEED} replays these kill points)")


def _mae(*argv: str) -> list[str]:
    return [sys.executable, "-m", "mae.cli", *argv]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _result(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in TIMING}


def _interrupted(argv: list[str], sig: int, after: float) -> tuple[int | None, str]:
    """Run ``argv``, send ``sig`` after ``after`` seconds (if it still runs), then rerun it until it succeeds
    (a resume may itself be the second half of an interruption: at most 3 reruns). Returns (the interrupted
    run's exit code, a description)."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=after)
        code = proc.returncode  # finished before the kill point: the case still checks the result
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    proc.stderr.close()
    for _ in range(3):
        rerun = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        if rerun.returncode == 0:
            return code, f"{signal.Signals(sig).name} at {after:.2f} s (exit {code}), seed {SEED}"
    raise AssertionError(
        f"rerun after {signal.Signals(sig).name} at {after:.2f} s failed (seed {SEED}): {rerun.stderr[-2000:]}"
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from mae.data.prepare import prepare_builtin

    out = tmp_path_factory.mktemp("data") / "shapes"
    prepare_builtin(out, "shapes", img_size=32, n_train=256, n_val=64, seed=0)
    return out


def _stage_argv(stage: str, data: Path, out: Path, init: Path | None) -> list[str]:
    if stage == "pretrain":
        return _mae(
            "pretrain",
            "--data",
            str(data),
            "--out",
            str(out),
            *MODEL,
            "--set",
            "epochs=6",
            "--set",
            "warmup_epochs=1",
            "--set",
            "decoder_depth=1",
            "--set",
            "decoder_width=64",
            "--set",
            "eval_images=64",
        )
    return _mae(
        "finetune",
        "--data",
        str(data),
        "--out",
        str(out),
        "--init",
        str(init),
        *MODEL,
        "--set",
        "epochs=5",
        "--set",
        "warmup_epochs=0.5",
        "--set",
        "mixup=0",
        "--set",
        "cutmix=0",
        "--set",
        "auto_augment=null",
        "--set",
        "reprob=0",
        "--set",
        "eval_every=1",
    )


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_a_stage_killed_at_random_points_resumes_to_the_same_result(data, tmp_path_factory, stage):
    rng = random.Random(f"{SEED}-{stage}")
    base = tmp_path_factory.mktemp(stage)
    init = None
    if stage == "finetune":
        init = base / "init" / "pretrain"
        subprocess.run(
            _stage_argv("pretrain", data, init, None),
            cwd=ROOT,
            env=_env(),
            check=True,
            capture_output=True,
            timeout=600,
        )
        init = init / "checkpoint.pt"
    started = time.perf_counter()
    reference = subprocess.run(
        _stage_argv(stage, data, base / "ref", init), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )
    duration = time.perf_counter() - started
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = _result(base / "ref")
    for i, sig in enumerate(SIGNALS):
        after = rng.uniform(0.3, 0.85) * duration  # from start-up (imports) to the last epochs
        out = base / f"case{i}"
        code, case = _interrupted(_stage_argv(stage, data, out, init), sig, after)
        print(f"{stage}: {case} of {duration:.1f} s")
        assert _result(out) == expected, f"{stage}: {case}: the result differs from the uninterrupted run"
        if code == 75:  # a SIGTERM is a preemption: it said so and left a resumable checkpoint
            assert sig == signal.SIGTERM


def test_a_study_killed_mid_job_resumes_to_the_same_metrics(tmp_path):
    rng = random.Random(f"{SEED}-study")
    ignore = shutil.ignore_patterns(".venv", ".git", "results", ".snakemake", "logs", "benchmarks", "__pycache__")
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    smoke["base"]["epochs"] = 4
    targets = [f"results/runs/base/{ev}/metrics.json" for ev in ("pretrain", "linprobe", "finetune")]
    runs = {}
    for name in ("reference", "killed"):
        work = tmp_path / name
        shutil.copytree(ROOT, work, ignore=ignore)
        (work / "config" / "faults.yaml").write_text(yaml.safe_dump(smoke))
        runs[name] = (
            work,
            [sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--configfile", "config/faults.yaml"],
        )
    work, cmd = runs["reference"]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900)
    duration = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]

    work, cmd = runs["killed"]
    after = rng.uniform(0.3, 0.9) * duration
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: Snakemake and its running jobs
        proc.wait()
    missing = [t for t in targets if not (work / t).exists()]
    print(f"study: kill -9 at {after:.1f} s of {duration:.1f} s; {len(missing)} of {len(targets)} targets missing")
    subprocess.run([*cmd, "--unlock"], cwd=work, capture_output=True, timeout=120, check=True)
    rerun = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, f"seed {SEED}, kill at {after:.1f} s: {rerun.stderr[-3000:]}"
    for target in targets:
        folder = Path(target).parent
        assert _result(work / folder) == _result(runs["reference"][0] / folder), (
            f"{folder}: differs after a kill -9 of the study at {after:.1f} s of {duration:.1f} s (seed {SEED})"
        )
