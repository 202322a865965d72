"""What the decoder predicts for each removed patch, and the per-patch loss (Table 1d of the paper).

- ``pixel``       the patch's (ImageNet-normalised) pixels, MSE;
- ``norm_pixel``  per patch: subtract the mean, divide by ``sqrt(unbiased var + 1e-6)``, MSE;
- ``pca``         the top-K principal coefficients of the *per-patch normalised* patch (the norm_pixel
                  vector projected on the top-K eigenvectors of its covariance over training patches, after
                  subtracting its training mean), MSE. Per-patch normalisation first, because it is the best
                  pixel target and so PCA isolates "fewer, decorrelated dimensions" from normalisation.
                  Fitted on the train split by ``mae fit-pca``;
- ``token``       the index of the patch in a learned codebook (``mae train-tokenizer``, a dVAE stand-in),
                  cross-entropy over the vocabulary.

Every target computes ``(N, L, D)`` (or ``(N, L)`` indices) from the input images and a per-patch loss
``(N, L)``; the model averages it over removed patches only. Targets hold no state-dict keys of the model
(their tables are non-persistent), so MAE checkpoints keep the reference key set.

CLI: ``mae fit-pca --data DIR --out FILE.pt [--patch-size 4 --components K --max-patches N --seed S]``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae.errors import UserError
from mae.registry import choices


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C); patches row-major, inside a patch (row, col, channel), channel fastest."""
    n, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not divisible by patch size {p}")
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # n, gh, gw, pr, pc, c
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(
    patches: torch.Tensor, patch_size: int, in_chans: int = 3, grid_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Inverse of :func:`patchify`; a square grid unless ``grid_size`` is given."""
    n, num_patches, _ = patches.shape
    p = patch_size
    if grid_size is None:
        side = int(round(math.sqrt(num_patches)))
        if side * side != num_patches:
            raise ValueError(f"{num_patches} patches do not form a square grid; pass grid_size")
        grid_size = (side, side)
    gh, gw = grid_size
    x = patches.reshape(n, gh, gw, p, p, in_chans).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, in_chans, gh * p, gw * p)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per patch: (x - mean) / sqrt(unbiased var + eps) — the reference normalised-pixel target."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


class Target(nn.Module):
    """A reconstruction target: ``compute(imgs, patches)`` and ``per_patch_loss(pred, target) -> (N, L)``."""

    kind = "base"
    out_dim: int

    @classmethod
    def create(cls, patch_size: int, in_chans: int = 3, path: str | Path | None = None) -> Target:
        """The target of a model with these patches; a fitted target reads ``path``. A plug-in target overrides
        this when its constructor takes something else than the patch dimension."""
        return cls(patch_size * patch_size * in_chans)

    def compute(self, imgs: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def per_patch_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((pred.float() - target.float()) ** 2).mean(dim=-1)


class PixelTarget(Target):
    kind = "pixel"

    def __init__(self, patch_dim: int):
        super().__init__()
        self.out_dim = patch_dim

    def compute(self, imgs, patches):
        return patches


class NormPixelTarget(PixelTarget):
    kind = "norm_pixel"

    def compute(self, imgs, patches):
        return normalize_patches(patches.float())


class PCATarget(Target):
    """Top-K principal coefficients of per-patch normalised patches (tables from ``mae fit-pca``)."""

    kind = "pca"

    def __init__(self, mean: torch.Tensor, components: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float(), persistent=False)
        self.register_buffer("components", components.float(), persistent=False)  # (K, D)
        self.out_dim = components.shape[0]

    @classmethod
    def create(cls, patch_size: int, in_chans: int = 3, path: str | Path | None = None) -> PCATarget:
        return cls.from_file(_fitted_path(path, cls.kind), patch_size * patch_size * in_chans)

    @classmethod
    def from_file(cls, path: str | Path, patch_dim: int) -> PCATarget:
        blob = _load_file(path, "pca", "target_path")
        comps = blob["components"]
        if comps.shape[1] != patch_dim:
            raise UserError(f"target_path {path}: PCA of {comps.shape[1]}-dim patches, the model has {patch_dim}")
        return cls(blob["mean"], comps)

    def compute(self, imgs, patches):
        return (normalize_patches(patches.float()) - self.mean) @ self.components.t()


class TokenTarget(Target):
    """Codebook index of each patch from a frozen tokenizer; cross-entropy per patch."""

    kind = "token"

    def __init__(self, tokenizer: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.out_dim = tokenizer.vocab_size

    @classmethod
    def create(cls, patch_size: int, in_chans: int = 3, path: str | Path | None = None) -> TokenTarget:
        from mae.models.tokenizer import load_tokenizer

        path = _fitted_path(path, cls.kind)
        tokenizer = load_tokenizer(path)
        if tokenizer.patch_size != patch_size:
            raise UserError(
                f"target_path {path}: tokenizer patch size {tokenizer.patch_size}, the model uses {patch_size}"
            )
        return cls(tokenizer)

    def compute(self, imgs, patches):
        with torch.no_grad(), torch.autocast(imgs.device.type, enabled=False):
            return self.tokenizer.tokenize(imgs.float())

    def per_patch_loss(self, pred, target):
        n, num_patches, vocab = pred.shape
        loss = F.cross_entropy(pred.float().reshape(-1, vocab), target.reshape(-1), reduction="none")
        return loss.reshape(n, num_patches)


def _fitted_path(path: str | Path | None, kind: str) -> str | Path:
    if not path:
        command = "fit-pca" if kind == "pca" else "train-tokenizer"
        raise UserError(f"target '{kind}' needs target_path (a file from `mae {command}`)")
    return path


def build_target(kind: str, patch_size: int, in_chans: int = 3, path: str | Path | None = None) -> Target:
    """Target by its name in the ``target`` choice table (mae.registry.choices); ``pca``/``token`` read ``path``
    (written by ``mae fit-pca`` / ``mae train-tokenizer``)."""
    return choices.load("target", kind).create(patch_size, in_chans, path)


def _load_file(path: str | Path, kind: str, key: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}: file not found: {path}")
    from mae.models.checkpoint import read_checkpoint

    blob = read_checkpoint(path, option=key, kind=f"{kind} file")
    if not isinstance(blob, dict) or blob.get("kind") != kind:
        raise UserError(f"{key}: {path} is not a '{kind}' file")
    return blob


# ----------------------------------------------------------------------------------------------- PCA fitting
def fit_pca(
    images: torch.Tensor, patch_size: int, components: int, max_patches: int | None = None, seed: int = 0
) -> dict:
    """Fit the PCA target on normalised images: returns the file dict (kind, mean, components, variances)."""
    patches = normalize_patches(patchify(images, patch_size).reshape(-1, patch_size * patch_size * images.shape[1]))
    if max_patches and len(patches) > max_patches:
        gen = torch.Generator().manual_seed(seed)
        patches = patches[torch.randperm(len(patches), generator=gen)[:max_patches]]
    patches = patches.double()
    dim = patches.shape[1]
    if not 1 <= components <= dim:
        raise UserError(f"--components must be in [1, {dim}] for patch size {patch_size}, got {components}")
    mean = patches.mean(dim=0)
    centered = patches - mean
    cov = centered.t() @ centered / max(1, len(patches) - 1)
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(0), evecs[:, order]
    # fix the sign of each eigenvector (largest-magnitude entry positive) so refits are comparable
    signs = torch.sign(evecs.gather(0, evecs.abs().argmax(dim=0, keepdim=True)))
    evecs = evecs * signs
    return {
        "kind": "pca",
        "patch_size": patch_size,
        "in_chans": images.shape[1],
        "normalization": "per_patch",
        "mean": mean.float(),
        "components": evecs[:, :components].t().contiguous().float(),
        "explained_variance": evals[:components].float(),
        "explained_variance_ratio": float(evals[:components].sum() / evals.sum().clamp_min(1e-12)),
        "num_patches": len(patches),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="prepared dataset folder (reads its train split)")
    parser.add_argument("--out", required=True, help="output .pt file")
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument(
        "--components",
        type=int,
        default=None,
        help="number of principal components (default: patch dim / 8, i.e. 96 for 16x16x3)",
    )
    parser.add_argument("--max-patches", type=int, default=200_000, help="random subset of training patches")
    parser.add_argument("--max-images", type=int, default=50_000, help="random subset of training images")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    from mae.data import load_train_images
    from mae.utils.io import atomic_torch_save

    start = time.time()
    images = load_train_images(args.data, args.max_images, args.seed)
    if images.shape[-1] % args.patch_size or images.shape[-2] % args.patch_size:
        raise UserError(f"--patch-size {args.patch_size} does not divide the image size {tuple(images.shape[-2:])}")
    dim = args.patch_size**2 * images.shape[1]
    components = max(1, dim // 8) if args.components is None else args.components
    blob = fit_pca(images, args.patch_size, components, args.max_patches, args.seed)
    blob["data"] = str(args.data)
    atomic_torch_save(blob, args.out)
    print(
        f"fit-pca: {components}/{dim} components explain {100 * blob['explained_variance_ratio']:.1f}% of the "
        f"variance of {blob['num_patches']} patches ({time.time() - start:.1f}s) -> {args.out}"
    )
    return 0
