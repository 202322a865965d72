import numpy as np
import pytest
import torch

from mae import cli
from mae.data import load_train_images
from mae.errors import UserError
from mae.models.targets import build_target, fit_pca, normalize_patches, patchify, unpatchify


def test_patchify_layout_and_round_trip():
    imgs = torch.randn(2, 3, 8, 12)
    p = patchify(imgs, 4)
    assert p.shape == (2, 6, 48)
    # patch 1 = row 0, col 1; inside: (row, col, channel), channel fastest
    assert torch.equal(p[0, 1, :3], imgs[0, :, 0, 4])
    assert torch.equal(p[0, 1, 3:6], imgs[0, :, 0, 5])
    assert torch.equal(p[1, 3, 4 * 3 : 4 * 3 + 3], imgs[1, :, 5, 0])
    assert torch.equal(unpatchify(p, 4, 3, (2, 3)), imgs)
    sq = torch.randn(1, 3, 16, 16)
    assert torch.equal(unpatchify(patchify(sq, 4), 4), sq)


def test_norm_pixel_formula():
    x = torch.randn(2, 5, 48) * 3 + 1
    expected = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=True, keepdim=True) + 1e-6) ** 0.5
    assert torch.allclose(normalize_patches(x), expected)
    t = build_target("norm_pixel", 4)
    assert torch.allclose(t.compute(None, x), expected)
    assert t.per_patch_loss(expected, expected).abs().max() == 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(64, 8, 8, 3), dtype=np.uint8)
    imgs = np.kron(base, np.ones((1, 4, 4, 1), dtype=np.uint8))  # blocky images: structured patches
    np.save(root / "train_images.npy", imgs)
    return root


def test_load_train_images_normalised(dataset):
    x = load_train_images(dataset, max_images=10)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    assert -2.2 < float(x.min()) and float(x.max()) < 2.7
    with pytest.raises(UserError, match="not a directory"):
        load_train_images(dataset / "missing")


def test_fit_pca_cli_and_target(dataset, tmp_path):
    out = tmp_path / "pca.pt"
    assert (
        cli.main(
            [
                "fit-pca",
                "--data",
                str(dataset),
                "--out",
                str(out),
                "--patch-size",
                "4",
                "--components",
                "6",
                "--max-patches",
                "2000",
            ]
        )
        == 0
    )
    blob = torch.load(out, weights_only=False)
    assert blob["components"].shape == (6, 48)
    comps = blob["components"].double()
    assert torch.allclose(comps @ comps.t(), torch.eye(6, dtype=torch.float64), atol=1e-4)
    assert (blob["explained_variance"][:-1] >= blob["explained_variance"][1:]).all()
    target = build_target("pca", 4, path=out)
    imgs = load_train_images(dataset, 4)
    t = target.compute(imgs, patchify(imgs, 4))
    assert t.shape == (4, 64, 6)
    assert target.per_patch_loss(t, t).abs().max() == 0
    # coefficients reproduce the projection of the normalised patch
    ref = (normalize_patches(patchify(imgs, 4)) - blob["mean"]) @ blob["components"].t()
    assert torch.allclose(t, ref, atol=1e-5)
    assert cli.main(["fit-pca", "--data", str(dataset), "--out", str(out), "--components", "999"]) == 2


def test_pca_fit_recovers_dominant_direction():
    torch.manual_seed(0)
    direction = torch.randn(48)
    imgs = torch.randn(64, 3, 8, 8) * 0.01
    pat = patchify(imgs, 4) + torch.randn(64, 4, 1) * direction
    blob = fit_pca(unpatchify(pat, 4, 3, (2, 2)), 4, 1)
    d = normalize_patches(direction - direction.mean())  # normalised patches are centred per patch
    cos = torch.nn.functional.cosine_similarity(blob["components"][0], d / d.norm(), dim=0)
    assert abs(float(cos)) > 0.95


def test_token_target_via_trained_tokenizer(dataset, tmp_path):
    out = tmp_path / "tok.pt"
    assert (
        cli.main(
            [
                "train-tokenizer",
                "--data",
                str(dataset),
                "--out",
                str(out),
                "--vocab",
                "16",
                "--epochs",
                "2",
                "--batch-size",
                "32",
            ]
        )
        == 0
    )
    target = build_target("token", 4, path=out)
    assert target.out_dim == 16
    imgs = load_train_images(dataset, 4)
    ids = target.compute(imgs, patchify(imgs, 4))
    assert ids.shape == (4, 64) and ids.dtype == torch.long and int(ids.max()) < 16
    logits = torch.zeros(4, 64, 16)
    loss = target.per_patch_loss(logits, ids)
    assert loss.shape == (4, 64) and torch.allclose(loss, torch.full_like(loss, float(np.log(16))))
    with pytest.raises(UserError, match="patch size"):
        build_target("token", 8, path=out)


def test_target_errors(tmp_path):
    with pytest.raises(UserError, match="target_path"):
        build_target("pca", 4)
    with pytest.raises(UserError, match="unknown target"):
        build_target("hog", 4)
    with pytest.raises(UserError, match="not found"):
        build_target("pca", 4, path=tmp_path / "nope.pt")
    torch.save({"kind": "other"}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="not a 'pca' file"):
        build_target("pca", 4, path=tmp_path / "x.pt")
