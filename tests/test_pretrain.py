"""`mae pretrain` end to end on a tiny generated dataset: files, formats, resume, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch

from mae.cli import main as cli_main

TINY = [
    "epochs=2",
    "warmup_epochs=1",
    "batch_size=16",
    "amp=auto",
    "eval_images=32",
    "log_every=1",
    "model=mae_vit_micro_patch4",
    "decoder_depth=1",
    "decoder_width=64",
    "decoder_heads=2",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from mae.data.prepare import prepare_builtin

    out = tmp_path_factory.mktemp("data") / "shapes"
    prepare_builtin(out, "shapes", img_size=32, n_train=64, n_val=32, seed=0)
    return out


def run_cli(data, out, *sets):
    argv = ["pretrain", "--data", str(data), "--out", str(out), "--device", "cpu"]
    for s in (*TINY, *sets):
        argv += ["--set", s]
    return cli_main(argv)


def test_pretrain_end_to_end(tiny_data, tmp_path):
    out = tmp_path / "run" / "pretrain"
    assert run_cli(tiny_data, out) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["finished"] and ckpt["epoch"] == 1 and ckpt["step"] == 8
    model = ckpt["model"]
    # reference key names, our decoder override applied, no optimizer junk in 'model'
    assert {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "mask_token",
        "decoder_pos_embed",
        "decoder_pred.weight",
        "blocks.5.attn.qkv.weight",
        "decoder_blocks.0.mlp.fc1.weight",
    } <= set(model)
    assert not any(k.startswith("decoder_blocks.1.") for k in model)
    assert model["decoder_embed.weight"].shape == (64, 128)
    from mae.models import create_mae

    create_mae("mae_vit_micro_patch4", decoder_depth=1, decoder_embed_dim=64, decoder_num_heads=2).load_state_dict(
        model, strict=True
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["img_s"] > 0 and metrics["wall_s"] > 0
    assert metrics["params"] < metrics["params_total"] and 0 < metrics["loss"] < 10
    assert metrics["config"]["mask_ratio"] == 0.75
    # the precision it trained in and why (mae.engine.precision); no roofline probe on the job's path
    from mae.engine.precision import resolve

    assert (metrics["amp_used"], metrics["amp_reason"]) == tuple(resolve("auto", "cpu").record().values())
    assert not {"roofline_pct", "gemm_gflop_s", "gflop_per_image"} & set(metrics)
    # where the training time went: the step rate is at least the end-to-end rate
    parts = metrics["time_s"]
    assert set(parts) == {"data", "step", "eval", "save", "other", "final_eval"} and parts["step"] > 0
    assert metrics["step_img_s"] >= metrics["img_s"] > 0
    settings = json.loads((out.parent / "settings.json").read_text())
    assert settings["decoder_depth"] == 1 and settings["decoder_width"] == 64 and settings["patch_size"] == 4
    assert settings["sampling"] == "random" and settings["epochs"] == 2 and settings["dataset"]
    assert "sampler" not in settings  # one name per knob (mae/registry/knobs.py)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["kind"] == "step"]
    assert len(steps) == 8 and all(r["loss"] > 0 and r["img_s"] > 0 for r in steps)
    assert log[0]["kind"] == "setup" and log[0]["amp_used"] == metrics["amp_used"]
    # finished: a rerun returns at once with the same metrics
    before = (out / "metrics.json").read_text()
    assert run_cli(tiny_data, out) == 0
    assert (out / "metrics.json").read_text() == before


def test_pretrain_learns(tiny_data, tmp_path):
    """A few more steps at a real lr lower the held-out reconstruction loss below the first epoch's."""
    out = tmp_path / "p"
    assert run_cli(tiny_data, out, "epochs=6", "base_lr=2e-3", "eval_every=1", "aug=none") == 0
    evals = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"eval"' in x]
    assert len(evals) == 6 and evals[-1]["loss"] < evals[0]["loss"]


def test_pretrain_bad_settings(tiny_data, tmp_path, capsys):
    assert run_cli(tiny_data, tmp_path / "a", "mask_ratio=1.5") == 2
    assert "mask_ratio" in capsys.readouterr().err
    assert run_cli(tiny_data, tmp_path / "b", "decoder_dpeth=2") == 2
    assert "unknown key 'decoder_dpeth' for pretrain" in capsys.readouterr().err
    assert run_cli(tiny_data, tmp_path / "c", "model=mae_vit_nope") == 2
    assert "mae_vit_nope" in capsys.readouterr().err


def test_preempted_pretrain_resumes_bit_identical(tiny_data, tmp_path):
    """SIGTERM at a random step of a real pretraining run (augmentation and masking draw random numbers):
    the resumed run ends with the same weights as an uninterrupted one."""
    import os
    import random
    import signal

    from mae.config import PretrainConfig, load_config
    from mae.engine import fit, seed_everything
    from mae.errors import Preempted
    from mae.stages.pretrain import PretrainTask

    cfg = load_config(PretrainConfig, overrides=[*TINY, "device=cpu", "amp=none"])

    def task(signal_at=None):
        seed_everything(cfg.seed)
        t = PretrainTask(cfg, tiny_data)
        if signal_at is not None:
            step, calls = t.train_step, []

            def train_step(batch):
                calls.append(1)
                if len(calls) == signal_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                return step(batch)

            t.train_step = train_step
        return t

    straight = task()
    fit(straight, cfg, tmp_path / "straight")
    signal_at = random.Random(0).randint(2, 7)  # 8 steps in all (2 epochs x 4)
    with pytest.raises(Preempted):
        fit(task(signal_at), cfg, tmp_path / "resumed")
    resumed = task()
    fit(resumed, cfg, tmp_path / "resumed")
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
