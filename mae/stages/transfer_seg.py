"""`mae transfer-seg`: semantic segmentation transfer (paper Table 5, ADE20K with UperNet).

A light semantic-FPN head (Kirillov et al. 2019) on the ViTDet simple feature pyramid of the encoder: every
pyramid level goes through a 3x3 conv + LayerNorm + GELU, is upsampled to the finest level and summed; a 1x1
conv predicts the classes and the logits are bilinearly upsampled to the input size. Trained with
cross-entropy (ignore index 255) through the engine's ``fit()``; ``evaluate()`` accumulates a confusion
matrix over the val split and reports mIoU and pixel accuracy (percent).

mIoU is the mean of IoU_c = TP_c / (TP_c + FP_c + FN_c) over the classes that occur in the ground truth or
the predictions of the val split (a class absent from both has no defined IoU and is left out, as
mmsegmentation's nanmean does). Pixels labelled 255 are ignored. For the built-in data class 0 is the
background and counts as a class (like PASCAL VOC); ADE20K's 150 classes have no background.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from mae.engine import Task
from mae.errors import UserError
from mae.stage_configs import SegConfig

IGNORE_INDEX = 255


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction; ignored pixels skipped."""
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if len(target) and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise UserError(f"segmentation label {int(target.max())} outside [0, {num_classes}) and not {ignore_index}")
    idx = target * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def per_image_iou_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and class: intersection and union pixel counts ``(N, C)`` int32 (ignored pixels skipped).

    Summed over images they give the confusion matrix's IoU terms, so any resample of images has an exact mIoU
    (:func:`mae.report.stats.miou_replicates`)."""
    n, c = pred.shape[0], num_classes
    pred, target = pred.reshape(n, -1).long(), target.reshape(n, -1).long()
    keep = target != ignore_index
    image = torch.arange(n).view(n, 1).expand_as(target)
    idx = (image * c * c + target * c + pred)[keep]  # one confusion matrix per image, O(N·C²) memory
    cm = torch.bincount(idx, minlength=n * c * c).view(n, c, c)
    inter = cm.diagonal(dim1=1, dim2=2)
    return inter.int(), (cm.sum(2) + cm.sum(1) - inter).int()


def segmentation_metrics(cm: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """mIoU, pixel accuracy and mean class accuracy (percent) from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    gt = cm.sum(1)
    pr = cm.sum(0)
    union = gt + pr - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    total = cm.sum()
    valid = ~np.isnan(iou)
    return {
        "miou": float(np.mean(iou[valid]) * 100.0) if valid.any() else 0.0,
        "pixel_acc": float(tp.sum() / total * 100.0) if total > 0 else 0.0,
        "mean_acc": float(np.nanmean(acc) * 100.0) if (~np.isnan(acc)).any() else 0.0,
        "iou_per_class": [None if np.isnan(v) else float(v * 100.0) for v in iou],
    }


# ------------------------------------------------------------------------------------------------ model


class SemanticFPNHead(nn.Module):
    """Per-level 3x3 conv + LN + GELU, upsample to the finest level, sum, 1x1 conv to the classes."""

    def __init__(self, channels: int, num_levels: int, num_classes: int):
        from mae.stages.backbone import LayerNorm2d

        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, bias=False), LayerNorm2d(channels, eps=1e-6), nn.GELU()
            )
            for _ in range(num_levels)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        out = None
        for f, conv in zip(feats, self.lateral):
            y = conv(f)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        return self.classifier(out)


class Segmenter(nn.Module):
    """ViT + simple feature pyramid + semantic-FPN head; logits at the input resolution."""

    def __init__(self, vit: nn.Module, num_classes: int, out_channels: int, scale_factors=(4.0, 2.0, 1.0, 0.5)):
        from mae.stages.backbone import ViTPyramidBackbone

        super().__init__()
        self.backbone = ViTPyramidBackbone(vit, out_channels, scale_factors, top_pool=False)
        self.head = SemanticFPNHead(out_channels, len(self.backbone.names), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = list(self.backbone(x).values())
        logits = self.head(feats)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------------- task


class SegmentationTask(Task):
    """Semantic segmentation transfer as an engine task."""

    def __init__(self, cfg: SegConfig, data_dir: str | Path, init: str | None):
        from mae.data import build_segmentation_dataset, load_meta
        from mae.data.transforms import seg_transform
        from mae.stages.backbone import build_vit

        self.cfg = cfg
        data_dir = Path(data_dir)
        meta = load_meta(data_dir)
        self.dataset_name = meta.get("name")
        classes = meta.get("seg_classes")
        if not classes:
            raise UserError(f"{data_dir}/meta.json has no seg_classes (dataset without segmentation masks?)")
        self.num_classes = len(classes)
        img_size = cfg.img_size or int(meta.get("img_size") or 0)
        if not img_size:
            raise UserError(f"img_size: {data_dir}/meta.json has no img_size; pass --set img_size=N")
        self.img_size = img_size
        self.train_set = build_segmentation_dataset(data_dir, "train", seg_transform(img_size, train=cfg.train_aug))
        self.val_set = build_segmentation_dataset(data_dir, "val", seg_transform(img_size, train=False))
        if cfg.train_images is not None and cfg.train_images < len(self.train_set):
            self.train_set = Subset(self.train_set, range(cfg.train_images))
        if cfg.eval_images is not None and cfg.eval_images < len(self.val_set):
            self.val_set = Subset(self.val_set, range(cfg.eval_images))
        self.vit, self.model_name, self.load_report = build_vit(cfg.model, init, img_size, cfg.drop_path)
        self.model = Segmenter(self.vit, self.num_classes, cfg.out_channels, cfg.scale_factors)

    def param_groups(self, cfg: SegConfig) -> list[dict]:
        from mae.stages.backbone import layer_decay_groups

        return layer_decay_groups(self.model, self.vit, cfg.weight_decay, cfg.layer_decay)

    def train_loader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            shuffle=True,
            drop_last=len(self.train_set) > self.cfg.batch_size,
            num_workers=self.cfg.num_workers,
        )

    def train_step(self, batch) -> tuple[torch.Tensor, int, dict]:
        images, masks = self.to_device(batch)
        logits = self.model(images)
        loss = F.cross_entropy(logits.float(), masks.long(), ignore_index=IGNORE_INDEX)
        return loss, images.shape[0], {}

    def per_image(self) -> dict[str, np.ndarray]:
        return getattr(self, "_per_image", {})

    def evaluate(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        inter, union = [], []
        loader = DataLoader(self.val_set, batch_size=self.cfg.eval_batch_size, shuffle=False)
        try:
            with torch.no_grad():
                for images, masks in loader:
                    pred = self.model(images.to(self.device)).argmax(1).cpu()
                    cm += confusion_matrix(pred, masks, self.num_classes)
                    i, u = per_image_iou_counts(pred, masks, self.num_classes)
                    inter.append(i)
                    union.append(u)
        finally:
            self.model.train(was_training)
        self._per_image = {"inter": torch.cat(inter).numpy(), "union": torch.cat(union).numpy()} if inter else {}
        metrics = segmentation_metrics(cm)
        metrics.update(
            eval_images=len(self.val_set),
            eval_s=time.perf_counter() - t0,
            params=sum(p.numel() for p in self.model.parameters()),
            img_size=self.img_size,
        )
        return metrics


# --------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mae.stages.backbone import add_transfer_arguments

    add_transfer_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from mae.stages.backbone import run_transfer

    return run_transfer(args, SegConfig, SegmentationTask, "transfer_seg", ("miou",))
