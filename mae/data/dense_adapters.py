"""Real datasets with dense annotations, by path: COCO (instances json) and ADE20K (scene parsing).

``describe_coco`` and ``describe_ade20k`` validate a dataset root and return the ``meta.json`` dict that
``mae prepare-data`` writes (:mod:`mae.data.prepare`); the Dataset classes (COCO for detection, segmentation and
classification, ADE20K for segmentation and classification) are built by :mod:`mae.data.datasets`. What every
adapter shares (image decoding, file verification, skip-bad loading) is in :mod:`mae.data.adapters`, as are the
ImageFolder ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mae.data.adapters import SPLIT_DIRS, SkipBadMixin, load_image, require_dir, to_output, verify_files
from mae.errors import UserError
from mae.study import is_image

log = logging.getLogger(__name__)


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Open a segmentation annotation (palette/grey PNG) as a uint8 (H,W) array."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16"):
                im = im.convert("L")
            return np.asarray(im).astype(np.uint8)
    except FileNotFoundError:
        raise UserError(f"annotation not found: {path}") from None
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cannot decode annotation {path}: {msg}") from None


# ----------------------------------------------------------------------------------------------------------
# COCO: root/annotations/instances_{train,val}2017.json + root/{train,val}2017/<file_name>


def coco_paths(root: Path, split: str) -> tuple[Path, Path]:
    d = SPLIT_DIRS["coco"][split]
    return root / "annotations" / f"instances_{d}.json", root / d


def load_coco_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"COCO annotation file not found: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"invalid JSON in {path}: {err}") from None
    except OSError as err:
        raise UserError(f"cannot read COCO annotation file {path}: {err.strerror}") from None
    if not isinstance(data, dict):
        raise UserError(f"COCO file {path}: the top level must be an object, not a {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"COCO file {path} has no '{key}' list")
    required = {
        "images": ("id", "file_name"),
        "categories": ("id", "name"),
        "annotations": ("id", "image_id", "category_id"),
    }
    for key, fields in required.items():
        for i, entry in enumerate(data[key]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise UserError(f"COCO file {path}: {key}[{i}] has no '{missing[0]}'")
    return data


def quiet_coco(data_or_path: dict | str | Path):
    """pycocotools.COCO built without its prints, from a dict or a json path."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(data_or_path, dict):
            coco = COCO()
            coco.dataset = data_or_path
            coco.createIndex()
        else:
            coco = COCO(str(data_or_path))
    return coco


def describe_coco(root: Path, img_size: int, verify: bool = False, skip_bad: bool = False) -> dict:
    root = require_dir(Path(root), "dataset root").resolve()
    splits, exclude, cats = {}, [], None
    for split in ("train", "val"):
        ann, img_dir = coco_paths(root, split)
        data = load_coco_json(ann)
        require_dir(img_dir, f"COCO {split} image folder")
        split_cats = sorted((c["id"], c["name"]) for c in data["categories"])
        if cats is None:
            cats = split_cats
        elif cats != split_cats:
            raise UserError(f"categories of {ann} differ from the train split's")
        bad = []
        for im in data["images"]:
            p = img_dir / im["file_name"]
            if not p.is_file():
                if not skip_bad:
                    raise UserError(f"{ann} names a missing image: {p}")
                bad.append(str(p))
        if verify:
            bad += verify_files(
                [str(img_dir / im["file_name"]) for im in data["images"] if str(img_dir / im["file_name"]) not in bad],
                skip_bad,
            )
        if bad:
            log.warning("%s: skipping %d missing/unreadable image(s), e.g. %s", split, len(bad), bad[0])
        exclude += bad
        splits[split] = len(data["images"]) - len(bad)
    assert cats is not None
    return {
        "kind": "coco",
        "root": str(root),
        "img_size": img_size,
        "classes": [n for _, n in cats],
        "cat_ids": [i for i, _ in cats],
        "num_classes": len(cats),
        "splits": splits,
        "has_semseg": True,  # semantic masks are rendered from the instance polygons/RLE
        "has_instances": True,
        "seg_classes": ["background"] + [n for _, n in cats],
        "ignore_index": 255,
        "exclude": exclude,
        "skip_bad": skip_bad,
    }


# ----------------------------------------------------------------------------------------------------------
# ADE20K scene parsing: root/images/{training,validation}/*.jpg, root/annotations/{...}/*.png
# Labels 0 = "other" (ignored), 1..150 = classes → reduce_zero_label: 0 → 255, v → v-1.


def scan_ade20k(root: Path, split: str) -> list[tuple[str, str]]:
    d = SPLIT_DIRS["ade20k"][split]
    img_dir = require_dir(root / "images" / d, f"ADE20K {split} image folder")
    ann_dir = require_dir(root / "annotations" / d, f"ADE20K {split} annotation folder")
    imgs = sorted(e.name for e in os.scandir(img_dir) if e.is_file() and is_image(e.name))
    if not imgs:
        raise UserError(f"no images in {img_dir}")
    pairs = []
    for name in imgs:
        ann = ann_dir / (Path(name).stem + ".png")
        if not ann.is_file():
            raise UserError(f"annotation missing for {img_dir / name}: {ann}")
        pairs.append((str(img_dir / name), str(ann)))
    return pairs


def _ade_class_names(root: Path, num_classes: int | None) -> list[str]:
    info = root / "objectInfo150.csv"
    if info.is_file():
        import csv

        with open(info, newline="") as f:
            rows = list(csv.DictReader(f))
        names = [r.get("Name", f"class_{i + 1}").split(";")[0] for i, r in enumerate(rows)]
        return names[:num_classes] if num_classes else names
    n = num_classes or 150
    return [f"class_{i + 1:03d}" for i in range(n)]


def describe_ade20k(
    root: Path, img_size: int, verify: bool = False, skip_bad: bool = False, num_classes: int | None = None
) -> dict:
    root = require_dir(Path(root), "dataset root").resolve()
    splits, exclude = {}, []
    for split in ("train", "val"):
        pairs = scan_ade20k(root, split)
        bad = []
        if verify:
            bad = verify_files([p for p, _ in pairs], skip_bad)
            bad += verify_files([a for p, a in pairs if p not in bad], skip_bad, load_label_png)
            if bad:
                log.warning("%s: skipping %d unreadable file(s), e.g. %s", split, len(bad), bad[0])
        exclude += bad
        badset = set(bad)
        splits[split] = sum(p not in badset and a not in badset for p, a in pairs)
    classes = _ade_class_names(root, num_classes)
    return {
        "kind": "ade20k",
        "root": str(root),
        "img_size": img_size,
        "classes": classes,
        "num_classes": len(classes),
        "splits": splits,
        "has_semseg": True,
        "has_instances": False,
        "seg_classes": classes,
        "ignore_index": 255,
        "reduce_zero_label": True,
        "exclude": exclude,
        "skip_bad": skip_bad,
    }


# ----------------------------------------------------------------------------------------------------------
# Dataset classes


class AdeClassification(SkipBadMixin, Dataset):
    """ADE20K as classification: the label is the most frequent (non-ignored) class of the annotation."""

    def __init__(self, pairs, classes, transform=None, skip_bad=False):
        self.pairs, self.classes, self.transform, self.skip_bad = pairs, classes, transform, skip_bad

    def __len__(self) -> int:
        return len(self.pairs)

    def _get(self, i: int):
        img_path, ann_path = self.pairs[i]
        mask = load_label_png(ann_path).astype(np.int64) - 1  # reduce_zero_label
        valid = mask[(mask >= 0) & (mask < len(self.classes))]
        label = int(np.bincount(valid, minlength=len(self.classes)).argmax()) if valid.size else 0
        return to_output(load_image(img_path), self.transform), label

    def __getitem__(self, i: int):
        return self._safe(self._get, i)


class AdeSegmentation(SkipBadMixin, Dataset):
    """(image, mask int64) with 0 → 255 (ignore), v → v-1; joint ``transform(Image, Mask)``."""

    def __init__(self, pairs, num_classes: int, transform=None, skip_bad=False):
        self.pairs, self.num_classes, self.transform, self.skip_bad = pairs, num_classes, transform, skip_bad

    def __len__(self) -> int:
        return len(self.pairs)

    def _get(self, i: int):
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        img_path, ann_path = self.pairs[i]
        raw = load_label_png(ann_path).astype(np.int64)
        mask = np.where(raw == 0, 255, raw - 1)
        mask[(mask >= self.num_classes) & (mask != 255)] = 255
        img = tv_tensors.Image(TF.pil_to_tensor(load_image(img_path)))
        if img.shape[-2:] != mask.shape:
            raise UserError(f"annotation {ann_path} size {mask.shape} differs from image {img_path}")
        m = tv_tensors.Mask(torch.from_numpy(mask.astype(np.uint8)))
        return apply_seg_transform(img, m, self.transform)

    def __getitem__(self, i: int):
        return self._safe(self._get, i)


def apply_seg_transform(img, mask, transform):
    """Joint transform of (tv Image uint8, tv Mask uint8) → (float image, int64 mask)."""
    if transform is not None:
        img, mask = transform(img, mask)
        return torch.as_tensor(img), torch.as_tensor(mask).long()
    return img.as_subclass(torch.Tensor).float().div_(255), mask.as_subclass(torch.Tensor).long()


def coco_targets(coco, img_id: int, h: int, w: int, cat_to_label: dict[int, int]) -> dict:
    """torchvision detection targets of one image: xyxy boxes, labels 1..C, uint8 masks (non-crowd only)."""
    anns = [a for a in coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)]
    anns = [a for a in anns if a["bbox"][2] > 0 and a["bbox"][3] > 0]
    boxes = torch.tensor(
        [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
        dtype=torch.float32,
    ).reshape(-1, 4)
    labels = torch.tensor([cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
    if anns:
        masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns]).astype(np.uint8))
    else:
        masks = torch.zeros((0, h, w), dtype=torch.uint8)
    return {
        "boxes": boxes,
        "labels": labels,
        "masks": masks,
        "image_id": int(img_id),
        "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32),
        "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
    }


def coco_semantic(coco, img_id: int, h: int, w: int, cat_to_label: dict[int, int]) -> np.ndarray:
    """Semantic mask from instances: 0 background, label (1..C) per pixel, larger objects drawn first."""
    sem = np.zeros((h, w), np.uint8)
    anns = sorted(coco.imgToAnns.get(img_id, []), key=lambda a: -a["area"])
    for a in anns:
        m = coco.annToMask(a).astype(bool)
        sem[m] = 255 if a.get("iscrowd", 0) else cat_to_label[a["category_id"]]
    return sem


class CocoDataset(SkipBadMixin, Dataset):
    """COCO-format images + annotations; ``mode`` = 'det' | 'seg' | 'cls'.

    * det: (float image (3,H,W) in [0,1], targets dict) — ``transform(image, target)`` if given;
    * seg: (image, semantic mask) with the joint seg transform;
    * cls: (image, label) where label = category of the largest non-crowd instance (images without one are
      left out).
    Attributes: ``coco`` (pycocotools GT), ``label_to_cat_id`` (index = contiguous label 1..C; [0] = 0).
    """

    def __init__(
        self,
        coco,
        img_dir: Path | None,
        image_ids: list[int],
        cat_ids: list[int],
        mode: str,
        transform=None,
        skip_bad=False,
        images: np.ndarray | None = None,
    ):
        self.coco = coco
        self.img_dir = img_dir
        self.mode = mode
        self.transform = transform
        self.skip_bad = skip_bad
        self.images = images  # in-memory (N,H,W,3) uint8 indexed by the image record's "index"
        self.cat_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.label_to_cat_id = [0] + list(cat_ids)
        self.ids = list(image_ids)
        if mode == "cls":
            keep, targets = [], []
            for i in self.ids:
                anns = [a for a in coco.imgToAnns.get(i, []) if not a.get("iscrowd", 0)]
                if anns:
                    keep.append(i)
                    targets.append(self.cat_to_label[max(anns, key=lambda a: a["area"])["category_id"]] - 1)
            self.ids, self.targets = keep, np.asarray(targets, np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def _image(self, img_id: int):
        rec = self.coco.imgs[img_id]
        if self.images is not None:
            return torch.from_numpy(np.array(self.images[rec["index"]])).permute(2, 0, 1)
        from torchvision.transforms.v2 import functional as TF

        return TF.pil_to_tensor(load_image(self.img_dir / rec["file_name"]))

    def _get(self, i: int):
        from torchvision import tv_tensors

        img_id = self.ids[i]
        img = self._image(img_id)
        h, w = img.shape[-2:]
        if self.mode == "det":
            target = coco_targets(self.coco, img_id, h, w, self.cat_to_label)
            image = img.float().div_(255)
            if self.transform is not None:
                image, target = self.transform(image, target)
            return image, target
        if self.mode == "seg":
            sem = coco_semantic(self.coco, img_id, h, w, self.cat_to_label)
            return apply_seg_transform(tv_tensors.Image(img), tv_tensors.Mask(torch.from_numpy(sem)), self.transform)
        label = int(self.targets[i])
        if self.transform is not None:
            return self.transform(img if self.images is not None else _tensor_to_pil(img)), label
        return img.float().div_(255), label

    def __getitem__(self, i: int):
        return self._safe(self._get, i)


def _tensor_to_pil(img: torch.Tensor):
    from torchvision.transforms.v2 import functional as TF

    return TF.to_pil_image(img)


def detection_collate(batch):
    """Collate for detection: lists of images and targets (sizes may differ)."""
    return [b[0] for b in batch], [b[1] for b in batch]
