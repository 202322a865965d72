"""The settings of every evaluation and transfer stage, one dataclass each (the pretraining settings are
:class:`mae.config.PretrainConfig`).

Kept here, free of torch, so that the study planner can check a study config's sections against them at plan
time (``snakemake -n`` names a typo'd key) without importing the stages. Each stage module imports its class
from here. Loading, types and ``--set`` overrides: :mod:`mae.config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from mae.config import TrainConfig
from mae.errors import UserError


@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tuning settings (defaults: the paper's ViT-B recipe, Table 9 and the reference's ViT-B command;
    ViT-L/H: base_lr 1e-3, layer_decay 0.75, drop_path 0.2/0.3, 50 epochs; batch per process)."""

    stage: ClassVar[str] = "finetune"

    epochs: int = 100
    batch_size: int = 64
    base_lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    optimizer: Literal["adamw", "lars", "sgd"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eval_every: int = 1

    model: Optional[str] = None  # None: the name stored in the --init checkpoint (scratch: the study default)
    img_size: Optional[int] = None  # None: the dataset's image size (pos_embed is interpolated)
    global_pool: Literal["avg", "token"] = "avg"
    drop_path: float = 0.1
    layer_decay: float = 0.65  # ViT-B (ViT-L/H: 0.75); 1.0: no layer-wise decay (the from-scratch recipe)
    ema_decay: Optional[float] = None  # EMA of the weights, evaluated and saved (from-scratch recipe: 0.9999)
    head_init_std: float = 2e-5  # trunc_normal std of the new head (with --init)
    # mixup / cutmix (timm Mixup); mixup = cutmix = 0 disables it (then label-smoothing CE)
    mixup: float = 0.8
    cutmix: float = 1.0
    cutmix_minmax: Optional[tuple[float, float]] = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"
    smoothing: float = 0.1
    # timm augmentation (RandAugment + random erasing)
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    color_jitter: Optional[float] = None
    reprob: float = 0.25
    remode: Literal["pixel", "rand", "const"] = "pixel"
    recount: int = 1

    def check(self) -> None:
        super().check()
        for key in ("drop_path", "mixup", "cutmix", "smoothing", "reprob", "mixup_prob", "mixup_switch_prob"):
            if getattr(self, key) < 0:
                raise UserError(f"{key}={getattr(self, key)!r} for {self.stage} must be >= 0")
        for key in ("drop_path", "smoothing", "reprob", "mixup_prob", "mixup_switch_prob"):
            if getattr(self, key) > 1:
                raise UserError(f"{key}={getattr(self, key)!r} for {self.stage} must be <= 1")
        if not 0 < self.layer_decay <= 1:
            raise UserError(f"layer_decay={self.layer_decay!r} for {self.stage} must be in (0, 1]")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise UserError(f"ema_decay={self.ema_decay!r} for {self.stage} must be in (0, 1) (or null: no EMA)")
        if self.head_init_std <= 0:
            raise UserError(f"head_init_std={self.head_init_std!r} for {self.stage} must be > 0")
        if self.img_size is not None and self.img_size < 4:
            raise UserError(f"img_size={self.img_size!r} for {self.stage} must be >= 4 (or null)")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise UserError(f"crop_scale={list(self.crop_scale)!r} for {self.stage} must satisfy 0 < min <= max <= 1")


@dataclass
class LinprobeConfig(TrainConfig):
    """Linear-probe settings (defaults: the paper's recipe; batch per process)."""

    stage: ClassVar[str] = "linprobe"

    epochs: int = 90
    batch_size: int = 256
    base_lr: float = 0.1
    min_lr: float = 0.0
    warmup_epochs: float = 10.0
    weight_decay: float = 0.0
    optimizer: Literal["adamw", "lars", "sgd"] = "lars"
    momentum: float = 0.9
    trust_coeff: float = 1e-3  # LARS trust coefficient (reference 0.001): per-step change = lr*coeff*|w|
    eval_every: int = 1

    model: Optional[str] = None  # None: the name stored in the --init checkpoint (scratch: the study default)
    img_size: Optional[int] = None  # None: the dataset's image size
    global_pool: Literal["token", "avg"] = "token"
    head_init_std: float = 0.01
    cached_features: bool = False  # fast mode: features once, no augmentation (docs/evaluations.md)

    def check(self) -> None:
        super().check()
        if self.trust_coeff <= 0:
            raise UserError(f"trust_coeff={self.trust_coeff!r} for {self.stage} must be > 0")
        if self.head_init_std <= 0:
            raise UserError(f"head_init_std={self.head_init_std!r} for {self.stage} must be > 0")
        if self.img_size is not None and self.img_size < 4:
            raise UserError(f"img_size={self.img_size!r} for {self.stage} must be >= 4 (or null)")


@dataclass
class KnnConfig:
    """k-NN monitor settings."""

    stage: ClassVar[str] = "knn"

    k: int = 20
    temperature: float = 0.07
    global_pool: Literal["token", "avg"] = "token"
    model: Optional[str] = None  # None: the name stored in the --init checkpoint (scratch: the study default)
    img_size: Optional[int] = None  # None: the dataset's image size
    batch_size: int = 256
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"  # as TrainConfig.amp (mae.engine.precision)
    num_workers: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0  # random init with --scratch

    def check(self) -> None:
        if self.k < 1:
            raise UserError(f"k={self.k!r} for knn must be >= 1")
        if self.temperature <= 0:
            raise UserError(f"temperature={self.temperature!r} for knn must be > 0")
        if self.batch_size < 1:
            raise UserError(f"batch_size={self.batch_size!r} for knn must be >= 1")
        if self.num_workers < 0:
            raise UserError(f"num_workers={self.num_workers!r} for knn must be >= 0")


@dataclass
class DetConfig(TrainConfig):
    """Detection transfer. Study-scale defaults; ViTDet (ViT-B, COCO) values in config/paper.yaml."""

    stage = "transfer_det"

    epochs: int = 12
    batch_size: int = 16
    base_lr: float = 8e-3  # lr = base_lr * batch / 256 = 5e-4 at batch 16 (ViTDet: 1e-4 at batch 64)
    warmup_epochs: float = 1.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)

    model: Optional[str] = None  # None: the name recorded in --init (or the study default)
    img_size: Optional[int] = None  # detector canvas = encoder input; None: the dataset's image size
    drop_path: float = 0.1
    layer_decay: float = 0.7  # layer-wise lr decay of the ViT (1.0: off)
    out_channels: int = 64  # pyramid / head width (ViTDet: 256)
    scale_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)  # pyramid levels relative to the stride-p map
    anchor_scale: float = 4.0  # anchor side = anchor_scale x level stride (ViTDet: 8 -> 32..512 px)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_batch_size: int = 64  # anchors sampled per image for the RPN loss (ViTDet: 256)
    rpn_pre_nms_train: int = 256  # per level (ViTDet: 2000)
    rpn_post_nms_train: int = 128  # (ViTDet: 1000)
    rpn_pre_nms_test: int = 128  # (ViTDet: 1000)
    rpn_post_nms_test: int = 64  # (ViTDet: 1000)
    box_batch_size: int = 64  # RoIs sampled per image for the box/mask heads (ViTDet: 512)
    roi_sampling_ratio: int = 1  # RoIAlign samples per bin side (ViTDet: 0 = adaptive; its CPU backward is slow)
    box_head_dim: int = 256  # TwoMLPHead width (ViTDet: 1024)
    mask_head_dim: int = 64  # mask head conv width (ViTDet: 256)
    detections_per_img: int = 100
    score_thresh: float = 0.05
    hflip: bool = True  # random horizontal flip (train)
    train_images: Optional[int] = None  # train on the first N train images (None: all)
    eval_images: Optional[int] = None  # evaluate on the first N val images (None: all)
    eval_batch_size: int = 32

    def check(self) -> None:
        super().check()
        for key in (
            "out_channels",
            "rpn_batch_size",
            "rpn_pre_nms_train",
            "rpn_post_nms_train",
            "rpn_pre_nms_test",
            "rpn_post_nms_test",
            "box_batch_size",
            "box_head_dim",
            "mask_head_dim",
            "detections_per_img",
            "eval_batch_size",
        ):
            if getattr(self, key) < 1:
                raise UserError(f"{key}={getattr(self, key)!r} for {self.stage} must be >= 1")
        if self.img_size is not None and self.img_size < 4:
            raise UserError(f"img_size={self.img_size!r} for {self.stage} must be >= 4 (or null)")
        if not 0.0 < self.layer_decay <= 1.0:
            raise UserError(f"layer_decay={self.layer_decay!r} for {self.stage} must be in (0, 1]")
        if not 0.0 <= self.drop_path < 1.0:
            raise UserError(f"drop_path={self.drop_path!r} for {self.stage} must be in [0, 1)")
        if self.anchor_scale <= 0 or not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise UserError(f"anchor_scale/aspect_ratios for {self.stage} must be > 0")
        if self.roi_sampling_ratio < 0:
            raise UserError(f"roi_sampling_ratio={self.roi_sampling_ratio!r} for {self.stage} must be >= 0")
        for key in ("train_images", "eval_images"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise UserError(f"{key}={getattr(self, key)!r} for {self.stage} must be >= 1 (or null)")


@dataclass
class SegConfig(TrainConfig):
    """Segmentation transfer. Study-scale defaults; the paper's ADE20K values are in config/paper.yaml."""

    stage = "transfer_seg"

    epochs: int = 10
    batch_size: int = 64
    base_lr: float = 4e-3  # lr = base_lr * batch / 256 (1e-3 at batch 64)
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)

    model: Optional[str] = None  # None: the name recorded in --init (or the study default)
    img_size: Optional[int] = None  # crop / eval size; None: the dataset's image size (ADE20K: 512)
    drop_path: float = 0.1
    layer_decay: float = 0.65
    out_channels: int = 64  # pyramid / head width (UperNet in the paper: 512 / 768)
    scale_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    train_aug: bool = True  # RandomResizedCrop(0.5-1) + flip (mae.data.transforms.seg_transform)
    train_images: Optional[int] = None  # train on the first N images (None: all)
    eval_images: Optional[int] = None  # evaluate on the first N val images (None: all)
    eval_batch_size: int = 128

    def check(self) -> None:
        super().check()
        for key in ("out_channels", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise UserError(f"{key}={getattr(self, key)!r} for {self.stage} must be >= 1")
        for key in ("img_size", "train_images", "eval_images"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"{key}={value!r} for {self.stage} must be >= 1 (or null)")
        if not 0.0 < self.layer_decay <= 1.0:
            raise UserError(f"layer_decay={self.layer_decay!r} for {self.stage} must be in (0, 1]")
        if not 0.0 <= self.drop_path < 1.0:
            raise UserError(f"drop_path={self.drop_path!r} for {self.stage} must be in [0, 1)")


# ---------------------------------------------------------------------------------------------- metrics


@dataclass
class TransferClsConfig(FinetuneConfig):
    """The fine-tuning recipe (:class:`mae.stages.finetune.FinetuneConfig`), recorded as stage transfer_cls."""

    stage: ClassVar[str] = "transfer_cls"
