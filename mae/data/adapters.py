"""Real datasets by path: ImageFolder (ImageNet layout), COCO (instances json) and ADE20K (scene parsing).

``describe_*`` functions validate a dataset root and return the ``meta.json`` dict that ``mae prepare-data``
writes (nothing is copied). The Dataset classes decode images with PIL lazily (in DataLoader workers).

Bad input raises :class:`mae.errors.UserError` naming the file; with ``skip_bad`` bad files are left out
(recorded in ``meta["exclude"]`` at prepare time, or replaced by the next good sample at load time) and the
count is logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mae.errors import UserError
from mae.study import IMAGE_EXTENSIONS as IMG_EXTENSIONS  # noqa: F401 - the planner reads folders by the same rule
from mae.study import folder_layout, is_image

log = logging.getLogger(__name__)

SPLIT_DIRS = {
    "imagefolder": {"train": "train", "val": "val"},
    "coco": {"train": "train2017", "val": "val2017"},
    "ade20k": {"train": "training", "val": "validation"},
}


def _require_dir(path: Path, what: str) -> Path:
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python 3.11 reports a symlink loop this way
        raise UserError(f"{what} is a symlink loop: {path}") from None
    except OSError as err:
        raise UserError(
            f"{what} {'not found' if isinstance(err, FileNotFoundError) else err.strerror}: {path}"
        ) from None
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if not path.is_dir():
        raise UserError(f"{what} is not a folder: {path}")
    return path


def load_image(path: str | os.PathLike):
    """Open and fully decode an RGB image; a missing/corrupt/truncated file → one-line UserError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cannot decode image {path}: {msg}") from None


def _to_rgb(im):
    """An RGB image; 16-bit grey levels (PNG/TIFF mode ``I;16*``, or ``I`` holding values above 255) scaled to 8
    bits by their bit depth (``convert("RGB")`` would clip every value above 255: a 16-bit image turns white)."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":
        values = np.asarray(im).astype(np.int64)
        peak = int(values.max(initial=0))
        bits = 16 if im.mode.startswith("I;16") else 8 if peak < 256 else 16 if peak < 2**16 else 32
        grey = (np.clip(values, 0, 2**bits - 1) >> (bits - 8)).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return im.convert("RGB")


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


def _verify_files(paths: list[str], skip_bad: bool, loader: Callable = load_image) -> list[str]:
    """Decode every file; return the bad ones (skip_bad) or raise on the first bad one."""
    from tqdm import tqdm

    bad = []
    for p in tqdm(paths, desc="verify", unit="img", mininterval=2.0, leave=False):
        try:
            loader(p)
        except UserError:
            if not skip_bad:
                raise
            bad.append(p)
    return bad


# ----------------------------------------------------------------------------------------------------------
# ImageFolder: root/{train,val}/<class>/<image>, root/<class>/<image> or a folder of images without labels
# (mae.study.folder_layout); without train/ and val/ the split is made here: seeded, by a hash of each path


def _images_below(folder: Path) -> list[str]:
    """Every image file below ``folder`` (sub-folders too; names starting with "." skipped), sorted."""

    def unreadable(err: OSError) -> None:
        raise UserError(f"cannot read folder {err.filename}: {err.strerror}")

    found = []
    for top, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(top, f) for f in files if is_image(f)]
    return sorted(found)


def _pool_samples(pool: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) of the images of one folder: below each class folder (label = the class's index in
    ``classes``), or, without classes, every image below it (label -1: no label)."""
    _require_dir(pool, "image folder")
    if not classes:
        files = _images_below(pool)
        if not files:
            raise UserError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {pool}")
        return [(p, -1) for p in files]
    found = sorted(e.name for e in os.scandir(pool) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise UserError(f"no class folders in {pool}")
    index = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    for c in found:
        if c not in index:
            raise UserError(f"class folder {pool / c} is not a class of the train split")
        files = _images_below(pool / c)
        if not files:
            raise UserError(f"empty class folder (no images): {pool / c}")
        samples.extend((p, index[c]) for p in files)
    return samples


def made_val_split(samples: list[tuple[str, int]], root: Path, fraction: float, seed: int) -> set[str]:
    """The val images of a split made here: of each class (of all images, without labels) the ``round(n ×
    fraction)`` first by the SHA-256 of ``seed`` and the path below ``root`` (at least one, and one left for
    training, when the class has two or more). It depends on the file names only: the same on every machine,
    whatever the listing order, and an added image moves at most one other of its class."""
    by_label: dict[int, list[str]] = {}
    for path, label in samples:
        by_label.setdefault(label, []).append(path)
    val: set[str] = set()
    for paths in by_label.values():
        n = len(paths)
        k = min(max(round(n * fraction), 1), n - 1) if n >= 2 else 0
        key = {
            p: hashlib.sha256(
                f"{seed}:{Path(p).relative_to(root).as_posix()}".encode("utf-8", "surrogateescape")
            ).digest()
            for p in paths
        }
        val.update(sorted(paths, key=key.__getitem__)[:k])
    return val


def imagefolder_samples(
    root: Path, split: str, classes: list[str], val_split: dict | None = None
) -> list[tuple[str, int]]:
    """(path, label) of one split of an image folder: ``root/<split>`` when the split is given (``val_split``
    None), else the part of ``root`` the made split (``{"fraction", "seed"}``) assigns to it; label -1 when
    the dataset has no classes."""
    if val_split is None:
        return _pool_samples(_require_dir(root / SPLIT_DIRS["imagefolder"][split], f"{split} folder"), classes)
    samples = _pool_samples(root, classes)
    val = made_val_split(samples, root, float(val_split["fraction"]), int(val_split["seed"]))
    return [s for s in samples if (s[0] in val) == (split == "val")]


def describe_imagefolder(
    root: Path,
    img_size: int,
    verify: bool = False,
    skip_bad: bool = False,
    unlabelled: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """meta.json of an image folder (:func:`mae.study.folder_layout`): ``root/{train,val}/`` as given, else a
    seeded split of ``root`` (``val_fraction`` of each class, :func:`made_val_split`); class folders are labels
    (none: ``labelled`` false, ``num_classes`` 0, label -1)."""
    root = _require_dir(Path(root), "dataset root").resolve()
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    layout = folder_layout(root, unlabelled)
    classes = list(layout.classes)
    val_split = None if layout.split else {"fraction": val_fraction, "seed": seed}
    train = imagefolder_samples(root, "train", classes, val_split)
    val = imagefolder_samples(root, "val", classes, val_split)
    if not val:
        raise UserError(f"too few images in {root} for a validation split (a class needs 2 images to give one)")
    exclude: list[str] = []
    if verify:
        exclude = _verify_files([p for p, _ in train + val], skip_bad)
        if exclude:
            log.warning("skipping %d unreadable image(s), e.g. %s", len(exclude), exclude[0])
    ex = set(exclude)
    return {
        "kind": "imagefolder",
        "root": str(root),
        "img_size": img_size,
        "classes": classes,
        "num_classes": len(classes),
        "labelled": bool(classes),
        "val_split": val_split,  # None: root/train and root/val
        "splits": {"train": sum(p not in ex for p, _ in train), "val": sum(p not in ex for p, _ in val)},
        "has_semseg": False,
        "has_instances": False,
        "exclude": exclude,
        "skip_bad": skip_bad,
    }


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
    root = _require_dir(Path(root), "dataset root").resolve()
    splits, exclude, cats = {}, [], None
    for split in ("train", "val"):
        ann, img_dir = coco_paths(root, split)
        data = load_coco_json(ann)
        _require_dir(img_dir, f"COCO {split} image folder")
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
            bad += _verify_files(
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
    img_dir = _require_dir(root / "images" / d, f"ADE20K {split} image folder")
    ann_dir = _require_dir(root / "annotations" / d, f"ADE20K {split} annotation folder")
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
    root = _require_dir(Path(root), "dataset root").resolve()
    splits, exclude = {}, []
    for split in ("train", "val"):
        pairs = scan_ade20k(root, split)
        bad = []
        if verify:
            bad = _verify_files([p for p, _ in pairs], skip_bad)
            bad += _verify_files([a for p, a in pairs if p not in bad], skip_bad, load_label_png)
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


class _SkipBadMixin:
    """``_get(i)`` with skip_bad: a failing sample is replaced by the next one (count logged)."""

    skip_bad: bool = False
    n_skipped: int = 0

    def _safe(self, fn: Callable[[int], Any], index: int):
        if not self.skip_bad:
            return fn(index)
        n = len(self)  # type: ignore[arg-type]
        for k in range(min(n, 100)):
            try:
                return fn((index + k) % n)
            except UserError as err:
                self.n_skipped += 1
                log.warning("skipping bad sample (%d so far): %s", self.n_skipped, err)
        raise UserError(f"100 consecutive unreadable samples from index {index}")


def _to_output(img, transform):
    """PIL → transform(img) or float tensor in [0,1] (3,H,W)."""
    if transform is not None:
        return transform(img)
    from torchvision.transforms.v2 import functional as TF

    return TF.to_dtype(TF.pil_to_tensor(img), torch.float32, scale=True)


class FolderClassification(_SkipBadMixin, Dataset):
    """(image, label) from a list of (path, label); images decoded with PIL."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform=None, skip_bad=False):
        self.samples = samples
        self.classes = classes
        self.targets = np.asarray([s[1] for s in samples], np.int64)
        self.transform = transform
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.samples)

    def _get(self, i: int):
        path, label = self.samples[i]
        return _to_output(load_image(path), self.transform), int(label)

    def __getitem__(self, i: int):
        return self._safe(self._get, i)


class AdeClassification(_SkipBadMixin, Dataset):
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
        return _to_output(load_image(img_path), self.transform), label

    def __getitem__(self, i: int):
        return self._safe(self._get, i)


class AdeSegmentation(_SkipBadMixin, Dataset):
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


class CocoDataset(_SkipBadMixin, Dataset):
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
