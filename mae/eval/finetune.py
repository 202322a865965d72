"""``mae finetune``: end-to-end fine-tuning of the encoder (``--scratch``: the from-scratch baseline).

Recipe (paper Table 9 / docs/ARCHITECTURE.md, "Reference facts"): timm ``VisionTransformer`` with global average pooling + ``fc_norm``
(``global_pool=token``: cls token), head initialised trunc_normal(std 2e-5), AdamW β=(0.9, 0.999), layer-wise lr
decay (timm grouping, :func:`mae.optim.param_groups_layer_decay`), drop path, mixup 0.8 / cutmix 1.0 with label
smoothing 0.1, RandAugment m9-mstd0.5, random erasing 0.25, warmup + half-cycle cosine (the engine). Top-1/top-5
on val every ``eval_every`` epochs and at the end; ``metrics.json`` holds the last (``top1``) and the best
(``best_top1``). The trained model is saved as ``out/model.pt`` = ``{'model': VisionTransformer state dict}``,
loadable by ``timm.create_model`` (see the README, "Evaluations").
"""

from __future__ import annotations

import argparse
import time
import sys
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch

from mae.config import TrainConfig, add_common_arguments, config_from_args, config_to_dict
from mae.errors import UserError
from mae.eval import common


@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tuning settings (defaults: the paper's ViT-B recipe, batch per process)."""

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
    layer_decay: float = 0.75  # 1.0: no layer-wise decay (the paper's from-scratch recipe)
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
        if self.head_init_std <= 0:
            raise UserError(f"head_init_std={self.head_init_std!r} for {self.stage} must be > 0")
        if self.img_size is not None and self.img_size < 4:
            raise UserError(f"img_size={self.img_size!r} for {self.stage} must be >= 4 (or null)")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise UserError(f"crop_scale={list(self.crop_scale)!r} for {self.stage} must satisfy 0 < min <= max <= 1")


class FinetuneTask(common.ClassificationTask):
    """Classification with layer-wise lr decay over the trainable parameters (optimizer ``cfg.optimizer``)."""

    def param_groups(self, cfg: FinetuneConfig) -> list[dict]:
        from mae.optim import param_groups_layer_decay

        return param_groups_layer_decay(self.model, cfg.weight_decay, cfg.layer_decay)


def _pillow_posterize_zero_ok() -> bool:
    from PIL import Image, ImageOps

    try:
        ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
    except ValueError:
        return False
    return True


def compatible_auto_augment(policy: str | None) -> str | None:
    """timm's increasing posterize ('inc1') asks Pillow for 0 bits at magnitude 10; Pillow >= 13 raises there
    (older versions returned a black image), so a RandAugment draw crashes the loader now and then. With such a
    Pillow, cap the magnitude at 9 (``-mmax9``: at most 3 bits removed) and say so once."""
    if not policy or not policy.startswith("rand") or "inc1" not in policy.split("-") or "-mmax" in policy:
        return policy
    if _pillow_posterize_zero_ok():
        return policy
    fixed = policy + "-mmax9"
    print(f"note: auto_augment={policy!r} -> {fixed!r} (this Pillow rejects 0-bit posterize)", file=sys.stderr)
    return fixed


def build_finetune_data(data: str, cfg: FinetuneConfig, img_size: int, num_classes: int):
    """(train set with the timm fine-tune augmentation, val set with the eval transform, mixup or None)."""
    from mae.data import build_dataset
    from mae.data.transforms import build_mixup, finetune_transform

    train_tf = finetune_transform(
        img_size,
        True,
        auto_augment=compatible_auto_augment(cfg.auto_augment),
        re_prob=cfg.reprob,
        re_mode=cfg.remode,
        re_count=cfg.recount,
        color_jitter=cfg.color_jitter,
        scale=tuple(cfg.crop_scale),
    )
    train_set = build_dataset(data, "train", train_tf)
    val_set = build_dataset(data, "val", finetune_transform(img_size, False))
    mixup = build_mixup(
        mixup=cfg.mixup,
        cutmix=cfg.cutmix,
        label_smoothing=cfg.smoothing,
        num_classes=num_classes,
        cutmix_minmax=cfg.cutmix_minmax,
        prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob,
        mode=cfg.mixup_mode,
    )
    return train_set, val_set, mixup


def build_finetune_model(cfg: FinetuneConfig, init: str | None, num_classes: int, img_size: int):
    """Encoder + linear head; from ``init`` (head re-initialised with ``head_init_std``) or random init."""
    name = common.resolve_model_name(cfg.model, init)
    torch.manual_seed(cfg.seed)
    model, report = common.build_encoder(
        name, num_classes, global_pool=cfg.global_pool, drop_path=cfg.drop_path, img_size=img_size, init=init
    )
    if init:
        common.init_head(model.head, cfg.head_init_std)
    return model, name, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    common.add_init_arguments(parser)


def run(args: argparse.Namespace, config_cls: type[FinetuneConfig] = FinetuneConfig) -> dict:
    """Run the evaluation; returns the metrics (also in ``out/metrics.json``). ``config_cls`` of another stage
    (classification transfer) records that stage and its dataset, and saves no weights."""
    started = time.perf_counter()
    cfg = config_from_args(config_cls, args)
    meta = common.dataset_info(args.data)
    num_classes, img_size = int(meta["num_classes"]), int(cfg.img_size or meta["img_size"])
    device = common.engine_device(cfg)
    model, name, report = build_finetune_model(cfg, args.init, num_classes, img_size)
    model.to(device)
    train_set, val_set, mixup = build_finetune_data(args.data, cfg, img_size, num_classes)
    task = FinetuneTask(model, cfg, train_set, val_set, device, mixup=mixup, smoothing=cfg.smoothing)
    finetune = cfg.stage == FinetuneConfig.stage
    extra = None if finetune else {"dataset": meta.get("name"), "dataset_kind": meta.get("kind"),
                                   "num_classes": num_classes, "img_size": img_size, "train_images": len(train_set)}
    return common.run_task(
        task, cfg, args.out, evaluation=cfg.stage, init=common.init_label(args), init_path=args.init,
        model_name=name, load_report=report, save_weights=finetune, started=started, extra=extra,
        model_meta={"model": name, "num_classes": num_classes, "img_size": img_size, "global_pool": cfg.global_pool,
                    "finetune_config": config_to_dict(cfg)},
    )


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0
