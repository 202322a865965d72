"""A small VQ tokenizer (dVAE stand-in for BEiT's DALL-E tokenizer): image patch -> codebook index.

Architecture: a conv encoder (3x3 conv for a little context, then a patch-size strided conv) gives one
latent per patch; the latent is matched to the nearest entry of an L2-normalised codebook (cosine
similarity); a per-patch transposed conv decodes the codes back to pixels. Trained as a VQ-VAE
(reconstruction MSE + codebook + 0.25 x commitment loss, straight-through gradients), with dead codes
re-seeded from batch latents after each epoch. Inputs are ImageNet-normalised images like the MAE input.

File format (``torch.save``): ``{'kind': 'vq_tokenizer', 'config': {...}, 'model': state_dict, 'stats': {...}}``.
Any file in this format — ours or one trained elsewhere — can be passed as ``target_path`` of the token target.

CLI: ``mae train-tokenizer --data DIR --out FILE.pt [--patch-size 4 --vocab 512 --epochs 5 --batch-size 256]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from mae.engine.precision import autocast
from mae.errors import UserError


class PatchTokenizer(nn.Module):
    def __init__(
        self, patch_size: int = 4, in_chans: int = 3, vocab_size: int = 512, code_dim: int = 32, hidden: int = 64
    ):
        super().__init__()
        self.config = dict(
            patch_size=patch_size, in_chans=in_chans, vocab_size=vocab_size, code_dim=code_dim, hidden=hidden
        )
        self.patch_size, self.vocab_size = patch_size, vocab_size
        self.encoder = nn.Sequential(
            nn.Conv2d(in_chans, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, patch_size, stride=patch_size),
            nn.GELU(),
            nn.Conv2d(hidden, code_dim, 1),
        )
        self.codebook = nn.Parameter(F.normalize(torch.randn(vocab_size, code_dim), dim=1))
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, hidden, 1),
            nn.GELU(),
            nn.ConvTranspose2d(hidden, in_chans, patch_size, stride=patch_size),
        )

    def latents(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, gh, gw, code_dim) L2-normalised patch latents."""
        return F.normalize(self.encoder(imgs).permute(0, 2, 3, 1), dim=-1)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ F.normalize(self.codebook, dim=1).t()).argmax(dim=-1)

    @torch.no_grad()
    def tokenize(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L) long codebook indices, patches in row-major order."""
        ids = self.nearest(self.latents(imgs))
        return ids.reshape(ids.shape[0], -1)

    def forward(self, imgs: torch.Tensor):
        z = self.latents(imgs)
        ids = self.nearest(z)
        codes = F.normalize(self.codebook, dim=1)[ids]
        vq_loss = F.mse_loss(codes, z.detach()) + 0.25 * F.mse_loss(z, codes.detach())
        quantized = z + (codes - z).detach()  # straight-through
        recon = self.decoder(quantized.permute(0, 3, 1, 2))
        return recon, ids, vq_loss


def load_tokenizer(path: str | Path) -> PatchTokenizer:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"target_path: tokenizer file not found: {path}")
    from mae.models.checkpoint import read_checkpoint

    blob = read_checkpoint(path, option="target_path", kind="tokenizer file")
    if not isinstance(blob, dict) or blob.get("kind") != "vq_tokenizer":
        raise UserError(f"target_path: {path} is not a tokenizer file (expected kind 'vq_tokenizer')")
    tok = PatchTokenizer(**blob["config"])
    tok.load_state_dict(blob["model"])
    return tok.eval()


def train_tokenizer(
    images: torch.Tensor,
    patch_size: int = 4,
    vocab_size: int = 512,
    epochs: int = 5,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    code_dim: int = 32,
    hidden: int = 64,
    progress: bool = True,
) -> tuple[PatchTokenizer, dict]:
    """Train on normalised (N, C, H, W) images; returns the tokenizer and stats (loss, codebook usage)."""
    torch.manual_seed(seed)
    tok = PatchTokenizer(patch_size, images.shape[1], vocab_size, code_dim, hidden)
    opt = torch.optim.AdamW(tok.parameters(), lr=lr, weight_decay=0.0)
    steps_per_epoch = max(1, len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch, pct_start=0.1)
    stats: dict = {}
    bar = tqdm(
        total=epochs * steps_per_epoch * batch_size,
        unit="img",
        unit_scale=True,
        disable=not progress,
        desc="train-tokenizer",
    )
    for epoch in range(epochs):
        perm = torch.randperm(len(images))
        usage = torch.zeros(vocab_size)
        rec_sum = 0.0
        for step in range(steps_per_epoch):
            batch = images[perm[step * batch_size : (step + 1) * batch_size]]
            with autocast(batch.device, "auto"):  # the precision every stage picks (mae.engine.precision)
                recon, ids, vq_loss = tok(batch)
            rec = F.mse_loss(recon.float(), batch)
            loss = rec + vq_loss.float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            usage += torch.bincount(ids.flatten().cpu(), minlength=vocab_size).float()
            rec_sum += rec.item()
            bar.update(len(batch))
            bar.set_postfix(rec=f"{rec.item():.3f}", used=int((usage > 0).sum()))
        dead = (usage == 0).nonzero().flatten()
        if len(dead) and epoch < epochs - 1:  # re-seed dead codes from random patch latents
            with torch.no_grad():
                sample = images[torch.randperm(len(images))[:batch_size]]
                z = tok.latents(sample).reshape(-1, tok.codebook.shape[1])
                tok.codebook.data[dead] = z[torch.randint(0, len(z), (len(dead),))]
        stats = {
            "epoch": epoch + 1,
            "recon_mse": rec_sum / steps_per_epoch,
            "codes_used": int((usage > 0).sum()),
            "vocab_size": vocab_size,
        }
    bar.close()
    return tok.eval(), stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="prepared dataset folder (reads its train split)")
    parser.add_argument("--out", required=True, help="output .pt file")
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512, help="codebook size")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--max-images", type=int, default=20_000, help="random subset of training images")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    from mae.data import load_train_images
    from mae.utils.io import atomic_torch_save

    if args.vocab < 2 or args.epochs < 1 or args.batch_size < 1:
        raise UserError("--vocab must be >= 2, --epochs and --batch-size >= 1")
    start = time.time()
    images = load_train_images(args.data, args.max_images, args.seed)
    if images.shape[-1] % args.patch_size or images.shape[-2] % args.patch_size:
        raise UserError(f"--patch-size {args.patch_size} does not divide the image size {tuple(images.shape[-2:])}")
    tok, stats = train_tokenizer(
        images, args.patch_size, args.vocab, args.epochs, min(args.batch_size, len(images)), args.lr, args.seed
    )
    stats["wall_s"] = time.time() - start
    atomic_torch_save(
        {
            "kind": "vq_tokenizer",
            "config": tok.config,
            "model": tok.state_dict(),
            "stats": stats,
            "data": str(args.data),
        },
        args.out,
    )
    print(
        f"train-tokenizer: recon mse {stats['recon_mse']:.4f}, {stats['codes_used']}/{args.vocab} codes used "
        f"({stats['wall_s']:.1f}s) -> {args.out}"
    )
    return 0
