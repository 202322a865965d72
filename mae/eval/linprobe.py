"""``mae linprobe``: linear probing of the frozen encoder.

Recipe (paper / docs/ARCHITECTURE.md, "Reference facts"): every encoder parameter frozen; feature = cls token after the final norm
(``global_pool=avg``: average of the patch tokens + a parameter-free ``fc_norm``); head =
``BatchNorm1d(affine=False, eps=1e-6)`` + ``Linear`` (trunc_normal std 0.01); timm ``Lars`` with momentum 0.9,
base_lr 0.1 × batch/256, weight decay 0, warmup + cosine; RandomResizedCrop + flip
(:func:`mae.data.transforms.linprobe_transform`). The LARS trust ratio is applied to the weight matrix only (not
to biases), as in the reference.

``cached_features=true`` (fast mode) runs the encoder once over train and val *without augmentation* and trains
the head on the stored features — a deterministic approximation of the protocol (no new crop per epoch), much
cheaper on a CPU. See the README, "Evaluations".
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from mae.config import add_common_arguments, config_from_args
from mae.eval import common
from mae.stage_configs import LinprobeConfig


def probe_head(dim: int, num_classes: int, std: float) -> nn.Sequential:
    """``BatchNorm1d(affine=False, eps=1e-6)`` + ``Linear`` (trunc_normal weights, zero bias)."""
    linear = nn.Linear(dim, num_classes)
    common.init_head(linear, std)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def lars_param_groups(model: nn.Module, weight_decay: float, trust_coeff: float = 1e-3) -> list[dict]:
    """Trainable params in two groups: matrices (weight decay + LARS adaptation) and 1-D params (neither)."""
    matrices, vectors = [], []
    for _, param in common.trainable_named_params(model):
        (matrices if param.ndim > 1 else vectors).append(param)
    groups = []
    if matrices:
        groups.append({"params": matrices, "weight_decay": weight_decay, "always_adapt": True,
                       "trust_coeff": trust_coeff})
    if vectors:
        groups.append({"params": vectors, "weight_decay": 0.0, "always_adapt": False})
    return groups


class LinprobeTask(common.ClassificationTask):
    """Trains only what ``requires_grad``; LARS groups as in the reference (or ``cfg.optimizer``)."""

    def param_groups(self, cfg: LinprobeConfig) -> list[dict]:
        if cfg.optimizer == "lars":
            return lars_param_groups(self.model, cfg.weight_decay, cfg.trust_coeff)
        from mae.optim import param_groups_weight_decay

        return param_groups_weight_decay(self.model, cfg.weight_decay)


def build_probe_model(cfg: LinprobeConfig, init: str | None, num_classes: int, img_size: int):
    """Frozen encoder whose head is the probe head; only the head's Linear is trainable."""
    name = common.resolve_model_name(cfg.model, init)
    torch.manual_seed(cfg.seed)
    model, report = common.build_encoder(name, num_classes, global_pool=cfg.global_pool, img_size=img_size, init=init)
    model.head = probe_head(model.embed_dim, num_classes, cfg.head_init_std)
    common.freeze_all_but(model, lambda n: n.startswith("head."))
    return model, name, report


def build_probe_task(cfg: LinprobeConfig, data: str, init: str | None, device: torch.device):
    """The linear-probe task: end to end through the frozen encoder, or on cached features.

    Returns ``(task, encoder, model_name, load_report, extra_metrics)``; ``encoder`` is the full model (its head
    is the trained probe head in both modes).
    """
    from mae.data import build_dataset
    from mae.data.transforms import eval_transform, linprobe_transform

    meta = common.dataset_info(data)
    num_classes, img_size = int(meta["num_classes"]), int(cfg.img_size or meta["img_size"])
    model, name, report = build_probe_model(cfg, init, num_classes, img_size)
    model.to(device)
    extra: dict = {"cached_features": cfg.cached_features, "global_pool": cfg.global_pool}
    if not cfg.cached_features:
        train_set = build_dataset(data, "train", linprobe_transform(img_size, True))
        val_set = build_dataset(data, "val", linprobe_transform(img_size, False))
        return LinprobeTask(model, cfg, train_set, val_set, device), model, name, report, extra
    sets, started = {}, time.perf_counter()
    for split in ("train", "val"):
        dataset = build_dataset(data, split, eval_transform(img_size))
        feats, labels, rates = common.extract_features(
            model, dataset, device, batch_size=cfg.batch_size, amp=cfg.amp, num_workers=cfg.num_workers,
            desc=f"features {split}",
        )
        sets[split] = TensorDataset(feats, labels)
        extra[f"feature_img_s_{split}"] = rates["img_s"]
        extra[f"feature_step_img_s_{split}"] = rates["step_img_s"]
    extra["feature_s"] = time.perf_counter() - started  # the encoder's passes over both splits
    task = LinprobeTask(model.head, cfg, sets["train"], sets["val"], device)
    return task, model, name, report, extra


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    common.add_init_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    """Run the evaluation; returns the metrics (also in ``out/metrics.json``)."""
    started = time.perf_counter()
    cfg = config_from_args(LinprobeConfig, args)
    device = common.engine_device(cfg)
    task, model, name, report, extra = build_probe_task(cfg, args.data, args.init, device)
    return common.run_task(
        task, cfg, args.out, evaluation="linprobe", init=common.init_label(args), init_path=args.init,
        data=args.data, model_name=name, load_report=report, extra=extra, started=started,
    )


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0
