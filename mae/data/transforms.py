"""Transforms for every stage and augmentation setting (paper Table 1e for pretraining).

All pipelines accept a PIL image, a uint8 ``(3,H,W)`` tensor (the in-memory datasets: cheap, no PIL round
trip) or a float ``(3,H,W)`` tensor in [0,1], and return a float32 ``(3,H,W)`` tensor normalised with the
ImageNet mean/std of timm. The fine-tuning pipeline uses timm's RandAugment/RandomErasing, which need PIL, so
tensors are converted to PIL there only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from mae.errors import UserError
from mae.registry import choices

MEAN = IMAGENET_DEFAULT_MEAN
STD = IMAGENET_DEFAULT_STD
BICUBIC = InterpolationMode.BICUBIC


def _start() -> list:
    return [v2.ToImage()]


def _finish() -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD), v2.ToPureTensor()]


def _check_size(img_size: Any) -> int:
    if not isinstance(img_size, int) or isinstance(img_size, bool) or img_size < 4:
        raise UserError(f"img_size must be an integer >= 4, got {img_size!r}")
    return img_size


def default_crop_pct(img_size: int) -> float:
    """Centre-crop fraction for evaluation: 224/256 at ImageNet scale, none for the tiny built-in images."""
    return 0.875 if img_size >= 128 else 1.0


def eval_transform(img_size: int, crop_pct: float | None = None):
    """Resize (shorter side to img_size/crop_pct, bicubic) + centre crop + normalise."""
    img_size = _check_size(img_size)
    crop_pct = default_crop_pct(img_size) if crop_pct is None else float(crop_pct)
    if not 0 < crop_pct <= 1:
        raise UserError(f"crop_pct must be in (0, 1], got {crop_pct}")
    resize = int(round(img_size / crop_pct))
    slow = v2.Compose(
        _start() + [v2.Resize(resize, interpolation=BICUBIC, antialias=True), v2.CenterCrop(img_size)] + _finish()
    )
    return _FastTensorAug("none", img_size, flip=False, fallback=slow, resize_to=resize)


def _bicubic_weights(
    start: torch.Tensor, length: torch.Tensor, n_out: torch.Tensor, offset: torch.Tensor, out: int, size_in: int
) -> torch.Tensor:
    """(B, out, size_in) resampling matrices of one image axis: the window ``[start, start + length)`` resized to
    ``n_out`` samples with antialiased bicubic weights (PIL's filter, a = -0.5, support scaled when shrinking:
    what ``F.interpolate(..., mode='bicubic', antialias=True)`` computes on the cropped window), of which the
    samples ``offset .. offset + out - 1`` are kept. Every argument but ``out``/``size_in`` is a (B,) tensor."""
    scale = (length / n_out)[:, None]
    filter_scale = scale.clamp(min=1.0)
    support = 2.0 * filter_scale
    center = (offset[:, None] + torch.arange(out, dtype=torch.float64) + 0.5) * scale  # (B, out), window coords
    first = (center - support + 0.5).floor().clamp(min=0)
    end = torch.minimum((center + support + 0.5).floor(), length[:, None])
    taps = 2 * int(math.ceil(float(support.max()))) + 1
    pos = first[..., None] + torch.arange(taps, dtype=torch.float64)  # (B, out, taps)
    x = ((pos - center[..., None] + 0.5) / filter_scale[..., None]).abs()
    a = -0.5
    w = torch.where(
        x < 1,
        ((a + 2) * x - (a + 3)) * x * x + 1,
        torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)),
    )
    w = w * (pos < end[..., None])
    w = w / w.sum(-1, keepdim=True)
    index = (pos + start[:, None, None]).long().clamp_(0, size_in - 1)
    dense = torch.zeros(len(start), out, size_in, dtype=torch.float64)
    return dense.scatter_add_(2, index, w).float()


class _FastTensorAug:
    """Crop / resize / flip / normalise of uint8 or float (3,H,W) tensors, one image or a whole batch at once.

    ``mode``: 'none' (resize the shorter side to ``resize_to`` or img_size + centre crop), 'crop_fixed' (resize to
    img_size/0.875 + random crop), 'crop_rand' (RandomResizedCrop: torchvision's rule of up to 10 draws of area
    and log-aspect, then the centre crop). An image's geometry comes from one vector of :data:`UNIFORMS` uniform
    draws (:meth:`geometry`), its pixels from separable antialiased bicubic weights (:func:`_bicubic_weights`)
    applied as two matrix products per image — batched, a 32 px image costs ~15 µs instead of ~60 µs one by
    one, and ``t(x)`` equals ``t.batch(x[None], u[None])[0]`` for the uniforms ``u`` it drew. PIL inputs go
    to ``fallback`` (the equivalent torchvision v2 pipeline). With colour jitter (``crop_rand_jitter``) images
    are done one by one (torchvision's ColorJitter draws per image).
    """

    UNIFORMS = 41  # 10 tries x (area, aspect, top, left) + flip

    def __init__(
        self,
        mode: str,
        img_size: int,
        scale=(0.2, 1.0),
        flip: bool = True,
        jitter: float = 0.0,
        fallback=None,
        resize_to: int | None = None,
    ):
        self.resize_to = resize_to
        self.mode, self.size, self.scale, self.flip = mode, img_size, scale, flip
        self.ratio = (3 / 4, 4 / 3)
        self.jitter = v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter) if jitter else None
        std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
        self.gain = 1.0 / (255.0 * std)  # x / 255 normalised = x * gain - offset
        self.offset = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1) / std
        self.fallback = fallback

    @property
    def batched(self) -> bool:
        """Whether :meth:`batch` applies (no per-image colour jitter)."""
        return self.jitter is None

    def _resized(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) after resizing the shorter side (modes none / crop_fixed)."""
        short = self.resize_to or (self.size if self.mode == "none" else int(round(self.size / 0.875)))
        if (h, w) == (short, short):
            return h, w
        return (short, max(1, int(short * w / h))) if h <= w else (max(1, int(short * h / w)), short)

    def geometry(self, h: int, w: int, u: list[float]) -> list[float]:
        """The geometry of an h x w image from ``u`` (:data:`UNIFORMS` uniforms in [0, 1)): per axis (window start,
        window length, resized length, first kept sample), then flip (1.0 or 0.0)."""
        s = self.size
        flip = 1.0 if self.flip and u[40] < 0.5 else 0.0
        if self.mode == "crop_rand":
            top, left, ch, cw = self._rrc(h, w, u)
            return [top, ch, s, 0, left, cw, s, 0, flip]
        nh, nw = self._resized(h, w)
        if self.mode == "none":
            i, j = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        else:
            i, j = int(u[0] * (nh - s + 1)), int(u[1] * (nw - s + 1))
        return [0, h, nh, i, 0, w, nw, j, flip]

    def _rrc(self, h: int, w: int, u: list[float]) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params from the uniforms ``u``: (top, left, height, width)."""
        area = h * w
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for k in range(10):
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[4 * k])
            aspect = math.exp(log_lo + (log_hi - log_lo) * u[4 * k + 1])
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return int(u[4 * k + 2] * (h - ch + 1)), int(u[4 * k + 3] * (w - cw + 1)), ch, cw
        in_ratio = w / h  # fallback: the centre crop at the nearest allowed aspect ratio
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def batch(self, images: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Normalised float (B,3,S,S) of uint8 (or [0,1] float) images (B,3,H,W), one row of ``uniforms``
        (B, :data:`UNIFORMS`) per image."""
        b, _, h, w = images.shape
        s = self.size
        geo = torch.tensor([self.geometry(h, w, row) for row in uniforms.tolist()], dtype=torch.float64)
        wy = _bicubic_weights(geo[:, 0], geo[:, 1], geo[:, 2], geo[:, 3], s, h)
        wx = _bicubic_weights(geo[:, 4], geo[:, 5], geo[:, 6], geo[:, 7], s, w)
        flipped = geo[:, 8] > 0
        if flipped.any():
            wx[flipped] = wx[flipped].flip(1)
        x = images.float() if images.dtype == torch.uint8 else images.float() * 255.0
        x = (x.reshape(b, 3 * h, w) @ wx.transpose(1, 2)).reshape(b, 3, h, s).transpose(1, 2).reshape(b, h, 3 * s)
        x = (wy @ x).view(b, s, 3, s).clamp_(0, 255)  # rows, channels, columns
        if self.jitter is not None:
            x = torch.stack([self.jitter(img / 255.0) * 255.0 for img in x.permute(0, 2, 1, 3)]).permute(0, 2, 1, 3)
        return x.mul_(self.gain.view(3, 1)).sub_(self.offset.view(3, 1)).permute(0, 2, 1, 3).contiguous()

    def pixels(self, img: torch.Tensor) -> torch.Tensor:
        """One uint8 (or [0,1] float) image cropped, resized and flipped: float (3,S,S) in [0, 255], not normalised.
        The geometry of :meth:`batch` from :data:`UNIFORMS` draws of torch's global RNG, resampled with
        ``F.interpolate`` (the same filter; cheaper than the matrices for a single image, equal to ~1e-5)."""
        import torch.nn.functional as F

        h, w = img.shape[-2:]
        y0, yl, yn, yo, x0, xl, xn, xo, flip = (int(v) for v in self.geometry(h, w, torch.rand(self.UNIFORMS).tolist()))
        x = img.float() if img.dtype == torch.uint8 else img.float() * 255.0
        x = x[None, :, y0 : y0 + yl, x0 : x0 + xl]
        if (yn, xn) != (yl, xl):
            x = F.interpolate(x, size=(yn, xn), mode="bicubic", align_corners=False, antialias=True)
        x = x[0, :, yo : yo + self.size, xo : xo + self.size].clamp(0, 255)
        return x.flip(-1) if flip else x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float (3,S,S) pixels in [0, 255] -> ImageNet-normalised (colour jitter first, when set)."""
        if self.jitter is not None:
            x = self.jitter(x / 255.0) * 255.0
        return x * self.gain - self.offset

    def __call__(self, img):
        if not isinstance(img, torch.Tensor):
            return self.fallback(img)
        return self.normalise(self.pixels(img))

    def __repr__(self) -> str:
        return (
            f"FastTensorAug(mode={self.mode}, size={self.size}, scale={self.scale}, flip={self.flip}, "
            f"jitter={self.jitter is not None})"
        )


def pretrain_transform(aug: str = "crop_rand", img_size: int = 32):
    """MAE pretraining augmentation by its name in the ``aug`` choice table (mae.registry.choices; paper Table 1e):
    :func:`aug_none`, :func:`aug_crop_fixed`, :func:`aug_crop_rand` (the paper's default), :func:`aug_crop_rand_jitter`.
    """
    return choices.load("aug", aug)(_check_size(img_size))


def _pretrain_aug(mode: str, core: list, img_size: int, flip: bool = True, jitter: float = 0.0):
    """The batched tensor path of ``mode`` (:class:`_FastTensorAug`), with ``core`` through PIL as its fallback."""
    slow = v2.Compose(_start() + core + _finish())
    return _FastTensorAug(mode, img_size, flip=flip, jitter=jitter, fallback=slow)


def aug_none(img_size: int):
    """Resize + centre crop (no randomness)."""
    core = [v2.Resize(img_size, interpolation=BICUBIC, antialias=True), v2.CenterCrop(img_size)]
    return _pretrain_aug("none", core, img_size, flip=False)


def aug_crop_fixed(img_size: int):
    """Resize to img_size/0.875, random crop of the fixed size img_size, horizontal flip."""
    core = [
        v2.Resize(int(round(img_size / 0.875)), interpolation=BICUBIC, antialias=True),
        v2.RandomCrop(img_size),
        v2.RandomHorizontalFlip(),
    ]
    return _pretrain_aug("crop_fixed", core, img_size)


def _crop_rand(img_size: int) -> list:
    return [
        v2.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
    ]


def aug_crop_rand(img_size: int):
    """RandomResizedCrop(scale=(0.2, 1), bicubic) + flip (the paper's default)."""
    return _pretrain_aug("crop_rand", _crop_rand(img_size), img_size)


def aug_crop_rand_jitter(img_size: int):
    """crop_rand + colour jitter (0.4 brightness/contrast/saturation)."""
    core = [*_crop_rand(img_size), v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)]
    return _pretrain_aug("crop_rand", core, img_size, jitter=0.4)


def linprobe_transform(img_size: int, train: bool = True):
    """Linear probing: RandomResizedCrop (bicubic) + flip for training, :func:`eval_transform` otherwise."""
    img_size = _check_size(img_size)
    if not train:
        return eval_transform(img_size)
    slow = v2.Compose(
        _start()
        + [v2.RandomResizedCrop(img_size, interpolation=BICUBIC, antialias=True), v2.RandomHorizontalFlip()]
        + _finish()
    )
    return _FastTensorAug("crop_rand", img_size, scale=(0.08, 1.0), fallback=slow)


def _posterize_safe(img, bits_to_keep, **_):
    """timm's posterize, with bits clamped to [1, 8] (Pillow >= 11 rejects 0 bits, which timm can draw)."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    return ImageOps.posterize(img, max(1, int(bits_to_keep)))


def _patch_posterize(t) -> None:
    for sub in getattr(t, "transforms", []):
        for op in getattr(sub, "ops", []):
            if "Posterize" in getattr(op, "name", ""):
                op.aug_fn = _posterize_safe


class _ToPIL:
    """Tensor → PIL (timm's RandAugment works on PIL images); PIL passes through."""

    def __call__(self, img):
        if isinstance(img, torch.Tensor):
            return TF.to_pil_image(img)
        return img

    def __repr__(self) -> str:
        return "ToPIL()"


def finetune_transform(
    img_size: int,
    train: bool = True,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    re_count: int = 1,
    color_jitter: float | None = None,
    interpolation: str = "bicubic",
    scale: tuple[float, float] | None = None,
    crop_pct: float | None = None,
):
    """Fine-tuning: timm ``create_transform`` (RandomResizedCrop, flip, RandAugment, RandomErasing).

    Without RandAugment, colour jitter and random erasing (the toy studies' light recipe) the pipeline is the
    random-resized crop and flip alone: uint8 tensors then take the batched tensor path (:class:`_FastTensorAug`,
    the same crop rule and bicubic filter, ~5x faster); otherwise, and for PIL images, timm's pipeline as it is
    (timm's RandAugment works on PIL images: ~250 µs per 32 px image, most of it in its PIL operations).
    """
    from timm.data import create_transform

    img_size = _check_size(img_size)
    if not train:
        return eval_transform(img_size, crop_pct)
    try:
        primary, secondary, final = create_transform(
            input_size=img_size,
            is_training=True,
            scale=scale,
            color_jitter=color_jitter,
            auto_augment=auto_augment,
            interpolation=interpolation,
            re_prob=re_prob,
            re_mode=re_mode,
            re_count=re_count,
            mean=MEAN,
            std=STD,
            separate=True,
        )
    except (AssertionError, ValueError, KeyError) as err:
        raise UserError(f"bad fine-tune augmentation setting (auto_augment={auto_augment!r}): {err}") from None
    _patch_posterize(secondary)
    timm_pipeline = v2.Compose([_ToPIL(), primary, secondary, final])
    if interpolation != "bicubic" or secondary.transforms or re_prob > 0:  # PIL ops or erasing: timm's as it is
        return timm_pipeline
    return _FastTensorAug("crop_rand", img_size, scale=tuple(scale or (0.08, 1.0)), fallback=timm_pipeline)


def seg_transform(img_size: int, train: bool = True) -> v2.Compose:
    """Joint (image, mask) transform for segmentation: call as ``t(tv_tensors.Image, tv_tensors.Mask)``.

    Train: RandomResizedCrop(scale=(0.5, 1)) + flip; eval: resize to img_size×img_size. Masks use nearest
    interpolation, become int64, and are never normalised.
    """
    img_size = _check_size(img_size)
    if train:
        core = [
            v2.RandomResizedCrop(img_size, scale=(0.5, 1.0), interpolation=BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        core = [v2.Resize((img_size, img_size), interpolation=BICUBIC, antialias=True)]
    finish = [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        v2.Normalize(MEAN, STD),
        v2.ToPureTensor(),
    ]
    return v2.Compose(core + finish)


def build_mixup(
    mixup: float = 0.8,
    cutmix: float = 1.0,
    label_smoothing: float = 0.1,
    num_classes: int = 1000,
    cutmix_minmax: tuple[float, float] | None = None,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: str = "batch",
):
    """timm ``Mixup`` (soft targets; needs an even batch size), or ``None`` when mixup and cutmix are off.

    Without mixup, train with label-smoothing cross-entropy (``label_smoothing``) instead.
    """
    from timm.data import Mixup

    if mixup < 0 or cutmix < 0:
        raise UserError(f"mixup/cutmix must be >= 0, got mixup={mixup}, cutmix={cutmix}")
    if mixup <= 0 and cutmix <= 0 and cutmix_minmax is None:
        return None
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes must be an integer >= 2 for mixup, got {num_classes!r}")
    return Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        cutmix_minmax=cutmix_minmax,
        prob=prob,
        switch_prob=switch_prob,
        mode=mode,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )
