"""``mae finetune``: end-to-end fine-tuning of the encoder (``--scratch``: the from-scratch baseline).

Recipe (paper Table 9 / docs/ARCHITECTURE.md, "Reference facts"): timm ``VisionTransformer`` with global
average pooling + ``fc_norm`` (``global_pool=token``: cls token), head initialised trunc_normal(std 2e-5), AdamW
β=(0.9, 0.999), layer-wise lr decay (the reference's grouping, :func:`mae.engine.optim.param_groups_layer_decay`), drop
path, mixup 0.8 / cutmix 1.0 with label smoothing 0.1, RandAugment m9-mstd0.5, random erasing 0.25, warmup +
half-cycle cosine (the engine). Top-1/top-5 on val every ``eval_every`` epochs and at the end; ``metrics.json``
holds the last (``top1``) and the best (``best_top1``). The trained model is saved as ``out/model.pt`` =
``{'model': VisionTransformer state dict}``, loadable by ``timm.create_model`` (see docs/evaluations.md).
With ``ema_decay`` (the from-scratch recipe, App. A.2) the evaluated and saved weights are an EMA of the trained
ones (:class:`FinetuneTask`).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from mae.config import add_common_arguments, config_from_args, config_to_dict
from mae.stage_configs import FinetuneConfig
from mae.stages import classification


class FinetuneTask(classification.ClassificationTask):
    """Classification with layer-wise lr decay over the trainable parameters (optimizer ``cfg.optimizer``).

    With ``cfg.ema_decay`` it keeps an exponential moving average of the weights (timm ``ModelEmaV3``, started
    from the initial weights, updated after every optimizer step with the constant decay, as DeiT and timm's
    ``train.py``); the EMA weights are the ones evaluated (``top1``: the paper's scratch numbers are "with EMA",
    App. A.2), saved as ``model.pt`` and checkpointed, and the trained weights' top-1 is ``live_top1``.
    """

    def __init__(self, model, cfg: FinetuneConfig, *args, **kwargs) -> None:
        super().__init__(model, cfg, *args, **kwargs)
        self.ema = None
        if getattr(cfg, "ema_decay", None):
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=cfg.ema_decay)

    @property
    def eval_model(self):
        return self.ema.module if self.ema is not None else self.model

    def param_groups(self, cfg: FinetuneConfig) -> list[dict]:
        from mae.engine.optim import param_groups_layer_decay

        return param_groups_layer_decay(self.model, cfg.weight_decay, cfg.layer_decay)

    def after_optimizer_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.module.to(self.device)  # fit() may have moved the model after the EMA was made: a no-op then
            self.ema.update(self.model)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.ema is not None:
            self.ema.module.to(self.device).load_state_dict(state["ema"])


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
    name = classification.resolve_model_name(cfg.model, init)
    torch.manual_seed(cfg.seed)
    model, report = classification.build_encoder(
        name, num_classes, global_pool=cfg.global_pool, drop_path=cfg.drop_path, img_size=img_size, init=init
    )
    if init:
        classification.init_head(model.head, cfg.head_init_std)
    return model, name, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    classification.add_init_arguments(parser)


def run(args: argparse.Namespace, config_cls: type[FinetuneConfig] = FinetuneConfig) -> dict:
    """Run the evaluation; returns the metrics (also in ``out/metrics.json``). ``config_cls`` of another stage
    (classification transfer) records that stage and its dataset, and saves no weights."""
    started = time.perf_counter()
    cfg = config_from_args(config_cls, args)
    meta = classification.dataset_info(args.data)
    num_classes, img_size = int(meta["num_classes"]), int(cfg.img_size or meta["img_size"])
    device = classification.engine_device(cfg)
    model, name, report = build_finetune_model(cfg, args.init, num_classes, img_size)
    model.to(device)
    train_set, val_set, mixup = build_finetune_data(args.data, cfg, img_size, num_classes)
    task = FinetuneTask(model, cfg, train_set, val_set, device, mixup=mixup, smoothing=cfg.smoothing)
    finetune = cfg.stage == FinetuneConfig.stage
    weights = {"eval_weights": "ema" if task.ema is not None else "live"}
    extra = (
        weights
        if finetune
        else {
            **weights,
            "dataset": meta.get("name"),
            "dataset_kind": meta.get("kind"),
            "num_classes": num_classes,
            "img_size": img_size,
            "train_images": len(train_set),
        }
    )
    return classification.run_task(
        task,
        cfg,
        args.out,
        evaluation=cfg.stage,
        init=classification.init_label(args),
        init_path=args.init,
        data=args.data,
        model_name=name,
        load_report=report,
        save_weights=finetune,
        started=started,
        extra=extra,
        model_meta={
            "model": name,
            "num_classes": num_classes,
            "img_size": img_size,
            "global_pool": cfg.global_pool,
            "weights": weights["eval_weights"],
            "finetune_config": config_to_dict(cfg),
        },
    )


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0
