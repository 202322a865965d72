"""``mae visualize``: what a pretrained MAE reconstructs from your own images (paper Figs. 2–4).

One row per image: the original, the masked input (removed patches grey), the reconstruction, and the
reconstruction with the visible patches pasted back. Written to ``--out FIG`` as ``FIG.png`` and ``FIG.pdf``
(atomically)::

    mae visualize --init results/runs/base/pretrain/checkpoint.pt --images my_photos/ --out recon
    mae visualize --init CKPT --data results/data/shapes --mask-ratio 0.9 --sampling block --num 8 --out recon

``--init`` takes what the evaluations take (a file, an ``http(s)://`` URL, ``timm:NAME``; :mod:`mae.models.hub`)
but must hold the decoder: one of our pretraining ``checkpoint.pt`` files (it records its model and settings)
or a reference ``{'model': state_dict}`` file with the decoder (``--model NAME``, since it records none).
``--images DIR``: the png/jpg/... files of a folder, first ``--num`` in name order, resized (shorter side) and
centre-cropped to the model's image size and normalised as the training data; ``--data DIR``: a prepared
dataset (``mae prepare-data``), ``--num`` images evenly spaced over its ``--split``.

The reconstruction helpers here are shared with ``mae figures`` (``fig_reconstructions``, ``fig_mask_sampling``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mae.errors import UserError  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PIXEL_TARGETS = ("pixel", "norm_pixel")


def save_figure(fig: plt.Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """``out_dir/stem.png`` and ``.pdf``, each written atomically; closes ``fig``. No creation date and no
    software version in the files, so the same figure is the same bytes (DVC and git see no change)."""
    from mae.utils.io import atomic_path

    paths = []
    for ext in ("png", "pdf"):
        path = Path(out_dir) / f"{stem}.{ext}"
        with atomic_path(path, suffix=f".{ext}") as tmp:
            meta = {"CreationDate": None, "Producer": None} if ext == "pdf" else {"Software": None}
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=meta)
        paths.append(path)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------------------- drawing
def to_display(x) -> np.ndarray:
    """ImageNet-normalised (N,3,H,W) tensor -> (N,H,W,3) array in [0,1]."""
    import torch
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (x.float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def patch_mask_image(mask, grid: tuple[int, int], patch: int):
    """(N,L) mask (1 = removed) -> (N,1,H,W) pixel mask."""
    n = mask.shape[0]
    m = mask.reshape(n, grid[0], grid[1]).float()
    return m.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)


def show_masked(img: np.ndarray, pix_mask: np.ndarray) -> np.ndarray:
    """Removed pixels drawn grey."""
    grey = np.full_like(img, 0.5)
    return img * (1 - pix_mask) + grey * pix_mask


def reconstruct(model, x, mask_ratio: float, seed: int = 0):
    """(masked input, reconstruction, reconstruction + visible, pixel mask) in the normalised image space.

    The masks come from the model's sampler, seeded with ``seed``. Normalised-pixel predictions are brought
    back to pixels with each patch's own mean and variance, taken from the original image."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        _, pred, mask = model(x, mask_ratio=mask_ratio)
        pred = pred.float()
        if getattr(model, "norm_pix_loss", False):
            target = model.patchify(x)
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1.0e-6) ** 0.5 + mean
        recon = model.unpatchify(pred)
        patch = model.patch_size
        grid = (x.shape[2] // patch, x.shape[3] // patch)
        pix = patch_mask_image(mask, grid, patch)
        masked = x * (1 - pix)
        pasted = x * (1 - pix) + recon * pix
    return masked, recon, pasted, pix


def reconstruction_figure(model, x, mask_ratio: float, title: str, seed: int = 0) -> plt.Figure:
    """One row per image of ``x``: original, masked, reconstruction, reconstruction + visible patches."""
    masked, recon, pasted, pix = reconstruct(model, x, mask_ratio, seed)
    original = to_display(x)
    cols = [
        ("original", original),
        (f"masked {int(round(mask_ratio * 100))}%", show_masked(original, pix.permute(0, 2, 3, 1).numpy())),
        ("reconstruction", to_display(recon)),
        ("reconstruction + visible", to_display(pasted)),
    ]
    n = x.shape[0]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.0 * len(cols), 2.0 * n), squeeze=False)
    for i in range(n):
        for j, (name, imgs) in enumerate(cols):
            axes[i, j].imshow(imgs[i])
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


# -------------------------------------------------------------------------------------------------- model
def _architecture(sd: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Image size, decoder depth/width and encoder mask token of a MAE state dict, read from its shapes."""
    try:
        patch = int(sd["patch_embed.proj.weight"].shape[-1])
        tokens = int(sd["pos_embed"].shape[1]) - 1
        width = int(sd["decoder_embed.weight"].shape[0])
    except (KeyError, IndexError) as err:
        raise UserError(f"{source}: not a MAE checkpoint (no {err})") from None
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise UserError(f"{source}: pos_embed has {tokens} patch rows, not a square grid")
    depth = len({k.split(".")[1] for k in sd if k.startswith("decoder_blocks.")})
    return {
        "img_size": side * patch,
        "decoder_depth": depth,
        "decoder_embed_dim": width,
        "mask_token_in_encoder": "encoder_mask_token" in sd,
    }


def load_mae(
    spec: str | Path,
    model: str | None = None,
    target: str | None = None,
    sampling: str | None = None,
    option: str = "--init",
):
    """The pretrained MAE (encoder + decoder, eval mode) of an init spec, and the settings its checkpoint
    records (``{}`` if none). Architecture: ``model`` (else the recorded name) with the image size and decoder
    read from the weights; ``target``/``sampling`` default to the recorded ones (else pixel / random)."""
    from mae.models import create_mae, load_mae_checkpoint, model_spec, resolve_init
    from mae.models.checkpoint import apply_layer_norm_eps, extract_state_dict, read_checkpoint

    source = f"{option} {spec}"
    found = resolve_init(spec, option)
    obj = found if isinstance(found, dict) else read_checkpoint(found)
    sd = extract_state_dict(obj, source)
    if not any(k.startswith("decoder_") for k in sd):
        raise UserError(
            f"{source}: the checkpoint has no decoder (encoder-only or fine-tuned weights); "
            "reconstructions need a pretraining checkpoint"
        )
    cfg = obj.get("config") if isinstance(obj, Mapping) else None
    cfg = dict(cfg) if isinstance(cfg, Mapping) else {}
    name = model or cfg.get("model")
    if not name:
        raise UserError(f"{source}: the checkpoint does not record its model name; pass --model NAME")
    target = target or cfg.get("target") or "pixel"
    if target not in PIXEL_TARGETS:
        raise UserError(
            f"{source}: target '{target}' does not predict pixels (reconstructions need {' or '.join(PIXEL_TARGETS)})"
        )
    heads = cfg.get("decoder_heads") or model_spec(name)["decoder_num_heads"]
    mae = create_mae(
        name,
        target=target,
        sampler=sampling or cfg.get("sampling") or "random",
        decoder_num_heads=heads,
        **_architecture(sd, source),
    )
    try:
        load_mae_checkpoint(mae, sd, strict=True)
    except UserError as err:
        raise UserError(f"{source} does not fit model {name}: {err}") from None
    apply_layer_norm_eps(mae, cfg)  # e.g. the 1e-12 of a Hugging Face ViTMAE folder
    return mae.eval(), cfg


def image_size(model) -> int:
    return int(model.grid_size[0] * model.patch_size)


# ------------------------------------------------------------------------------------------------- images
def dataset_images(data_dir: str | Path, img_size: int, count: int, split: str = "val"):
    """``count`` images evenly spaced over a prepared dataset's ``split``, normalised (N,3,H,W)."""
    import torch

    from mae.data import build_dataset
    from mae.data.transforms import eval_transform

    if not Path(data_dir, "meta.json").is_file():
        raise UserError(f"--data: no prepared dataset at {data_dir} (meta.json missing)")
    ds = build_dataset(data_dir, split, eval_transform(img_size))
    if len(ds) == 0:
        raise UserError(f"--data: {data_dir}: empty {split} split")
    step = max(1, len(ds) // count)
    return torch.stack([ds[i * step][0] for i in range(min(count, len(ds)))])


def folder_images(folder: str | Path, img_size: int, count: int):
    """The first ``count`` image files of ``folder`` (name order), resized, centre-cropped and normalised."""
    import torch
    from PIL import Image

    from mae.data.transforms import eval_transform

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--images: folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"--images: no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    transform = eval_transform(img_size)
    images = []
    for path in files[:count]:
        try:
            with Image.open(path) as img:
                images.append(transform(img.convert("RGB")))
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise UserError(f"--images: cannot read image {path}: {str(err).splitlines()[0]}") from None
    return torch.stack(images)


# ---------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mae.registry.knobs import KNOBS

    parser.add_argument(
        "--init",
        required=True,
        metavar="CKPT",
        help="pretraining checkpoint.pt with its decoder: a file, an http(s):// URL (cached; "
        "optional #sha256=HEX) or timm:NAME",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", help="folder of image files (png, jpg, ...)")
    source.add_argument("--data", metavar="DIR", help="prepared dataset folder (mae prepare-data output)")
    parser.add_argument("--split", default="val", help="split of --data (default: val)")
    parser.add_argument("--out", required=True, metavar="FIG", help="output: FIG.png and FIG.pdf")
    parser.add_argument(
        "--mask-ratio",
        type=float,
        default=None,
        help="fraction of patches removed (default: the checkpoint's, else 0.75)",
    )
    parser.add_argument(
        "--sampling",
        default=None,
        help=f"mask sampler: {', '.join(KNOBS['sampling'].options())} (default: the checkpoint's, else random)",
    )
    parser.add_argument("--num", type=int, default=4, help="number of images (rows), default 4")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks (default 0)")
    parser.add_argument("--model", default=None, help="model name, for a checkpoint that does not record it")
    parser.add_argument(
        "--target",
        choices=PIXEL_TARGETS,
        default=None,
        help="what the decoder predicts (default: the checkpoint's, else pixel)",
    )


def main(args: argparse.Namespace) -> int:
    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    if args.mask_ratio is not None and not 0 < args.mask_ratio < 1:
        raise UserError(f"--mask-ratio must be in (0, 1), got {args.mask_ratio}")
    if args.sampling is not None:
        from mae.models.masking import build_sampler

        build_sampler(args.sampling)  # an unknown name fails before the checkpoint is read
    model, cfg = load_mae(args.init, model=args.model, target=args.target, sampling=args.sampling)
    ratio = args.mask_ratio if args.mask_ratio is not None else float(cfg.get("mask_ratio") or 0.75)
    size = image_size(model)
    if args.images is not None:
        x = folder_images(args.images, size, args.num)
    else:
        x = dataset_images(args.data, size, args.num, args.split)
    name = args.model or cfg.get("model")
    title = f"MAE reconstructions ({name}, {model.sampler.name} masking, {ratio:.0%} removed)"
    fig = reconstruction_figure(model, x, ratio, title, args.seed)
    out = Path(args.out)
    stem = out.stem if out.suffix.lower() in (".png", ".pdf") else out.name
    paths = save_figure(fig, out.parent, stem)
    print(f"reconstructions of {x.shape[0]} image(s) -> {', '.join(str(p) for p in paths)}")
    return 0
