"""`mae transfer-det`: ViTDet-style object detection and instance segmentation (paper Table 4, COCO).

The MAE encoder (or a random / supervised init) feeds a simple feature pyramid
(:mod:`mae.stages.backbone`) and torchvision's Mask R-CNN; training goes through the engine's ``fit()``
(the task's ``train_step`` sums Mask R-CNN's loss dict), and ``evaluate()`` runs pycocotools' COCOeval on the
model's predictions for the val split: box AP and mask AP (masks thresholded at 0.5 and RLE-encoded), each with
a 95 % bootstrap interval over the val images whose replicates pair across runs (:func:`bootstrap_ap`).

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from mae.data import detection_collate
from mae.engine import Task
from mae.errors import UserError
from mae.report.stats import BOOTSTRAP_SEED, N_BOOT, bootstrap_counts, percentile_interval
from mae.stage_configs import DetConfig

METRIC_KEYS = ("ap_box", "ap50_box", "ap75_box", "ap_mask", "ap50_mask", "ap75_mask")


def build_detector(vit: nn.Module, num_classes: int, cfg: DetConfig, img_size: int) -> nn.Module:
    """torchvision ``MaskRCNN`` on the ViT + simple feature pyramid. ``num_classes`` excludes background."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    from mae.stages.backbone import ViTPyramidBackbone

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


class CocoAP(dict):
    """``{"ap", "ap50", "ap75"}`` (percent) of one COCOeval, with ``boot``: the AP (percent, NaN where
    undefined) of every canonical bootstrap resample of the evaluated images (:func:`bootstrap_ap`).

    ``boot`` is an attribute, not an item, so that the dict stays the set of point metrics.
    """

    def __init__(self, ap: float, ap50: float, ap75: float, boot: np.ndarray):
        super().__init__(ap=ap, ap50=ap50, ap75=ap75)
        self.boot = boot


def coco_evaluate(coco_gt: Any, results: list[dict], iou_type: str, image_ids: Sequence[int]) -> CocoAP:
    """AP, AP50, AP75 (percent) of ``results`` against ``coco_gt`` on ``image_ids`` with pycocotools COCOeval,
    plus (``.boot``) the AP of each canonical bootstrap resample of ``image_ids`` from the same evaluation.

    An empty result list is scored as an empty detection set (pycocotools' ``loadRes`` cannot load it): AP 0,
    the true AP of no detections.
    """
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, _load_results(coco_gt, results), iou_type)
        ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # stats[0..2] = AP@[.5:.95], AP@.5, AP@.75; -1 means "no ground truth" -> report 0
    ap, ap50, ap75 = (max(float(s), 0.0) * 100.0 for s in ev.stats[:3])
    return CocoAP(ap, ap50, ap75, boot=100.0 * bootstrap_ap(ev, image_ids))


def _load_results(coco_gt: Any, results: list[dict]) -> Any:
    """The COCO result object of ``results``; for none, an empty one on the ground truth's images."""
    from pycocotools.coco import COCO

    if results:
        return coco_gt.loadRes([dict(r) for r in results])
    empty = COCO()
    empty.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    empty.createIndex()
    return empty


# ------------------------------------------------------------------------------------ bootstrap of COCO AP


def bootstrap_ap(ev: Any, image_ids: Sequence[int], n_boot: int = N_BOOT, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """COCO AP (fraction; NaN where undefined) of each canonical bootstrap resample of ``image_ids``.

    AP is not a mean over images, so the interval cannot come from per-image values: replicate ``b`` scores
    the multiset of images ``image_ids[bootstrap_indices(len(image_ids))[b]]`` instead, from the per-image
    matches of the evaluated ``ev`` (:func:`multiset_ap`). Every evaluation in the study resamples its ``n``
    images with the same rows of :func:`mae.report.stats.bootstrap_indices`, so replicate ``b`` of two runs on the
    same ``image_ids`` (in the same order) draws the same images: their differences are paired, replicate by
    replicate, with each other and with any per-image metric on these images.
    """
    positions = {int(i): j for j, i in enumerate(ev.params.imgIds)}
    onehot = np.zeros((len(image_ids), len(positions)), np.float32)
    onehot[np.arange(len(image_ids)), [positions[int(i)] for i in image_ids]] = 1.0
    return multiset_ap(ev, bootstrap_counts(len(image_ids), n_boot, seed) @ onehot)


def multiset_ap(ev: Any, counts: np.ndarray) -> np.ndarray:
    """COCO AP (``stats[0]``: IoU .50:.95, area 'all', the largest maxDets) of multisets of evaluated images.

    ``counts`` ``(B, I)`` (or ``(I,)``): how often each image of ``ev.params.imgIds`` is drawn in each of ``B``
    multisets; all ones give COCOeval's own AP. An image drawn k times counts k times, its detections and its
    non-ignored ground truths alike. Nothing is re-matched: pycocotools' accumulate is redone on the stored
    per-image matches ``ev.evalImgs``. Categories without a non-ignored ground truth in a multiset are left
    out of its mean (COCO's -1); a multiset without any ground truth gives NaN.
    """
    counts = np.atleast_2d(np.rint(counts).astype(np.int64))
    pools = [_CategoryPool.from_eval(ev, k) for k in range(len(ev.params.catIds))]
    rec_thrs = np.asarray(ev.params.recThrs, dtype=np.float64)
    ap = np.array([[pool.ap(c, rec_thrs) for pool in pools] for c in counts]).reshape(len(counts), len(pools))
    valid = np.isfinite(ap)
    n_valid = valid.sum(axis=1)
    total = np.where(valid, ap, 0.0).sum(axis=1)
    return np.where(n_valid > 0, total / np.maximum(n_valid, 1), np.nan)


@dataclass(frozen=True)
class _CategoryPool:
    """One category's detections on all evaluated images, ranked as pycocotools' accumulate ranks them.

    Detections are sorted by descending score, stably: ties keep image order, then the image's own order.
    A *run* is a stretch of equal scores from one image. Ranking a multiset that draws image ``i`` k times
    (its copies side by side in image order) keeps this order, with each run of ``i`` repeated k times in
    a row — what a stable sort of the copies gives.
    """

    tp: np.ndarray  # (T, D) bool: matched and not ignored, at each IoU threshold
    fp: np.ndarray  # (T, D) bool: unmatched and not ignored
    run_image: np.ndarray  # (R,) image position of each run
    run_start: np.ndarray  # (R,) first detection of each run
    run_len: np.ndarray  # (R,)
    n_gt: np.ndarray  # (I,) non-ignored ground truths per image

    @classmethod
    def from_eval(cls, ev: Any, k: int) -> _CategoryPool:
        p = ev.params
        n_img, n_thr, max_det = len(p.imgIds), len(p.iouThrs), p.maxDets[-1]
        first = (k * len(p.areaRng) + p.areaRngLbl.index("all")) * n_img
        no_det = np.zeros((n_thr, 0), bool)
        scores, tp, fp, image = [np.zeros(0)], [no_det], [no_det], [np.zeros(0, np.int64)]
        n_gt = np.zeros(n_img, np.int64)
        for i, e in enumerate(ev.evalImgs[first : first + n_img]):
            if e is None:  # no ground truth and no detection of this category
                continue
            n_gt[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
            matched = np.asarray(e["dtMatches"])[:, :max_det] != 0
            kept = ~np.asarray(e["dtIgnore"], dtype=bool)[:, :max_det]
            scores.append(np.asarray(e["dtScores"][:max_det], dtype=np.float64))
            tp.append(matched & kept)
            fp.append(~matched & kept)
            image.append(np.full(matched.shape[1], i, np.int64))
        score = np.concatenate(scores)
        order = np.argsort(-score, kind="mergesort")
        score, image = score[order], np.concatenate(image)[order]
        new_run = np.ones(len(score), bool)
        new_run[1:] = (score[1:] != score[:-1]) | (image[1:] != image[:-1])
        start = np.flatnonzero(new_run)
        return cls(
            np.concatenate(tp, axis=1)[:, order],
            np.concatenate(fp, axis=1)[:, order],
            image[start],
            start,
            np.diff(np.append(start, len(score))),
            n_gt,
        )

    def ranked(self, counts: np.ndarray) -> np.ndarray:
        """Detection indices of the multiset ``counts`` (per image) in rank order."""
        copies = counts[self.run_image]
        if (self.run_len == 1).all():
            return np.repeat(self.run_start, copies)
        size = self.run_len * copies
        run = np.repeat(np.arange(len(size)), size)
        offset = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
        return self.run_start[run] + offset % self.run_len[run]

    def ap(self, counts: np.ndarray, rec_thrs: np.ndarray) -> float:
        """Precision averaged over IoU and recall thresholds for the multiset ``counts``; NaN without GT.

        pycocotools' accumulate, read at the true positives only: the m-th true positive of a ranking is where
        recall first reaches m / n_gt, and every other rank has a precision no higher than the rank before it,
        so the precision made monotone from the right, sampled where recall first reaches each recall
        threshold (``searchsorted`` 'left'), only takes values at true positives. Thresholds never reached
        read 0. Same arithmetic, same values as the full cumulative TP/FP curves.
        """
        n_gt = int(counts @ self.n_gt)
        if n_gt == 0:
            return np.nan
        idx = self.ranked(counts)
        fp = np.cumsum(self.fp[:, idx], axis=1)  # (T, L) false positives so far
        row, col = np.nonzero(self.tp[:, idx])  # true positives, threshold by threshold, in rank order
        per_row = np.bincount(row, minlength=len(fp))
        m = np.arange(1, len(row) + 1) - np.repeat(np.cumsum(per_row) - per_row, per_row)  # TPs so far
        precision = np.zeros((len(fp), max(n_gt, per_row.max(initial=0))))  # [t, m - 1]: at the m-th TP
        precision[row, m - 1] = m / (m + fp[row, col] + np.spacing(1))
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        need = np.searchsorted(np.arange(n_gt + 1) / n_gt, rec_thrs, side="left")  # TPs to reach each threshold
        return float(precision[:, np.maximum(need, 1) - 1].mean())


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
        from mae.stages.backbone import build_vit

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
        self._boot: dict[str, np.ndarray] = {}

    # engine hooks ------------------------------------------------------------------------------------
    def param_groups(self, cfg: DetConfig) -> list[dict]:
        from mae.stages.backbone import layer_decay_groups

        return layer_decay_groups(self.model, self.vit, cfg.weight_decay, cfg.layer_decay)

    def train_loader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            shuffle=True,
            drop_last=len(self.train_set) > self.cfg.batch_size,
            num_workers=self.cfg.num_workers,
            collate_fn=detection_collate,
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
        metrics: dict[str, Any] = {}
        self._boot = {"n_images": np.int64(len(image_ids))}
        for iou_type, suffix in (("bbox", "box"), ("segm", "mask")):
            scores = coco_evaluate(self.coco_gt, results, iou_type, image_ids)
            metrics.update({f"{k}_{suffix}": v for k, v in scores.items()})
            boot = self._boot[f"ap_{suffix}_boot"] = scores.boot.astype(np.float32)
            metrics[f"ap_{suffix}_lo"], metrics[f"ap_{suffix}_hi"] = percentile_interval(boot)  # as from the .npz
        metrics.update(
            eval_images=len(image_ids),
            detections=len(results),
            eval_s=time.perf_counter() - t0,
            params=sum(p.numel() for p in self.model.parameters()),
            img_size=self.img_size,
        )
        return metrics

    def per_image(self) -> dict:
        """The last :meth:`evaluate`'s AP on each canonical bootstrap resample of its ``n_images`` val images:
        ``ap_box_boot`` and ``ap_mask_boot`` (percent, NaN where a resample has no ground truth). Replicate
        ``b`` of every run on these images draws the same images, so runs compare replicate by replicate."""
        return dict(self._boot)


# --------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mae.stages.backbone import add_transfer_arguments

    add_transfer_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from mae.stages.backbone import run_transfer

    return run_transfer(args, DetConfig, DetectionTask, "transfer_det", METRIC_KEYS)
