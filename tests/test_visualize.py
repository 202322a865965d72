"""`mae visualize`: reconstructions of a folder of images or a prepared dataset from a pretraining checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae.cli import main as cli
from mae.errors import UserError
from mae.models import create_mae
from mae.tools import visualize as V
from tests.test_eval import MODEL, _write_dataset


@pytest.fixture(scope="module")
def mae_model():
    torch.manual_seed(0)
    return create_mae(MODEL, decoder_depth=1, decoder_embed_dim=64, target="norm_pixel", mask_token_in_encoder=True)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, mae_model) -> Path:
    """Our pretraining format: the weights and the settings they were trained with."""
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    config = {
        "model": MODEL,
        "target": "norm_pixel",
        "mask_ratio": 0.75,
        "sampling": "grid",
        "decoder_depth": 1,
        "decoder_width": 64,
        "mask_token_in_encoder": True,
        "img_size": None,
    }
    torch.save({"model": mae_model.state_dict(), "config": config, "epoch": 0}, path)
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(folder / "b_wide.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "a_square.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), mode="L").save(folder / "c_grey.bmp")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_load_mae_reads_the_architecture_from_the_checkpoint(ckpt, mae_model):
    model, cfg = V.load_mae(ckpt)
    assert cfg["model"] == MODEL and not model.training
    assert model.norm_pix_loss and model.mask_token_in_encoder and model.sampler.name == "grid"
    assert len(model.decoder_blocks) == 1 and model.decoder_embed.out_features == 64 and V.image_size(model) == 32
    for key, value in mae_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    assert V.load_mae(ckpt, sampling="block", target="pixel")[0].sampler.name == "block"


def test_reference_file_needs_a_model_name(tmp_path, mae_model):
    ref = tmp_path / "mae_visualize.pth"
    torch.save({"model": mae_model.state_dict()}, ref)
    with pytest.raises(UserError, match="does not record its model name; pass --model NAME"):
        V.load_mae(ref)
    model, cfg = V.load_mae(ref, model=MODEL)
    assert cfg == {} and not model.norm_pix_loss and model.sampler.name == "random"  # no settings: pixel, random
    with pytest.raises(UserError, match="does not fit model mae_vit_tiny_patch4"):
        V.load_mae(ref, model="mae_vit_tiny_patch4")


def test_folder_images_are_cropped_and_normalised(images):
    x = V.folder_images(images, 32, 10)
    assert x.shape == (3, 3, 32, 32)  # the three image files in name order; the text file is not one
    square = np.asarray(Image.open(images / "a_square.jpg").convert("RGB").resize((32, 32), Image.BICUBIC))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = torch.tensor(((square / 255.0 - mean) / std).transpose(2, 0, 1), dtype=torch.float32)
    assert (x[0] - expected).abs().mean() < 0.1  # resizing differs slightly between PIL and torchvision
    grey = V.to_display(x[2:])[0]  # a greyscale file becomes RGB with three equal channels
    assert np.allclose(grey[..., 0], grey[..., 1], atol=1e-6) and np.allclose(grey[..., 0], grey[..., 2], atol=1e-6)
    assert V.folder_images(images, 32, 1).shape[0] == 1


@pytest.mark.parametrize("sampling,ratio", [("random", 0.6), ("block", 0.5), ("grid", 0.75)])
def test_reconstruct_masks_the_requested_share(ckpt, sampling, ratio):
    model, _ = V.load_mae(ckpt, sampling=sampling)
    x = torch.randn(2, 3, 32, 32)
    masked, recon, pasted, pix = V.reconstruct(model, x, ratio, seed=3)
    removed = 64 - int(64 * (1 - ratio))
    assert pix.shape == (2, 1, 32, 32) and pix.sum().item() == 2 * removed * 16
    visible = pix.expand_as(x) == 0
    assert torch.equal(pasted[visible], x[visible]) and torch.all(masked[~visible] == 0)
    assert torch.equal(V.reconstruct(model, x, ratio, seed=3)[3], pix)  # the seed fixes the masks


def test_cli_images_writes_png_and_pdf(ckpt, images, tmp_path, capsys):
    out = tmp_path / "figs" / "recon.png"
    assert (
        cli(
            [
                "visualize",
                "--init",
                str(ckpt),
                "--images",
                str(images),
                "--out",
                str(out),
                "--num",
                "2",
                "--mask-ratio",
                "0.5",
                "--sampling",
                "block",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert "reconstructions of 2 image(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["recon.pdf", "recon.png"]  # no temp files
    png = Image.open(out)
    assert png.size[0] > 400 and np.asarray(png.convert("L")).std() > 10  # four columns, not blank
    assert (out.parent / "recon.pdf").read_bytes().startswith(b"%PDF")


def test_cli_prepared_dataset(ckpt, tmp_path):
    data = _write_dataset(tmp_path / "data", n_train=4, n_val=6, size=32)
    assert (
        cli(["visualize", "--init", str(ckpt), "--data", str(data), "--out", str(tmp_path / "val_recon"), "--num", "3"])
        == 0
    )  # the checkpoint's grid sampler at its 75 %
    assert (tmp_path / "val_recon.png").stat().st_size > 2000 and (tmp_path / "val_recon.pdf").is_file()
    assert V.dataset_images(data, 32, 3, split="train").shape == (3, 3, 32, 32)


def _error(capsys, argv) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_cli_errors_are_one_line(ckpt, images, tmp_path, capsys, mae_model):
    base = ["visualize", "--init", str(ckpt), "--out", str(tmp_path / "f")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image files" in _error(capsys, base + ["--images", str(empty)])
    assert "folder not found" in _error(capsys, base + ["--images", str(tmp_path / "nope")])
    (images / "broken.png").write_bytes(b"not a png")
    assert f"cannot read image {images / 'broken.png'}" in _error(capsys, base + ["--images", str(images)])
    (images / "broken.png").unlink()
    assert "--mask-ratio must be in (0, 1), got 1.5" in _error(
        capsys, base + ["--images", str(images), "--mask-ratio", "1.5"]
    )
    assert "--num must be >= 1" in _error(capsys, base + ["--images", str(images), "--num", "0"])
    assert "unknown sampler 'stripes'" in _error(capsys, base + ["--images", str(images), "--sampling", "stripes"])
    assert "needs mask_ratio = 1 - 1/s^2" in _error(capsys, base + ["--images", str(images), "--mask-ratio", "0.6"])
    assert "no prepared dataset" in _error(capsys, base + ["--data", str(empty)])
    encoder_only = tmp_path / "encoder.pt"
    torch.save(
        {"model": {k: v for k, v in mae_model.state_dict().items() if not k.startswith(("decoder", "mask_token"))}},
        encoder_only,
    )
    err = _error(capsys, ["visualize", "--init", str(encoder_only), "--images", str(images), "--out", "f"])
    assert "the checkpoint has no decoder" in err and str(encoder_only) in err
    pca = tmp_path / "pca_run.pt"
    torch.save({"model": mae_model.state_dict(), "config": {"model": MODEL, "target": "pca"}}, pca)
    assert "target 'pca' does not predict pixels" in _error(
        capsys, ["visualize", "--init", str(pca), "--images", str(images), "--out", "f"]
    )
    assert "checkpoint file" in _error(
        capsys, ["visualize", "--init", str(tmp_path / "none.pt"), "--images", str(images), "--out", "f"]
    )
    assert not list(tmp_path.glob("f.*")) and not list(Path.cwd().glob("f.png"))
