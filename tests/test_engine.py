"""The shared training loop: resume equivalence, accumulation, non-finite loss, DDP, logs and metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mae.config import TrainConfig
from mae.engine import NonFiniteLossError, Task, fit, seed_everything


def make_data(n=48, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class RegressionTask(Task):
    """Tiny MLP with dropout (so the RNG state matters for resume) on in-memory data."""

    def __init__(self, cfg, data=None, dropout=0.1, linear=False, nan_at_step=None):
        seed_everything(123)
        self.cfg = cfg
        self.data = data if data is not None else make_data()
        if linear:
            self.model = nn.Linear(8, 1)
        else:
            self.model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 1))
        self.nan_at_step = nan_at_step
        self.calls = 0

    def train_loader(self):
        return DataLoader(self.data, batch_size=self.cfg.batch_size, shuffle=True, drop_last=True)

    def train_step(self, batch):
        x, y = self.to_device(batch)
        loss = nn.functional.mse_loss(self.model(x).float(), y)
        self.calls += 1
        if self.nan_at_step is not None and self.calls > self.nan_at_step:
            loss = loss * float("nan")
        return loss, x.shape[0], {"mean_pred": self.model(x).float().mean().detach()}

    def evaluate(self):
        x, y = self.to_device(self.data.tensors)
        return {"loss": nn.functional.mse_loss(self.model(x).float(), y).item()}


def cfg_for(**kw):
    base = dict(
        epochs=3,
        batch_size=8,
        base_lr=2.0,
        warmup_epochs=1,
        weight_decay=0.01,
        amp="none",
        device="cpu",
        log_every=2,
        seed=5,
    )
    base.update(kw)
    return TrainConfig(**base)


def weights(task):
    return {k: v.clone() for k, v in task.model.state_dict().items()}


def test_fit_writes_checkpoint_log_metrics(tmp_path):
    cfg = cfg_for()
    task = RegressionTask(cfg)
    initial = task.evaluate()["loss"]
    metrics = fit(task, cfg, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["finished"] and ckpt["epoch"] == 2 and ckpt["step"] == 3 * 6
    assert set(ckpt["model"]) == set(task.model.state_dict())
    assert ckpt["config"]["base_lr"] == 2.0 and set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "step"]
    assert len(steps) == 9 and {"epoch", "step", "lr", "loss", "img_s", "mean_pred"} <= set(steps[0])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["epochs"] == 3 and on_disk["steps"] == 18 and on_disk["img_s"] > 0
    assert on_disk["loss"] == pytest.approx(metrics["loss"]) and on_disk["loss"] < 0.5 * initial
    assert on_disk["config"]["epochs"] == 3
    # warmup ends after epoch 1 -> peak lr = base_lr * 8 / 256; logged lrs rise then fall
    lrs = [r["lr"] for r in lines if r["kind"] == "step"]
    assert max(lrs) <= 2.0 * 8 / 256 + 1e-12 and lrs[0] < max(lrs) and lrs[-1] < max(lrs)
    # a finished run returns its metrics without training again
    task2 = RegressionTask(cfg)
    assert fit(task2, cfg, tmp_path) == on_disk and task2.calls == 0
    assert all(torch.equal(a, b) for a, b in zip(weights(task2).values(), weights(task).values()))


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_resume_is_bitwise_identical(tmp_path, amp):
    cfg = cfg_for(epochs=2, amp=amp)
    straight = RegressionTask(cfg)
    fit(straight, cfg, tmp_path / "straight")

    first = RegressionTask(cfg)
    fit(first, replace(cfg, max_steps=6), tmp_path / "resumed")  # one epoch = 6 steps, then "interrupted"
    ckpt = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    ckpt["finished"] = False  # pretend the run was killed after its epoch-0 checkpoint
    torch.save(ckpt, tmp_path / "resumed" / "checkpoint.pt")
    resumed = RegressionTask(cfg)  # fresh process: new model init, RNG reset by the constructor
    torch.manual_seed(999)
    fit(resumed, cfg, tmp_path / "resumed")
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.calls == 6  # only the second epoch was trained


class LoaderEvalTask(RegressionTask):
    """Evaluates through a DataLoader, which draws its base seed from torch's global RNG."""

    def evaluate(self):
        losses = [nn.functional.mse_loss(self.model(x).float(), y).item() for x, y in DataLoader(self.data)]
        return {"loss": sum(losses) / len(losses)}


def test_evaluating_during_training_does_not_change_the_trained_model(tmp_path):
    """eval_every only adds evaluations: the model trained with them (dropout draws from the global RNG) is the
    model trained without them, so a learning curve is the curve of the run the study reports."""
    plain, curve = LoaderEvalTask(cfg_for(eval_every=0)), LoaderEvalTask(cfg_for(eval_every=1))
    fit(plain, plain.cfg, tmp_path / "plain")
    fit(curve, curve.cfg, tmp_path / "curve")
    records = [json.loads(line) for line in (tmp_path / "curve" / "log.jsonl").read_text().splitlines()]
    assert sum(r.get("kind") == "eval" for r in records) == 3  # after epochs 1 and 2, and the final one
    a, b = weights(plain), weights(curve)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_config(tmp_path):
    cfg = cfg_for(epochs=2, save_every=1)
    fit(RegressionTask(cfg), replace(cfg, max_steps=3), tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    ckpt["finished"] = False
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    from mae.errors import UserError

    with pytest.raises(UserError, match="base_lr"):
        fit(RegressionTask(cfg), replace(cfg, base_lr=0.5), tmp_path)


def test_accumulation_matches_larger_batch(tmp_path):
    data = make_data(n=64)
    big = cfg_for(epochs=2, batch_size=16, accum_iter=1, base_lr=0.1, weight_decay=0.0)
    small = replace(big, accum_iter=2)  # the same global batch 16 in two forward passes of 8
    t_big = RegressionTask(big, data=data, linear=True)
    t_small = RegressionTask(small, data=data, linear=True)
    # batch sizes are global: the task's loader gives 16 in both runs, the engine splits it over accum_iter
    big_loader_order = list(DataLoader(data, batch_size=16, shuffle=False))
    t_big.train_loader = lambda: DataLoader(data, batch_size=16, shuffle=False, drop_last=True)
    t_small.train_loader = lambda: DataLoader(data, batch_size=16, shuffle=False, drop_last=True)
    m_big = fit(t_big, big, tmp_path / "big")
    m_small = fit(t_small, small, tmp_path / "small")
    assert len(big_loader_order) == 4 and m_big["steps"] == m_small["steps"] == 8
    a, b = weights(t_big), weights(t_small)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert m_big["lr"] == m_small["lr"] == pytest.approx(0.1 * 16 / 256)
    assert (m_small["global_batch"], m_small["batch_per_process"], m_small["accum_iter"]) == (16, 8, 2)


def test_non_finite_loss_keeps_last_checkpoint(tmp_path):
    cfg = cfg_for(epochs=3)
    task = RegressionTask(cfg, nan_at_step=8)  # epoch 0 has 6 steps and is checkpointed
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 step 8"):
        fit(task, cfg, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 0 and not ckpt["finished"]
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (tmp_path / "metrics.json").exists()


def test_lr_scale_and_clipping(tmp_path):
    cfg = cfg_for(epochs=1, clip_grad=1e-3, warmup_epochs=0)

    class Scaled(RegressionTask):
        def param_groups(self, cfg):
            first, last = self.model[0], self.model[3]
            return [
                {"params": list(first.parameters()), "weight_decay": 0.0, "lr_scale": 0.5},
                {"params": list(last.parameters()), "weight_decay": 0.0},
            ]

        def train_step(self, batch):
            out = super().train_step(batch)
            lrs = [g["lr"] for g in self.opt_ref.param_groups]
            assert lrs[0] == pytest.approx(0.5 * lrs[1])
            return out

        def optimizer(self, groups, lr, cfg):
            self.opt_ref = super().optimizer(groups, lr, cfg)
            return self.opt_ref

    task = Scaled(cfg)
    before = weights(task)
    fit(task, cfg, tmp_path)
    after = weights(task)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_too_little_data_is_a_user_error(tmp_path):
    from mae.errors import UserError

    cfg = cfg_for(batch_size=64)
    with pytest.raises(UserError, match="batches per process"):
        fit(RegressionTask(cfg), cfg, tmp_path)


# --------------------------------------------------------------------------------------------- DDP


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out, result_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    cfg = cfg_for(epochs=2, batch_size=8)  # global: 4 per process
    task = RegressionTask(cfg)
    if rank == 1:  # different init on rank 1: fit must broadcast rank 0's weights
        with torch.no_grad():
            for p in task.model.parameters():
                p.add_(1.0)
    metrics = fit(task, cfg, out)
    torch.save({"weights": task.model.state_dict(), "metrics": metrics}, os.path.join(result_dir, f"rank{rank}.pt"))


def test_ddp_two_processes_gloo(tmp_path):
    out = tmp_path / "run"
    res = tmp_path / "res"
    res.mkdir()
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(out), str(res)), nprocs=2, start_method="spawn")
    r0 = torch.load(res / "rank0.pt", weights_only=False)
    r1 = torch.load(res / "rank1.pt", weights_only=False)
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    for k in r0["weights"]:
        assert torch.equal(ckpt["model"][k], r0["weights"][k])
    # 48 samples / 2 ranks / batch 4 = 6 steps per epoch; lr uses the global batch 8
    assert r0["metrics"]["steps"] == 12 and r0["metrics"]["world_size"] == 2
    assert (r0["metrics"]["global_batch"], r0["metrics"]["batch_per_process"]) == (8, 4)
    assert r0["metrics"]["lr"] == pytest.approx(2.0 * 8 / 256)
    assert len(ckpt["rng_ranks"]) == 2
    # only rank 0 wrote: exactly the expected files, one log line per log step
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.jsonl", "metrics.json", "tensorboard"]
    steps = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"step"' in x]
    assert len([r for r in steps if r["kind"] == "step"]) == 6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_fit_on_cuda(tmp_path, amp):
    cfg = cfg_for(epochs=2, amp=amp, device="cuda", clip_grad=1.0)
    task = RegressionTask(cfg)
    initial = task.evaluate()["loss"]
    metrics = fit(task, cfg, tmp_path)
    assert next(task.model.parameters()).is_cuda and metrics["loss"] < initial
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert (ckpt["scaler"] is not None) == (amp == "fp16") and ckpt["rng"]["cuda"] is not None
    # resume on CUDA: 1 epoch + 1 epoch == 2 epochs
    first = RegressionTask(cfg)
    fit(first, replace(cfg, max_steps=6), tmp_path / "r")
    c = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    c["finished"] = False
    torch.save(c, tmp_path / "r" / "checkpoint.pt")
    resumed = RegressionTask(cfg)
    fit(resumed, cfg, tmp_path / "r")
    for k, v in weights(task).items():
        torch.testing.assert_close(v, weights(resumed)[k], rtol=1e-5, atol=1e-6)


def test_atomic_writes_get_umask_permissions(tmp_path):
    from mae.utils.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temp file left


class SignalledTask(RegressionTask):
    """Sends itself SIGTERM (what SLURM does before it kills a job) during its ``signal_at``-th batch."""

    def __init__(self, cfg, signal_at):
        super().__init__(cfg)
        self.signal_at = signal_at

    def train_step(self, batch):
        out = super().train_step(batch)
        if self.calls == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return out


@pytest.mark.parametrize("signal_at, accum", [(4, 1), (6, 1), (9, 1), (7, 2)])
def test_preempted_run_resumes_mid_epoch_bit_identical(tmp_path, signal_at, accum):
    from mae.errors import Preempted

    cfg = cfg_for(epochs=2, accum_iter=accum, log_every=1)
    straight = RegressionTask(cfg)
    fit(straight, cfg, tmp_path / "straight")
    first = SignalledTask(cfg, signal_at)
    with pytest.raises(Preempted, match="rerun the same command to resume"):
        fit(first, cfg, tmp_path / "resumed")
    ckpt = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert not ckpt["finished"] and ckpt["next_iter"] == first.calls - 6 * accum * ckpt["epoch"]  # state after it
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    resumed = RegressionTask(cfg)  # a fresh process: new init, RNG reset
    torch.manual_seed(999)
    fit(resumed, cfg, tmp_path / "resumed")
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.calls + resumed.calls == straight.calls  # no batch trained twice or skipped
    steps = [
        r["step"]
        for r in map(json.loads, (tmp_path / "resumed" / "log.jsonl").read_text().splitlines())
        if r["kind"] == "step"
    ]
    assert steps == list(range(1, 13))  # one log line per step, none duplicated (the global batch sets the steps)
    # the resumed epoch's logged loss is the mean over all its iterations, not only those after the resume
    epochs = {
        name: [
            r["loss"]
            for r in map(json.loads, (tmp_path / name / "log.jsonl").read_text().splitlines())
            if r["kind"] == "epoch"
        ]
        for name in ("straight", "resumed")
    }
    assert epochs["resumed"] == pytest.approx(epochs["straight"], rel=1e-6)
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["train_loss"] == pytest.approx(
        json.loads((tmp_path / "straight" / "metrics.json").read_text())["train_loss"], rel=1e-6
    )


def test_preempted_cli_exit_code(monkeypatch, capsys):
    from mae import cli
    from mae.errors import PREEMPTED_EXIT, Preempted

    def preempted(args):
        raise Preempted("stopped by signal 15 at epoch 1, iteration 3")

    monkeypatch.setattr("mae.stages.knn.main", preempted)
    assert cli.main(["knn", "--data", "x", "--out", "y", "--scratch"]) == PREEMPTED_EXIT == 75
    assert capsys.readouterr().err.strip() == "preempted: stopped by signal 15 at epoch 1, iteration 3"


def _scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_curves_follow_the_log_and_resume(tmp_path):
    from mae.errors import Preempted

    cfg = cfg_for(epochs=2, log_every=1)
    fit(RegressionTask(cfg), cfg, tmp_path / "straight")
    straight = _scalars(tmp_path / "straight" / "tensorboard", "train/loss")
    assert [s for s, _ in straight] == list(range(1, 13))
    logged = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "straight" / "log.jsonl").read_text().splitlines())
        if r["kind"] == "step"
    ]
    assert [v for _, v in straight] == pytest.approx(logged, rel=1e-6)
    assert _scalars(tmp_path / "straight" / "tensorboard", "train/lr") and _scalars(
        tmp_path / "straight" / "tensorboard", "epoch/img_s"
    )
    # a preempted run resumed: events after the checkpoint are purged, each step appears once
    with pytest.raises(Preempted):
        fit(SignalledTask(cfg, 9), cfg, tmp_path / "resumed")
    fit(RegressionTask(cfg), cfg, tmp_path / "resumed")
    assert [s for s, _ in _scalars(tmp_path / "resumed" / "tensorboard", "train/loss")] == list(range(1, 13))
    # off switch
    fit(RegressionTask(cfg), replace(cfg, tensorboard=False), tmp_path / "off")
    assert not (tmp_path / "off" / "tensorboard").exists()


def test_on_change_restart_retrains_what_the_workflow_reruns(tmp_path, capsys):
    cfg = cfg_for(epochs=1, on_change="restart")
    fit(RegressionTask(cfg), cfg, tmp_path)
    # a changed setting: training starts over (the default, on_change=refuse, is an error naming the key)
    changed = replace(cfg, base_lr=0.5)
    again = RegressionTask(changed)
    fit(again, changed, tmp_path)
    fresh = RegressionTask(changed)
    fit(fresh, changed, tmp_path / "fresh")
    assert again.calls == fresh.calls > 0 and all(
        torch.equal(a, b) for a, b in zip(weights(again).values(), weights(fresh).values())
    )
    assert "was trained with base_lr=" in capsys.readouterr().out
    # the same settings, but Snakemake deleted metrics.json to rerun the job (its inputs changed): retrained
    (tmp_path / "metrics.json").unlink()
    rerun = RegressionTask(changed)
    fit(rerun, changed, tmp_path)
    assert rerun.calls == fresh.calls
    # without on_change=restart a finished checkpoint is only re-evaluated
    (tmp_path / "metrics.json").unlink()
    kept = RegressionTask(replace(changed, on_change="refuse"))
    fit(kept, replace(changed, on_change="refuse"), tmp_path)
    assert kept.calls == 0
