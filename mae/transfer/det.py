"""`mae transfer-det`: ViTDet-style object detection and instance segmentation (paper Table 4, COCO).

The MAE encoder (or a random / supervised init) feeds a simple feature pyramid
(:mod:`mae.transfer.backbone`) and torchvision's Mask R-CNN; training goes through the engine's ``fit()``
(the task's ``train_step`` sums Mask R-CNN's loss dict), and ``evaluate()`` runs pycocotools' COCOeval on the
model's predictions for the val split: box AP and mask AP (masks thresholded at 0.5 and RLE-encoded).

Input resolution. The detector's transform resizes the long side of every image to ``img_size`` (the
encoder's input size) and pads the batch to a square ``img_size``x``img_size`` canvas — ViTDet's 1024 px
large-scale-jitter canvas without the jitter. ``img_size`` defaults to the dataset's native size, so the
32 px built-in images are *not* upscaled (torchvision's default of an 800 px short side would turn an 8x8
token grid into 200x200 tokens for no extra information); for COCO set ``img_size: 1024``.

Defaults are sized for the study's scale (32 px images, a 128-d x 6 ViT, one CPU core); the ViTDet/paper
values are listed in docs/transfer.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from mae.config import TrainConfig
from mae.data import detection_collate
from mae.engine import Task
from mae.errors import UserError

METRIC_KEYS = ("ap_box", "ap50_box", "ap75_box", "ap_mask", "ap50_mask", "ap75_mask")


@dataclass
class DetConfig(TrainConfig):
    """Detection transfer. Study-scale defaults; ViTDet (ViT-B, COCO) values in docs/transfer.md."""

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
        for key in ("out_channels", "rpn_batch_size", "rpn_pre_nms_train", "rpn_post_nms_train",
                    "rpn_pre_nms_test", "rpn_post_nms_test", "box_batch_size", "box_head_dim", "mask_head_dim",
                    "detections_per_img", "eval_batch_size"):
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


# ------------------------------------------------------------------------------------------------- model


def build_detector(vit: nn.Module, num_classes: int, cfg: DetConfig, img_size: int) -> nn.Module:
    """torchvision ``MaskRCNN`` on the ViT + simple feature pyramid. ``num_classes`` excludes background."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    from mae.transfer.backbone import ViTPyramidBackbone

    backbone = ViTPyramidBackbone(vit, cfg.out_channels, cfg.scale_factors, top_pool=True)
    c = cfg.out_channels
    sizes = tuple((max(1, int(round(cfg.anchor_scale * s))),) for s in backbone.strides)
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(cfg.aspect_ratios),) * len(sizes))
    levels = [n for n in backbone.names if n != "pool"]
    box_pool = MultiScaleRoIAlign(featmap_names=levels, output_size=7, sampling_ratio=cfg.roi_sampling_ratio)
    mask_pool = MultiScaleRoIAlign(featmap_names=levels, output_size=14, sampling_ratio=cfg.roi_sampling_ratio)
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=img_size,
        max_size=img_size,
        size_divisible=img_size,  # pad every batch to the encoder's square canvas
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(c * 7 * 7, cfg.box_head_dim),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, num_classes + 1),
        box_batch_size_per_image=cfg.box_batch_size,
        box_detections_per_img=cfg.detections_per_img,
        box_score_thresh=cfg.score_thresh,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(c, (cfg.mask_head_dim,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_head_dim, cfg.mask_head_dim, num_classes + 1),
    )


# ------------------------------------------------------------------------------------------- COCO eval


def detections_to_coco(
    outputs: Sequence[dict], image_ids: Sequence[int], label_to_cat: Sequence[int], mask_thresh: float = 0.5
) -> list[dict]:
    """COCO result entries (bbox xywh, score, category_id, RLE segmentation) from Mask R-CNN outputs.

    ``label_to_cat[k]`` is the COCO category id of contiguous label ``k`` (index 0 = background, unused).
    """
    from pycocotools import mask as mask_utils

    results: list[dict] = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu().numpy()
        scores = out["scores"].detach().float().cpu().numpy()
        labels = out["labels"].detach().cpu().numpy()
        masks = out.get("masks")
        binary = None
        if masks is not None:
            binary = (masks.detach().float().cpu().numpy()[:, 0] >= mask_thresh).astype(np.uint8)
        for i in range(len(scores)):
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            entry = {
                "image_id": int(image_id),
                "category_id": int(label_to_cat[int(labels[i])]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(scores[i]),
            }
            if binary is not None:
                rle = mask_utils.encode(np.asfortranarray(binary[i]))
                rle["counts"] = rle["counts"].decode("ascii")
                entry["segmentation"] = rle
            results.append(entry)
    return results


def coco_evaluate(coco_gt: Any, results: list[dict], iou_type: str, image_ids: Sequence[int]) -> dict[str, float]:
    """AP, AP50, AP75 (percent) of ``results`` against ``coco_gt`` on ``image_ids`` with pycocotools COCOeval.

    An empty result list scores 0 (pycocotools cannot load it); that is the true AP of no detections.
    """
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # stats[0..2] = AP@[.5:.95], AP@.5, AP@.75; -1 means "no ground truth" -> report 0
    ap, ap50, ap75 = (max(float(s), 0.0) * 100.0 for s in ev.stats[:3])
    return {"ap": ap, "ap50": ap50, "ap75": ap75}


# -------------------------------------------------------------------------------------------------- task


def _hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    w = image.shape[-1]
    target = dict(target)
    if "boxes" in target and len(target["boxes"]):
        b = target["boxes"].clone()
        b[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
        target["boxes"] = b
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


class DetectionTask(Task):
    """Mask R-CNN transfer as an engine task: ``fit`` sets ``device``, autocast, eval mode and no_grad."""

    def __init__(self, cfg: DetConfig, data_dir: str | Path, init: str | None, device: torch.device | None = None):
        from mae.data import build_detection_dataset, load_meta
        from mae.transfer.backbone import build_vit

        self.cfg = cfg
        self.data_dir = Path(data_dir)
        meta = load_meta(self.data_dir)
        self.dataset_name = meta.get("name")
        self.train_set = build_detection_dataset(self.data_dir, "train")
        self.val_set = build_detection_dataset(self.data_dir, "val")
        if cfg.train_images is not None and cfg.train_images < len(self.train_set):
            self.train_set = torch.utils.data.Subset(self.train_set, range(cfg.train_images))
        self.coco_gt = self.val_set.coco
        self.label_to_cat = list(self.val_set.label_to_cat_id)
        num_classes = len(self.label_to_cat) - 1
        img_size = cfg.img_size or int(meta.get("img_size") or 0)
        if not img_size:
            raise UserError(f"img_size: {self.data_dir}/meta.json has no img_size; pass --set img_size=N")
        self.img_size = img_size
        vit, self.model_name, self.load_report = build_vit(cfg.model, init, img_size, cfg.drop_path)
        self.vit = vit
        self.model = build_detector(vit, num_classes, cfg, img_size)
        self.num_classes = num_classes
        if device is not None:
            self.device = device
        self._gen = torch.Generator().manual_seed(cfg.seed)

    # engine hooks ------------------------------------------------------------------------------------
    def param_groups(self, cfg: DetConfig) -> list[dict]:
        from mae.transfer.backbone import layer_decay_groups

        return layer_decay_groups(self.model, self.vit, cfg.weight_decay, cfg.layer_decay)

    def train_loader(self) -> DataLoader:
        return DataLoader(
            self.train_set, batch_size=self.cfg.batch_size, shuffle=True, drop_last=len(self.train_set) > self.cfg.batch_size,
            num_workers=self.cfg.num_workers, collate_fn=detection_collate,
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def train_step(self, batch) -> tuple[torch.Tensor, int, dict]:
        images, targets = batch
        images = self.to_device(list(images))
        targets = self.to_device(list(targets))
        if self.cfg.hflip:
            flips = torch.rand(len(images), generator=self._gen) < 0.5
            pairs = [(_hflip(im, t) if f else (im, t)) for im, t, f in zip(images, targets, flips.tolist())]
            images, targets = [p[0] for p in pairs], [p[1] for p in pairs]
        losses = self.model(images, targets)
        loss = sum(losses.values())
        return loss, len(images), {k: float(v.detach()) for k, v in losses.items()}

    @torch.no_grad()
    def predict(self, limit: int | None = None) -> tuple[list[dict], list[int]]:
        """(COCO result entries, evaluated image ids) of the val split."""
        was_training = self.model.training
        self.model.eval()
        device = self.device
        n = len(self.val_set) if limit is None else min(limit, len(self.val_set))
        subset = torch.utils.data.Subset(self.val_set, range(n))
        loader = DataLoader(subset, batch_size=self.cfg.eval_batch_size, shuffle=False, collate_fn=detection_collate)
        results: list[dict] = []
        image_ids: list[int] = []
        try:
            for images, targets in loader:
                outputs = self.model([im.to(device) for im in images])
                ids = [int(t["image_id"]) for t in targets]
                results += detections_to_coco(outputs, ids, self.label_to_cat)
                image_ids += ids
        finally:
            self.model.train(was_training)
        return results, image_ids

    def evaluate(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        results, image_ids = self.predict(self.cfg.eval_images)
        box = coco_evaluate(self.coco_gt, results, "bbox", image_ids)
        mask = coco_evaluate(self.coco_gt, results, "segm", image_ids)
        metrics: dict[str, Any] = {f"{k}_box": v for k, v in box.items()}
        metrics.update({f"{k}_mask": v for k, v in mask.items()})
        metrics.update(
            eval_images=len(image_ids),
            detections=len(results),
            eval_s=time.perf_counter() - t0,
            params=sum(p.numel() for p in self.model.parameters()),
            img_size=self.img_size,
        )
        return metrics


# --------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mae.transfer.backbone import add_transfer_arguments

    add_transfer_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from mae.transfer.backbone import run_transfer

    return run_transfer(args, DetConfig, DetectionTask, "transfer_det", METRIC_KEYS)
