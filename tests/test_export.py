"""`mae export` (safetensors, timm, Hugging Face transformers) and `--init` from each of those formats, checked
against timm and transformers themselves: second implementations nobody here wrote. Tiny models, plus one
ViT-B/16 forward at batch 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mae.cli import main as cli
from mae.errors import UserError
from mae.models import create_encoder, create_mae, load_mae_checkpoint
from mae.models.checkpoint import ARCH_KEY, ENCODER_FILE, is_safetensors, read_checkpoint, split_encoder_keys
from mae.models.interop import from_hf_state
from mae.models.masking import sample_from_mask
from mae.stages import classification
from mae.tools.export import export, timm_call

MODEL = "mae_vit_micro_patch4"  # 32 px, patch 4 (8 x 8 patches), 128 x 6 blocks, 4 heads; decoder 128 x 2
TOL = 1e-5


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return json.loads(fh.metadata()[ARCH_KEY])


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module", params=["norm_pixel", "pixel"])
def pretrained(request, tmp_path_factory):
    """(model, its checkpoint.pt in our pretraining format): a randomly initialised micro MAE."""
    torch.manual_seed(0)
    model = create_mae(MODEL, target=request.param).eval()
    path = tmp_path_factory.mktemp("pretrain") / "checkpoint.pt"
    config = {"model": MODEL, "target": request.param, "mask_ratio": 0.75, "decoder_heads": None, "img_size": None}
    torch.save({"model": model.state_dict(), "config": config, "epoch": 0}, path)
    return model, path


def _all_tokens(model, images: torch.Tensor) -> torch.Tensor:
    """Our MAE encoder on every patch, in patch order (cls first, after the final norm)."""
    keep_all = sample_from_mask(torch.zeros(images.shape[0], model.patch_embed.num_patches, dtype=torch.bool))
    return model.forward_encoder(images, 0.0, keep_all)[0]


# ------------------------------------------------------------------------------------------------ safetensors
def test_safetensors_round_trip(pretrained, images, tmp_path, capsys):
    model, ckpt = pretrained
    out = tmp_path / "mae.safetensors"
    assert cli(["export", str(ckpt), "--to", "safetensors", "--out", str(out)]) == 0
    assert "architecture in its metadata" in capsys.readouterr().out
    assert is_safetensors(out) and not list(tmp_path.glob(".*"))  # no temp file left
    arch = _metadata(out)
    assert arch["model"] == MODEL and arch["kind"] == "mae" and arch["target"] == model.target_kind
    assert (arch["img_size"], arch["patch_size"], arch["embed_dim"], arch["depth"], arch["num_heads"]) == (
        32,
        4,
        128,
        6,
        4,
    )
    assert (arch["decoder_width"], arch["decoder_depth"], arch["decoder_heads"]) == (128, 2, 4)
    # --init reads it back: the whole MAE (reconstructions), and the encoder of the evaluations
    from mae.tools.visualize import load_mae

    back, cfg = load_mae(str(out))
    assert cfg["model"] == MODEL and back.target_kind == model.target_kind
    with torch.no_grad():
        torch.manual_seed(3)
        want = model(images)
        torch.manual_seed(3)
        got = back(images)
    assert all(_diff(a, b) == 0 for a, b in zip(want, got, strict=True))
    assert classification.resolve_model_name(None, str(out)) == MODEL
    vit, report = classification.build_encoder(MODEL, 0, global_pool="token", init=str(out))
    assert report["loaded"] > 0
    with torch.no_grad():
        assert _diff(vit.eval().forward_features(images), _all_tokens(model, images)) <= TOL


# ------------------------------------------------------------------------------------------------------ timm
def test_timm_loads_the_micro_export(pretrained, images, tmp_path, capsys):
    """No timm name fits our 32 px model: the printed keywords build it on ViT-B/16's name; timm loads strictly."""
    import timm

    model, ckpt = pretrained
    out = tmp_path / "micro.safetensors"
    assert cli(["export", str(ckpt), "--to", "timm", "--out", str(out)]) == 0
    assert "timm.create_model(model_name='vit_base_patch16_224.mae'" in capsys.readouterr().out
    call = _metadata(out)["timm"]
    assert {k: call[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")} == dict(
        img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4
    )
    call["pretrained_cfg_overlay"]["file"] = str(out)
    vit = timm.create_model(**call).eval()  # strict: the overlay's num_classes equals the model's
    assert vit.pretrained_cfg["input_size"] == [3, 32, 32] and vit.pretrained_cfg["mean"] == [0.485, 0.456, 0.406]
    with torch.no_grad():
        assert _diff(vit.forward_features(images), _all_tokens(model, images)) <= TOL
    # a plain torch.save state dict for another suffix: timm reads it the same way
    pth = tmp_path / "micro.pth"
    export(ckpt, "timm", pth)
    state = torch.load(pth, weights_only=True)
    assert set(state) == set(split_encoder_keys(model.state_dict())[0])
    result = timm.create_model(**{**call, "pretrained": False}).load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_timm_loads_a_vit_b16_export_by_its_name(tmp_path):
    """Paper size: timm's own name `vit_base_patch16_224.mae` loads the export with no architecture keyword."""
    import timm

    from mae.models import infer_model_name
    from mae.tools.export import export_timm

    torch.manual_seed(0)
    ours = create_encoder("mae_vit_base_patch16", num_classes=0, global_pool="token").eval()
    out = tmp_path / "vit_b16.safetensors"
    export_timm(ours.state_dict(), {"model": "mae_vit_base_patch16"}, out, "ViT-B/16")
    call = timm_call(_metadata(out))
    assert call["model_name"] == "vit_base_patch16_224.mae" and not {"img_size", "embed_dim", "depth"} & set(call)
    theirs = timm.create_model("vit_base_patch16_224.mae", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _diff(theirs.eval().forward_features(x), ours.forward_features(x)) <= TOL
    # timm's folder of these weights (config.json + model.safetensors, as the hub's timm/ repositories) names it
    folder = tmp_path / "timm-folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": 0}))
    out.rename(folder / "model.safetensors")
    assert classification.checkpoint_model_name(str(folder)) == "mae_vit_base_patch16"
    assert infer_model_name(16, 768, 12, 4.0) == "mae_vit_base_patch16"
    assert infer_model_name(14, 1280, 32, 4.0, num_heads=16) == "mae_vit_huge_patch14"
    assert infer_model_name(16, 768, 12, 4.0, num_heads=6) is None and infer_model_name(8, 64, 2, 4.0) is None


@pytest.mark.parametrize("form", ["pth", "safetensors", "folder"])
def test_init_from_a_timm_state_dict(form, images, tmp_path):
    """timm's own weights of our micro architecture as a plain state dict, a safetensors file or a timm folder
    (config.json + model.safetensors): our encoder gives timm's features."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    source = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=32,
        patch_size=4,
        embed_dim=128,
        depth=6,
        num_heads=4,
    ).eval()
    state = source.state_dict()
    if form == "pth":
        torch.save(state, path := tmp_path / "timm.pth")
    elif form == "safetensors":
        save_file(state, str(path := tmp_path / "timm.safetensors"))
    else:
        (path := tmp_path / "timm-folder").mkdir()
        (path / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": 0}))
        save_file(state, str(path / "model.safetensors"))
    # nothing records our name (the folder's architecture is ViT-B's, the shapes are not): --set model=NAME
    assert classification.checkpoint_model_name(str(path)) is None
    ours, _ = classification.build_encoder(MODEL, 0, global_pool="token", init=str(path))
    with torch.no_grad():
        assert _diff(ours.eval().forward_features(images), source.forward_features(images)) <= TOL


def test_finetuned_model_exports_and_timm_loads_it(images, tmp_path, capsys):
    """A fine-tuned classifier (average pooling, fc_norm, head): model.pt and its encoder.safetensors load in timm
    with its classes and pooling; logits equal ours; it has no Hugging Face ViTMAE form."""
    import timm

    torch.manual_seed(4)
    vit = create_encoder(MODEL, num_classes=10, global_pool="avg").eval()
    meta = {"model": MODEL, "num_classes": 10, "img_size": 32, "global_pool": "avg"}
    classification.save_model(vit, tmp_path, meta)
    arch = _metadata(tmp_path / ENCODER_FILE)
    assert (arch["kind"], arch["num_classes"], arch["global_pool"]) == ("classifier", 10, "avg")
    out = tmp_path / "exported.safetensors"
    assert cli(["export", str(tmp_path / "model.pt"), "--to", "timm", "--out", str(out)]) == 0
    capsys.readouterr()
    with torch.no_grad():
        want = vit(images)
        for file in (tmp_path / ENCODER_FILE, out):
            call = timm_call(_metadata(file), file)
            assert call["model_name"] == "vit_base_patch16_224" and call["global_pool"] == "avg"
            assert _diff(timm.create_model(**call).eval()(images), want) <= TOL
        back, _ = classification.build_encoder(MODEL, 10, init=str(tmp_path / ENCODER_FILE))
        assert _diff(back.eval()(images), want) == 0
    assert cli(["export", str(tmp_path / "model.pt"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "classifier weights have no Hugging Face ViTMAE" in err


# ----------------------------------------------------------------------------------------------- transformers
@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # eager: transformers' own softmax(QK^T)V, not torch's
def test_hf_export_matches_transformers(pretrained, images, tmp_path, monkeypatch, attention):
    """ViTMAEForPreTraining loads the folder offline with no missing or unexpected key; given our noise its loss,
    mask and reconstruction are ours; ViTMAEModel gives our encoder's output."""
    transformers = pytest.importorskip("transformers")
    model, ckpt = pretrained
    folder = tmp_path / "hf"
    export(ckpt, "hf", folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # nothing may come from the network
    load = dict(output_loading_info=True, attn_implementation=attention)
    hf, info = transformers.ViTMAEForPreTraining.from_pretrained(folder, **load)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf.config.norm_pix_loss == (model.target_kind == "norm_pixel") and hf.config.layer_norm_eps == 1e-6
    n, length = images.shape[0], model.patch_embed.num_patches
    torch.manual_seed(11)
    noise = torch.rand(n, length)  # the one random draw of our random masking
    with torch.no_grad():
        torch.manual_seed(11)
        loss, pred, mask = model(images, mask_ratio=0.75)
        theirs = hf.eval()(pixel_values=images, noise=noise)
        assert _diff(theirs.loss, loss) <= TOL and _diff(theirs.mask, mask) == 0
        assert _diff(theirs.logits, pred) <= TOL
        encoder, info = transformers.ViTMAEModel.from_pretrained(folder, **load)
        assert not info["missing_keys"]  # the decoder's keys are the unexpected ones
        torch.manual_seed(11)
        latent, _, _ = model.forward_encoder(images, 0.75)
        assert _diff(encoder.eval()(pixel_values=images, noise=noise).last_hidden_state, latent) <= TOL
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and processor.size["height"] == 32


def test_hf_folder_written_by_transformers_is_an_init(images, tmp_path):
    """A folder transformers saved itself (its own names, LayerNorm eps 1e-12 as on the Hub): our MAE and our encoder
    give its outputs."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    config = transformers.ViTMAEConfig(
        hidden_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=512,
        image_size=32,
        patch_size=4,
        decoder_hidden_size=128,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=512,
        norm_pix_loss=True,
    )
    hf = transformers.ViTMAEForPreTraining(config).eval()
    with torch.no_grad():  # random position tables: a table put in the wrong place cannot go unnoticed
        hf.vit.embeddings.position_embeddings.normal_()
        hf.decoder.decoder_pos_embed.normal_()
    folder = tmp_path / "saved-by-transformers"
    hf.save_pretrained(folder)
    obj = read_checkpoint(folder)
    assert obj["config"]["model"] == MODEL and obj["config"]["layer_norm_eps"] == 1e-12
    in_memory = from_hf_state(hf.state_dict())  # the names of this transformers release, not the Hub's
    assert set(in_memory) == set(obj["model"]) and all(torch.equal(v, obj["model"][k]) for k, v in in_memory.items())
    ours = create_mae(MODEL, norm_pix_loss=True).eval()
    load_mae_checkpoint(ours, str(folder))
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.manual_seed(0)
        want = hf(pixel_values=images, noise=noise)
        rng = torch.get_rng_state()
        torch.manual_seed(9)  # our masking draws the same noise from the global generator
        loss, pred, mask = ours(images)
        torch.set_rng_state(rng)
        assert _diff(loss, want.loss) <= TOL and _diff(mask, want.mask) == 0 and _diff(pred, want.logits) <= TOL
        # the encoder of the evaluations: every token in order (mask ratio 0, sorted noise)
        assert classification.resolve_model_name(None, str(folder)) == MODEL
        vit, report = classification.build_encoder(MODEL, 0, global_pool="token", init=str(folder))
        assert report["layer_norm_eps"] == 1e-12
        encoder = transformers.ViTMAEModel.from_pretrained(folder).eval()
        alone = from_hf_state(encoder.state_dict())  # ViTMAEModel's names: no vit. prefix
        assert set(alone) == set(split_encoder_keys(obj["model"])[0])
        assert all(torch.equal(v, obj["model"][k]) for k, v in alone.items())
        encoder.config.mask_ratio = 0.0
        ordered = torch.arange(64, dtype=torch.float32).expand(2, -1)
        full = encoder(pixel_values=images, noise=ordered).last_hidden_state
        assert _diff(vit.eval().forward_features(images), full) <= TOL
    # and back out again: the exported folder equals the one transformers wrote, weight for weight
    export(folder, "hf", tmp_path / "again")
    again = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "again").state_dict()
    assert all(torch.equal(value, again[key]) for key, value in hf.state_dict().items())


# ------------------------------------------------------------------------------------------- runs write it too
def test_pretraining_and_finetuning_write_encoder_safetensors(tmp_path):
    import timm

    from mae.data.prepare import prepare_builtin

    data = tmp_path / "data"
    prepare_builtin(data, "shapes", img_size=32, n_train=16, n_val=8, seed=0)
    pre = tmp_path / "run" / "pretrain"
    sets = ["epochs=1", "batch_size=8", "max_steps=1", "eval_images=0", "amp=none", f"model={MODEL}", "decoder_depth=1"]
    assert (
        cli(
            [
                "pretrain",
                "--data",
                str(data),
                "--out",
                str(pre),
                "--device",
                "cpu",
                *[a for s in sets for a in ("--set", s)],
            ]
        )
        == 0
    )
    trained = torch.load(pre / "checkpoint.pt", weights_only=True)["model"]
    encoder = read_checkpoint(pre / ENCODER_FILE)
    assert encoder["config"]["kind"] == "encoder" and encoder["config"]["model"] == MODEL
    expected = split_encoder_keys(trained)[0]
    assert set(encoder["model"]) == set(expected) and all(
        torch.equal(encoder["model"][k], v) for k, v in expected.items()
    )
    call = timm_call(encoder["config"], pre / ENCODER_FILE)
    timm.create_model(**call)  # strict
    ft = tmp_path / "run" / "finetune"
    assert (
        cli(
            [
                "finetune",
                "--data",
                str(data),
                "--out",
                str(ft),
                "--init",
                str(pre / ENCODER_FILE),
                "--device",
                "cpu",
                "--set",
                "epochs=1",
                "--set",
                "batch_size=8",
                "--set",
                "max_steps=1",
            ]
        )
        == 0
    )
    model = torch.load(ft / "model.pt", weights_only=True)["model"]
    written = read_checkpoint(ft / ENCODER_FILE)["model"]
    assert set(written) == set(model) and all(torch.equal(written[k], v) for k, v in model.items())


# ------------------------------------------------------------------------------------------------------ errors
def test_errors_are_one_line(tmp_path, capsys):
    def fails(argv: list[str], *words: str) -> None:
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and all(w in err for w in words), err

    torch.manual_seed(0)
    pca = tmp_path / "pca.pt"
    state = create_mae(MODEL).state_dict()
    torch.save({"model": state, "config": {"model": MODEL, "target": "pca"}}, pca)
    fails(["export", str(pca), "--to", "hf", "--out", str(tmp_path / "hf")], "target 'pca'", "--to safetensors")
    odd = tmp_path / "odd.pt"  # shapes of no model of ours, no name recorded: the heads are unknown
    torch.save({"model": create_encoder(MODEL, 0, embed_dim=64, depth=2).state_dict()}, odd)
    fails(["export", str(odd), "--to", "timm", "--out", str(tmp_path / "t.safetensors")], "--model")
    (tmp_path / "empty").mkdir()
    fails(
        ["export", str(tmp_path / "empty"), "--to", "safetensors", "--out", str(tmp_path / "x.safetensors")],
        "no config.json",
    )
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((20).to_bytes(8, "little") + b'{"a": 1' + b"\0" * 30)
    fails(
        ["export", str(broken), "--to", "timm", "--out", str(tmp_path / "y.safetensors")],
        "cannot read safetensors file",
        str(broken),
    )
    with pytest.raises(UserError, match="unknown format 'onnx'"):
        export(pca, "onnx", tmp_path / "z")


def test_hf_folder_pickle_is_refused(tmp_path, capsys):
    """A folder's pytorch_model.bin goes through the same allow-list as every checkpoint: a payload never runs."""
    from tests.test_checkpoint_safety import _Payload

    folder = tmp_path / "evil-hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit_mae"}))
    marker = tmp_path / "ran"
    torch.save({"vit.embeddings.cls_token": torch.zeros(1, 1, 8), "x": _Payload(marker)}, folder / "pytorch_model.bin")
    assert cli(["export", str(folder), "--to", "safetensors", "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "pytorch_model.bin" in err and not marker.exists()
