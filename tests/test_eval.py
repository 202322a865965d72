"""Evaluations: fine-tune, linear probe, partial fine-tune, k-NN (tiny fixtures, seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mae.cli import main as cli
from mae.errors import UserError
from mae.stages import classification, finetune, knn, linprobe, partial_ft

MODEL = "mae_vit_micro_patch4"  # 32 px, patch 4, 128 x 6 blocks; the fixture images are 16 px (pos_embed resampled)
DEPTH = 6
FAST = ["--set", "log_every=1", "--set", "warmup_epochs=0", "--device", "cpu"]


def _write_dataset(root: Path, n_train: int = 48, n_val: int = 24, size: int = 16, seed: int = 0) -> Path:
    """Two trivially separable classes: reddish vs bluish images with a little noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    colours = np.array([[200, 40, 40], [40, 40, 200]], np.float64)
    for split, n in (("train", n_train), ("val", n_val)):
        labels = np.arange(n, dtype=np.int64) % 2
        rng.shuffle(labels)
        images = colours[labels][:, None, None, :] + rng.normal(0, 20, (n, size, size, 3))
        np.save(root / f"{split}_images.npy", np.clip(images, 0, 255).astype(np.uint8))
        np.save(root / f"{split}_labels.npy", labels)
    meta = {
        "name": "tiny",
        "kind": "shapes",
        "img_size": size,
        "classes": ["red", "blue"],
        "num_classes": 2,
        "splits": {"train": n_train, "val": n_val},
        "seed": seed,
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def mae_model():
    from mae.models import create_mae

    torch.manual_seed(0)
    return create_mae(MODEL, decoder_depth=1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, mae_model) -> Path:
    """Our pretrain format: {'model': full MAE state dict, 'config': {... 'model': name}}."""
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    torch.save({"model": mae_model.state_dict(), "config": {"model": MODEL, "epochs": 1}, "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def ref_ckpt(tmp_path_factory, mae_model) -> Path:
    """Reference format: {'model': full MAE state dict incl. decoder}, nothing else (model name unknown)."""
    path = tmp_path_factory.mktemp("ref") / "mae_pretrain.pth"
    torch.save({"model": mae_model.state_dict()}, path)
    return path


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _encoder_state(model_state: dict) -> dict:
    return {k: v for k, v in model_state.items() if not k.startswith(("head", "fc_norm"))}


# ------------------------------------------------------------------------------------------------- kNN


def test_knn_scores_weighted_votes():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    scores = knn.knn_scores(bank, labels, query, 2, k=2, temperature=0.07)
    assert scores.argmax(1).tolist() == [0, 1]
    # k covering the whole bank: the weight exp(sim/T) decides; a near neighbour outvotes two far ones
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.3]])  # sims: 0.958 (class 0), 0.287 twice (class 1)
    sharp = knn.knn_scores(bank, labels, q, 2, k=3, temperature=0.07)
    flat = knn.knn_scores(bank, labels, q, 2, k=3, temperature=100.0)
    assert sharp.argmax(1).item() == 0 and flat.argmax(1).item() == 1
    sims = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    expected = torch.tensor([(sims[0, 0] / 0.07).exp(), (sims[0, 1] / 0.07).exp() * 2])
    torch.testing.assert_close(sharp[0], expected)


def test_knn_metrics_separable_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 5
    train_y, val_y = torch.arange(60) % 3, torch.arange(30) % 3
    train_f = centres[train_y] + torch.randn(60, 16, generator=g)
    val_f = centres[val_y] + torch.randn(30, 16, generator=g)
    metrics, per_image = knn.knn_metrics(train_f, train_y, val_f, val_y, 3, k=20, temperature=0.07)
    assert metrics == {"top1": 100.0, "top5": 100.0}
    assert (per_image["pred"] == per_image["target"]).all() and per_image["target"].tolist() == val_y.tolist()
    shuffled, per_image = knn.knn_metrics(train_f, train_y[torch.randperm(60, generator=g)], val_f, val_y, 3, 20, 0.07)
    assert shuffled["top1"] < 70.0  # labels matter: the score is not constant
    assert 100.0 * (per_image["pred"] == per_image["target"]).mean() == pytest.approx(shuffled["top1"])


def test_topk_correct_caps_k_at_num_classes():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    target = torch.tensor([1, 1, 0])
    assert classification.topk_correct(scores, target) == {1: 1, 5: 3}


def test_knn_cli_separable(data, ckpt, tmp_path):
    out = tmp_path / "knn"
    assert cli(["knn", "--data", str(data), "--out", str(out), "--init", str(ckpt), "--device", "cpu"]) == 0
    m = _metrics(out)
    assert m["top1"] == 100.0 and m["top5"] == 100.0
    assert m["k"] == 20 and m["temperature"] == 0.07 and m["params"] == 0 and m["n_val"] == 24
    assert m["init_report"]["loaded"] > 0 and m["model"] == MODEL


# ---------------------------------------------------------------------------------------- fine-tuning


def test_layer_decay_scales():
    cfg = finetune.FinetuneConfig(layer_decay=0.5, weight_decay=0.05)
    model, _, _ = finetune.build_finetune_model(cfg.__class__(model=MODEL, layer_decay=0.5), None, 3, 16)
    task = finetune.FinetuneTask(model, cfg, [], [], torch.device("cpu"))
    scale = {}
    decay = {}
    for group in task.param_groups(cfg):
        for p in group["params"]:
            name = next(n for n, q in model.named_parameters() if q is p)
            scale[name], decay[name] = group["lr_scale"], group["weight_decay"]
    assert len(scale) == sum(1 for _ in model.parameters())
    d = 0.5
    for name in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        assert scale[name] == pytest.approx(d ** (DEPTH + 1)), name
    for i in range(DEPTH):
        assert scale[f"blocks.{i}.attn.qkv.weight"] == pytest.approx(d ** (DEPTH - i))
        assert scale[f"blocks.{i}.norm1.bias"] == pytest.approx(d ** (DEPTH - i))
    for name in ("fc_norm.weight", "head.weight", "head.bias"):
        assert scale[name] == pytest.approx(1.0), name
    assert decay["head.weight"] == 0.05 and decay["head.bias"] == 0.0 and decay["blocks.0.norm1.weight"] == 0.0
    assert decay["pos_embed"] == 0.0 and decay["cls_token"] == 0.0  # timm's no_weight_decay()


def test_finetune_from_mae_checkpoint(data, ckpt, tmp_path):
    import timm

    from mae.models import encoder_kwargs

    out = tmp_path / "ft"
    rc = cli(
        [
            "finetune",
            "--data",
            str(data),
            "--out",
            str(out),
            "--init",
            str(ckpt),
            *FAST,
            "--set",
            "epochs=2",
            "--set",
            "batch_size=16",
        ]
    )
    assert rc == 0
    m = _metrics(out)
    for key in ("top1", "top5", "loss", "epochs", "wall_s", "img_s", "params", "best_top1", "train_loss"):
        assert key in m, key
    assert m["epochs"] == 2 and m["init"] == "mae" and m["model"] == MODEL
    assert m["best_top1"] >= m["top1"] and 0 <= m["top1"] <= 100
    assert m["init_report"]["pos_embed_resampled"] == [[1, 65, 128], [1, 17, 128]]
    vit_params = sum(
        p.numel()
        for p in timm.create_model(
            "vit_base_patch16_224", num_classes=2, global_pool="avg", **{**encoder_kwargs(MODEL), "img_size": 16}
        ).parameters()
    )
    assert m["params"] == vit_params
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum(1 for r in evals if r.get("kind") == "eval") == 2  # eval_every=1: after epoch 1 and at the end

    # the documented one-liner: plain timm loads the fine-tuned weights
    vit = timm.create_model(
        "vit_base_patch16_224",
        checkpoint_path=str(out / "model.pt"),
        num_classes=2,
        global_pool="avg",
        **{**encoder_kwargs(MODEL), "img_size": 16},
    )
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert saved["config"]["model"] == MODEL
    ours, _, _ = finetune.build_finetune_model(finetune.FinetuneConfig(model=MODEL), None, 2, 16)
    ours.load_state_dict(saved["model"])
    x = torch.randn(2, 3, 16, 16)
    vit.eval(), ours.eval()
    torch.testing.assert_close(vit(x), ours(x))
    # the fine-tuned model.pt is itself a valid --init (the 'supervised' encoder of the study); name from config
    assert classification.resolve_model_name(None, str(out / "model.pt")) == MODEL


def test_finetune_head_init_and_encoder_loaded(ckpt, mae_model):
    cfg = finetune.FinetuneConfig(global_pool="token")
    model, name, report = finetune.build_finetune_model(cfg, str(ckpt), 2, 32)
    assert name == MODEL and report["pos_embed_resampled"] is None
    assert 1.4e-5 < float(model.head.weight.detach().std()) < 2.6e-5 and model.head.bias.abs().max() == 0
    sd = mae_model.state_dict()
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.5.mlp.fc2.weight", "norm.weight"):
        torch.testing.assert_close(model.state_dict()[key], sd[key])


def test_finetune_scratch_and_reference_checkpoint(data, ref_ckpt, tmp_path):
    out = tmp_path / "scratch"
    assert (
        cli(
            [
                "finetune",
                "--data",
                str(data),
                "--out",
                str(out),
                "--scratch",
                *FAST,
                "--set",
                "epochs=1",
                "--set",
                "batch_size=16",
                "--set",
                "mixup=0",
                "--set",
                "cutmix=0",
                "--set",
                "layer_decay=1.0",
            ]
        )
        == 0
    )
    m = _metrics(out)
    assert m["init"] == "scratch" and m["init_path"] is None and m["model"] == MODEL
    # a reference {'model': full MAE incl. decoder} file has no model name: --set model=..., then it loads
    out2 = tmp_path / "ref"
    with pytest.raises(UserError, match="model"):
        classification.resolve_model_name(None, str(ref_ckpt))
    assert (
        cli(
            [
                "finetune",
                "--data",
                str(data),
                "--out",
                str(out2),
                "--init",
                str(ref_ckpt),
                *FAST,
                "--set",
                f"model={MODEL}",
                "--set",
                "epochs=1",
                "--set",
                "batch_size=16",
            ]
        )
        == 0
    )
    assert _metrics(out2)["init_report"]["ignored"] > 0  # decoder keys


def test_finetune_rerun_of_finished_run_keeps_weights(data, ckpt, tmp_path):
    out = tmp_path / "ft"
    args = [
        "finetune",
        "--data",
        str(data),
        "--out",
        str(out),
        "--init",
        str(ckpt),
        *FAST,
        "--set",
        "epochs=1",
        "--set",
        "batch_size=16",
        "--set",
        "max_steps=1",
    ]
    assert cli(args) == 0
    first = torch.load(out / "model.pt", weights_only=True)["model"]
    assert cli(args) == 0  # finished: fit() returns the stored metrics, model.pt is rewritten from the checkpoint
    again = torch.load(out / "model.pt", weights_only=True)["model"]
    for k in first:
        assert torch.equal(first[k], again[k]), k


def test_finetune_ema_update_and_state():
    cfg = finetune.FinetuneConfig(model=MODEL, ema_decay=0.75)
    model, _, _ = finetune.build_finetune_model(cfg, None, 2, 16)
    task = finetune.FinetuneTask(model, cfg, [], [], torch.device("cpu"))
    assert task.eval_model is task.ema.module and task.eval_model is not model
    start = model.head.weight.detach().clone()
    with torch.no_grad():
        model.head.weight.add_(1.0)
    task.after_optimizer_step(1)
    torch.testing.assert_close(task.eval_model.head.weight, start + 0.25)  # 0.75 * ema + 0.25 * weights
    state = task.state_dict()
    other = finetune.FinetuneTask(finetune.build_finetune_model(cfg, None, 2, 16)[0], cfg, [], [], torch.device("cpu"))
    other.load_state_dict(state)
    assert all(torch.equal(v, other.eval_model.state_dict()[k]) for k, v in task.eval_model.state_dict().items())
    plain = finetune.FinetuneTask(model, finetune.FinetuneConfig(model=MODEL), [], [], torch.device("cpu"))
    assert plain.ema is None and plain.eval_model is model and "ema" not in plain.state_dict()
    with pytest.raises(UserError, match="ema_decay=1.0"):
        finetune.FinetuneConfig(ema_decay=1.0).check()


def test_finetune_ema_is_evaluated_saved_and_resumes_exactly(data, tmp_path):
    """The from-scratch recipe's EMA: its weights are evaluated (top1) and saved (model.pt); the trained weights'
    top-1 is live_top1; 1 epoch + resume gives the EMA, metrics and model.pt of 2 epochs in one go."""
    args = [
        "finetune",
        "--data",
        str(data),
        "--scratch",
        *FAST,
        "--set",
        f"model={MODEL}",
        "--set",
        "epochs=2",
        "--set",
        "batch_size=16",
        "--set",
        "ema_decay=0.9",
        "--set",
        "layer_decay=1.0",
        "--set",
        "eval_every=0",
    ]  # no evaluation between the epochs: max_steps below skips it too
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli([*args, "--out", str(straight)]) == 0
    m = _metrics(straight)
    assert m["eval_weights"] == "ema" and m["config"]["ema_decay"] == 0.9 and "live_top1" in m
    saved = torch.load(straight / "model.pt", weights_only=True)
    ckpt = torch.load(straight / "checkpoint.pt", weights_only=False)
    assert saved["config"]["weights"] == "ema"
    assert all(torch.equal(v, ckpt["task"]["ema"][k]) for k, v in saved["model"].items())
    assert not torch.equal(saved["model"]["head.weight"], ckpt["model"]["head.weight"])

    assert cli([*args, "--out", str(resumed), "--set", "max_steps=3"]) == 0  # 48 images / 16 = one epoch
    first = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert first["step"] == 3
    first["finished"] = False  # as if killed after its epoch-1 checkpoint
    torch.save(first, resumed / "checkpoint.pt")
    torch.manual_seed(123)
    assert cli([*args, "--out", str(resumed)]) == 0
    again = torch.load(resumed / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(v, again[k]) for k, v in saved["model"].items())
    mr = _metrics(resumed)
    assert (mr["top1"], mr["loss"], mr["live_top1"]) == (m["top1"], m["loss"], m["live_top1"])


def test_user_errors(data, tmp_path, capsys):
    assert (
        cli(
            [
                "finetune",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "x"),
                "--init",
                str(tmp_path / "nope.pt"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "nope.pt" in capsys.readouterr().err
    assert cli(["linprobe", "--data", str(data), "--out", str(tmp_path / "y"), "--scratch", "--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert (
        cli(
            [
                "partial-ft",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "z"),
                "--scratch",
                "--blocks",
                "7",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "--blocks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["knn", "--data", str(data), "--out", str(tmp_path / "w")])  # neither --init nor --scratch


# ------------------------------------------------------------------------------------- linear probing


def test_linprobe_frozen_encoder(data, ckpt, tmp_path):
    out = tmp_path / "lin"
    assert (
        cli(
            [
                "linprobe",
                "--data",
                str(data),
                "--out",
                str(out),
                "--init",
                str(ckpt),
                *FAST,
                "--set",
                "epochs=2",
                "--set",
                "batch_size=16",
            ]
        )
        == 0
    )
    m = _metrics(out)
    assert m["params"] == 128 * 2 + 2 and m["cached_features"] is False and "best_top1" in m
    trained = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    initial, _, _ = linprobe.build_probe_model(linprobe.LinprobeConfig(), str(ckpt), 2, 16)
    before = initial.state_dict()
    enc = _encoder_state(before)
    assert len(enc) > 50
    for key, value in enc.items():
        assert torch.equal(value, trained[key]), key
    assert not torch.equal(before["head.1.weight"], trained["head.1.weight"])
    assert not torch.equal(before["head.0.running_mean"], trained["head.0.running_mean"])  # BN statistics


def test_linprobe_head_and_lars_groups(ckpt):
    cfg = linprobe.LinprobeConfig()
    model, _, _ = linprobe.build_probe_model(cfg, str(ckpt), 2, 16)
    bn, linear = model.head
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert 0 < linear.weight.std() < 0.02
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.1.weight", "head.1.bias"]
    task = linprobe.LinprobeTask(model, cfg, [], [], torch.device("cpu"))
    groups = task.param_groups(cfg)
    opt = task.optimizer(groups, 0.1, cfg)
    from timm.optim import Lars

    assert isinstance(opt, Lars) and opt.defaults["momentum"] == 0.9
    assert [(len(g["params"]), g["always_adapt"], g["weight_decay"], g["trust_coeff"]) for g in opt.param_groups] == [
        (1, True, 0.0, 1e-3),
        (1, False, 0.0, 1e-3),
    ]


def test_linprobe_cached_features(data, ckpt, tmp_path):
    out = tmp_path / "lin_cached"
    assert (
        cli(
            [
                "linprobe",
                "--data",
                str(data),
                "--out",
                str(out),
                "--init",
                str(ckpt),
                *FAST,
                "--set",
                "epochs=3",
                "--set",
                "batch_size=16",
                "--set",
                "cached_features=true",
                "--set",
                "optimizer=sgd",
            ]
        )
        == 0
    )
    m = _metrics(out)
    assert m["cached_features"] is True and m["params"] == 258 and m["epochs"] == 3
    # two colour classes are linearly separable in any encoder's features (SGD: LARS's steps of
    # lr * 0.001 * |w| barely move the head in 9 steps, see docs/evaluations.md)
    assert m["top1"] >= 90.0
    assert set(torch.load(out / "checkpoint.pt", weights_only=False)["model"]) == {
        "0.running_mean",
        "0.running_var",
        "0.num_batches_tracked",
        "1.weight",
        "1.bias",
    }


# ------------------------------------------------------------------------------------ partial fine-tuning


def test_partial_ft_one_block(data, ckpt, tmp_path):
    out = tmp_path / "pft1"
    assert (
        cli(
            [
                "partial-ft",
                "--blocks",
                "1",
                "--data",
                str(data),
                "--out",
                str(out),
                "--init",
                str(ckpt),
                *FAST,
                "--set",
                "epochs=1",
                "--set",
                "batch_size=16",
            ]
        )
        == 0
    )
    m = _metrics(out)
    assert m["blocks"] == 1 and m["recipe"] == "finetune" and m["eval"] == "partial_ft-1"
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    trained = saved["model"]
    initial, _, _ = finetune.build_finetune_model(finetune.FinetuneConfig(), str(ckpt), 2, 16)
    before = initial.state_dict()
    last = f"blocks.{DEPTH - 1}."
    frozen = [k for k in before if not k.startswith((last, "fc_norm", "head", "norm."))]
    assert "pos_embed" in frozen and "blocks.0.attn.qkv.weight" in frozen
    for key in frozen:
        assert torch.equal(before[key], trained[key]), key
    assert not torch.equal(before[last + "mlp.fc2.weight"], trained[last + "mlp.fc2.weight"])
    n_opt = sum(len(g["params"]) for g in saved["optimizer"]["param_groups"])
    model, _, _ = finetune.build_finetune_model(finetune.FinetuneConfig(), None, 2, 16)
    partial_ft.freeze_for_blocks(model, 1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert n_opt == len(trainable) and all(n.startswith((last, "fc_norm", "head")) for n in trainable)
    assert m["params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert isinstance(model.blocks[0].drop_path1, torch.nn.Identity)


def test_partial_ft_all_blocks_is_full_finetuning(data, ckpt, tmp_path):
    """K = depth trains everything, stem included, and gives the numbers and weights of `mae finetune`."""
    model, _, _ = finetune.build_finetune_model(finetune.FinetuneConfig(), None, 2, 16)
    partial_ft.freeze_for_blocks(model, DEPTH)
    assert all(p.requires_grad for p in model.parameters())
    flags = ["--data", str(data), "--init", str(ckpt), *FAST, "--set", "epochs=1", "--set", "batch_size=16"]
    out_p, out_f = tmp_path / "pft", tmp_path / "ft"
    assert cli(["partial-ft", "--blocks", str(DEPTH), "--out", str(out_p), *flags]) == 0
    assert cli(["finetune", "--out", str(out_f), *flags]) == 0
    mp, mf = _metrics(out_p), _metrics(out_f)
    assert mp["params"] == mf["params"] and (mp["top1"], mp["loss"]) == (mf["top1"], mf["loss"])
    trained = torch.load(out_p / "checkpoint.pt", weights_only=False)["model"]
    full = torch.load(out_f / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(trained[k], full[k]) for k in full)
    initial, _, _ = finetune.build_finetune_model(finetune.FinetuneConfig(), str(ckpt), 2, 16)
    assert not torch.equal(initial.state_dict()["patch_embed.proj.weight"], trained["patch_embed.proj.weight"])


def test_partial_ft_zero_blocks_is_linear_probe(data, ckpt, tmp_path):
    out_p, out_l = tmp_path / "pft0", tmp_path / "lin"
    flags = [
        "--data",
        str(data),
        "--init",
        str(ckpt),
        *FAST,
        "--set",
        "epochs=2",
        "--set",
        "batch_size=16",
        "--set",
        "cached_features=true",
    ]
    assert cli(["partial-ft", "--blocks", "0", "--out", str(out_p), *flags]) == 0
    assert cli(["linprobe", "--out", str(out_l), *flags]) == 0
    mp, ml = _metrics(out_p), _metrics(out_l)
    assert mp["recipe"] == "linprobe" and mp["params"] == ml["params"] == 258
    assert mp["top1"] == ml["top1"] and mp["loss"] == pytest.approx(ml["loss"])
    # --reuse copies the linear probe's result (metrics and per-image predictions) once its settings are checked
    out_r = tmp_path / "reused"
    assert cli(["partial-ft", "--blocks", "0", "--reuse", str(out_l), "--out", str(out_r), *flags]) == 0
    mr = _metrics(out_r)
    assert mr["eval"] == "partial_ft-0" and mr["reused_from"] == str(out_l) and mr["top1"] == ml["top1"]
    assert mr["recipe"] == "linprobe" and mr["blocks"] == 0
    assert (out_r / "predictions.npz").read_bytes() == (out_l / "predictions.npz").read_bytes()
    assert not (out_r / "checkpoint.pt").exists()


def test_folded_probe_head_gives_the_probe_outputs():
    torch.manual_seed(0)
    head = linprobe.probe_head(16, 3, 0.5)
    head.train()
    head(torch.randn(64, 16) * 3 + 1)  # running statistics away from (0, 1)
    head.eval()
    x = torch.randn(8, 16) * 3 + 1
    torch.testing.assert_close(linprobe.folded_linear(head)(x), head(x), rtol=1e-5, atol=1e-5)


def test_partial_ft_head_starts_from_the_trained_probe(data, ckpt, tmp_path, capsys):
    """`--head-from` puts the probe's trained head on the K-block model: with lr 0 (nothing moves) its
    predictions are exactly the probe's; a probe of other features, init or data is refused by name."""
    flags = ["--data", str(data), "--init", str(ckpt), *FAST, "--set", "batch_size=16", "--set", "amp=none"]
    out_l = tmp_path / "lin"
    assert (
        cli(
            [
                "linprobe",
                "--out",
                str(out_l),
                *flags,
                "--set",
                "epochs=3",
                "--set",
                "cached_features=true",
                "--set",
                "optimizer=sgd",
                "--set",
                "global_pool=avg",
            ]
        )
        == 0
    )
    assert (out_l / linprobe.HEAD_FILE).is_file()
    out = tmp_path / "pft1"
    assert (
        cli(
            [
                "partial-ft",
                "--blocks",
                "1",
                "--head-from",
                str(out_l),
                "--out",
                str(out),
                *flags,
                "--set",
                "epochs=1",
                "--set",
                "base_lr=0",
                "--set",
                "mixup=0",
                "--set",
                "cutmix=0",
            ]
        )
        == 0
    )
    m, ml = _metrics(out), _metrics(out_l)
    assert m["head_init"] == "probe" and m["head_from"] == {"dir": str(out_l), "top1": ml["top1"]}
    assert m["top1"] == ml["top1"]
    assert np.array_equal(np.load(out / "predictions.npz")["pred"], np.load(out_l / "predictions.npz")["pred"])
    # a probe finished before it wrote head.safetensors: the head comes from its final checkpoint
    (out_l / linprobe.HEAD_FILE).unlink()
    assert (
        cli(
            [
                "partial-ft",
                "--blocks",
                "1",
                "--head-from",
                str(out_l),
                "--out",
                str(tmp_path / "old"),
                *flags,
                "--set",
                "epochs=1",
                "--set",
                "base_lr=0",
                "--set",
                "mixup=0",
                "--set",
                "cutmix=0",
            ]
        )
        == 0
    )
    assert _metrics(tmp_path / "old")["top1"] == ml["top1"]
    for extra, message in (
        (["--set", "global_pool=token"], "global_pool='avg' features"),
        (["--scratch"], "was computed with init_path="),
    ):
        args = [a for a in flags if a not in ("--init", str(ckpt))] if extra == ["--scratch"] else flags
        assert (
            cli(["partial-ft", "--blocks", "1", "--head-from", str(out_l), "--out", str(tmp_path / "x"), *args, *extra])
            == 2
        )
        assert message in capsys.readouterr().err
    assert cli(["partial-ft", "--blocks", "0", "--head-from", str(out_l), "--out", str(tmp_path / "y"), *flags]) == 2
    assert "only for --blocks K > 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        (["--set", "epochs=3"], "was trained with epochs=2, now epochs=3"),
        (["--blocks", "1"], "--reuse: only for --blocks 0"),
        (["--data", "{other}"], "was computed with data="),
    ],
)
def test_partial_ft_reuse_refuses_other_settings(data, ckpt, tmp_path, capsys, change, message):
    flags = [
        "--data",
        str(data),
        "--init",
        str(ckpt),
        *FAST,
        "--set",
        "epochs=2",
        "--set",
        "batch_size=16",
        "--set",
        "cached_features=true",
    ]
    assert cli(["linprobe", "--out", str(tmp_path / "lin"), *flags]) == 0
    change = [c.replace("{other}", str(tmp_path / "elsewhere")) for c in change]
    blocks = change[1] if change[0] == "--blocks" else "0"
    rest = [] if change[0] == "--blocks" else change
    out = tmp_path / "reused"
    assert (
        cli(["partial-ft", "--blocks", blocks, "--reuse", str(tmp_path / "lin"), "--out", str(out), *flags, *rest]) == 2
    )
    assert message in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


def test_attention_kernel_follows_autocast():
    model, _ = classification.build_encoder(MODEL, 2, img_size=16)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model(x).float()
    assert all(not b.attn.fused_attn for b in model.blocks)  # math kernels under CPU bf16
    exact = model(x)
    assert all(b.attn.fused_attn for b in model.blocks)  # timm's fused SDPA otherwise
    torch.testing.assert_close(fast, exact, atol=0.05, rtol=0.05)
    # paths that skip model.forward (feature extraction, transfer backbones) follow the same rule
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        classification.features(model, x)
    assert all(not b.attn.fused_attn for b in model.blocks)
    model.forward_features(x)
    assert all(b.attn.fused_attn for b in model.blocks)


def test_changed_inputs_compares_files_not_spellings(tmp_path, monkeypatch):
    """A probe recorded with a relative init path is the same init as its absolute spelling (the study runs
    rules from the repo root; a user calls `mae partial-ft --head-from` with absolute paths)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck.pt").write_bytes(b"x")
    (tmp_path / "other.pt").write_bytes(b"y")
    (tmp_path / "data").mkdir()
    old = {"init_path": "ck.pt", "data": "data"}
    assert partial_ft.changed_inputs(old, tmp_path / "m.json", str(tmp_path / "ck.pt"), tmp_path / "data") is None
    assert "init_path='ck.pt'" in partial_ft.changed_inputs(
        old, tmp_path / "m.json", str(tmp_path / "other.pt"), "data"
    )
    assert "init_path" in partial_ft.changed_inputs(old, tmp_path / "m.json", None, "data")
    assert "data=" in partial_ft.changed_inputs({**old, "data": "gone"}, tmp_path / "m.json", "ck.pt", "data")
