"""A run folder has one writer; a killed run is finished, not retrained; stop signals end any phase at once with
exit 75 and the rerun gives the uninterrupted result (mae.utils.lock.run_lock, mae.utils.preemption, fit)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mae.engine import fit
from mae.errors import Preempted, UserError
from mae.utils.lock import run_lock
from mae.utils.preemption import stop_on_signals
from tests.test_engine import RegressionTask, cfg_for, weights

ROOT = Path(__file__).resolve().parents[1]


def test_a_second_writer_of_a_run_folder_is_refused(tmp_path):
    with run_lock(tmp_path / "run"):
        code = (
            "from mae.engine import fit; from tests.test_engine import RegressionTask, cfg_for; "
            f"cfg = cfg_for(epochs=1); fit(RegressionTask(cfg), cfg, {str(tmp_path / 'run')!r})"
        )
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "is being written by another process" in proc.stderr
        assert not (tmp_path / "run" / "checkpoint.pt").exists()
    cfg = cfg_for(epochs=1)  # released: the next writer goes ahead (a killed holder releases it too)
    fit(RegressionTask(cfg), cfg, tmp_path / "run")
    with pytest.raises(UserError, match="being written by another process"), run_lock(tmp_path / "x"):
        with run_lock(tmp_path / "x"):  # a second lock of the same folder, even in one process
            pass


def test_a_run_killed_before_its_metrics_is_finished_not_retrained(tmp_path):
    """kill -9 between the final checkpoint and metrics.json: the rerun (with the workflow's on_change=restart)
    evaluates the finished weights and writes the metrics; nothing is trained again."""
    cfg = cfg_for(epochs=2, on_change="restart")
    straight = RegressionTask(cfg)
    reference = fit(straight, cfg, tmp_path / "a")
    (tmp_path / "a" / "metrics.json").unlink()
    log = tmp_path / "a" / "log.jsonl"
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines() if '"reported"' not in line))
    again = RegressionTask(cfg)
    metrics = fit(again, cfg, tmp_path / "a")
    assert again.calls == 0 and metrics["loss"] == pytest.approx(reference["loss"])
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["loss"] == pytest.approx(reference["loss"])
    # metrics delivered, then removed by Snakemake for changed inputs: trained again from zero
    (tmp_path / "a" / "metrics.json").unlink()
    retrained = RegressionTask(cfg)
    fit(retrained, cfg, tmp_path / "a")
    assert retrained.calls == straight.calls


class _SignalsInEvaluation(RegressionTask):
    """Sends itself SIGTERM in its ``at``-th evaluation (e.g. the per-epoch one between two epochs)."""

    def __init__(self, cfg, at):
        super().__init__(cfg)
        self.at, self.evaluations = at, 0

    def evaluate(self):
        self.evaluations += 1
        if self.evaluations == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # acted on at once: never reached
        return super().evaluate()


@pytest.mark.parametrize("at", [1, 2])  # the evaluation after epoch 1, the final one
def test_a_stop_signal_during_evaluation_acts_at_once_and_resumes(tmp_path, at):
    cfg = cfg_for(epochs=2, eval_every=1)
    straight = RegressionTask(cfg)
    reference = fit(straight, cfg, tmp_path / "straight")
    started = time.perf_counter()
    with pytest.raises(Preempted, match="signal 15"), stop_on_signals():
        fit(_SignalsInEvaluation(cfg, at), cfg, tmp_path / "run")
    assert time.perf_counter() - started < 4
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    resumed = RegressionTask(cfg)
    metrics = fit(resumed, cfg, tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(weights(straight).values(), weights(resumed).values()))
    assert metrics["loss"] == pytest.approx(reference["loss"])


def test_sigterm_during_feature_extraction_exits_75_at_once(tmp_path):
    """The linear probe's feature pass runs before any training: a SIGTERM there is exit 75 within a moment."""
    from mae.data.prepare import prepare_builtin

    data = tmp_path / "d"
    prepare_builtin(data, "shapes", img_size=32, n_train=3000, n_val=16, seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mae.cli",
            "linprobe",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "lp"),
            "--scratch",
            "--device",
            "cpu",
            "--set",
            "cached_features=true",
            "--set",
            "batch_size=16",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = ""
    while "features train" not in seen:  # the progress bar of the feature pass
        chunk = proc.stderr.read(1)
        assert chunk, "the command ended before its feature pass"
        seen += chunk
    proc.send_signal(signal.SIGTERM)
    sent = time.perf_counter()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75 and time.perf_counter() - sent < 5, (proc.returncode, err[-500:])
    assert "preempted: stopped by signal 15" in err and not (tmp_path / "lp" / "metrics.json").exists()
