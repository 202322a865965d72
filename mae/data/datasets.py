"""Datasets of a prepared data folder (see docs/ARCHITECTURE.md, "Prepared dataset on disk").

In-memory kinds (shapes, shapes2, digits) memory-map ``{split}_images.npy`` (uint8 N×H×W×3) and hand uint8
``(3,H,W)`` tensors to the transform (or float tensors in [0,1] when there is none). Folder kinds
(imagefolder, coco, ade20k) decode with PIL in the DataLoader workers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from mae.data import adapters, dense_adapters
from mae.errors import UserError
from mae.study import FOLDER_KINDS

IN_MEMORY_KINDS = ("shapes", "shapes2", "digits")
KINDS = IN_MEMORY_KINDS + FOLDER_KINDS
SPLITS = ("train", "val")
META_KEYS = ("kind", "img_size", "classes", "num_classes", "splits")


def load_meta(data_dir: str | Path) -> dict:
    """Read and check ``data_dir/meta.json``."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise UserError(f"not a prepared dataset (no meta.json): {Path(data_dir)}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"invalid JSON in {path}: {err}") from None
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise UserError(f"{path} lacks key '{missing[0]}'")
    if meta["kind"] not in KINDS:
        raise UserError(f"{path}: unknown kind {meta['kind']!r} (valid: {', '.join(KINDS)})")
    return meta


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} (valid: {', '.join(SPLITS)})")


#: what each array of a prepared dataset is: (dtype test, its description, number of dimensions)
_ARRAYS = {
    "images": (lambda d: d == np.uint8, "uint8", 4),
    "labels": (lambda d: d.kind in "iu", "integer", 1),
    "semseg": (lambda d: d == np.uint8, "uint8", 3),
}


def _load_npy(data_dir: Path, name: str, mmap: bool = True) -> np.ndarray:
    path = data_dir / name
    if not path.is_file():
        raise UserError(f"missing dataset file: {path}")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    what = name.removesuffix(".npy").rsplit("_", 1)[-1]
    if what in _ARRAYS:
        dtype_ok, dtype, ndim = _ARRAYS[what]
        if not dtype_ok(array.dtype) or array.ndim != ndim or (what == "images" and array.shape[-1] != 3):
            shape = "(N, H, W, 3)" if what == "images" else "(N,)" if what == "labels" else "(N, H, W)"
            raise UserError(f"{path}: expected {dtype} {shape}, got {array.dtype} {tuple(array.shape)}")
    return array


class ArrayDataset(Dataset):
    """(image, label) from memory-mapped arrays; the transform receives a uint8 (3,H,W) tensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str], transform=None):
        if len(images) != len(labels):
            raise UserError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.targets = np.asarray(labels, np.int64)
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def image_uint8(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)

    def __getitem__(self, i: int):
        img = self.image_uint8(i)
        if self.transform is None:
            return img.float().div_(255), int(self.targets[i])
        return self.transform(img), int(self.targets[i])

    @property
    def batchable(self) -> bool:
        """Whether :meth:`batch_items` transforms a batch at once (the tensor crop/resize/flip pipelines)."""
        return bool(getattr(self.transform, "batched", False))

    def batch_items(self, indices: list[int], seeds: list[int] | None = None) -> list:
        """``[self[i] for i in indices]`` with one transform call for the batch (needs :attr:`batchable`). Image
        ``i``'s random draws come from a generator seeded with its entry of ``seeds`` (what ``self[i]`` draws
        after ``torch.manual_seed(seed)``), or from torch's global RNG."""
        t = self.transform
        if seeds is None:
            uniforms = torch.rand(len(indices), t.UNIFORMS)
        else:
            gen = torch.Generator()
            uniforms = torch.stack([torch.rand(t.UNIFORMS, generator=gen.manual_seed(int(s))) for s in seeds])
        images = torch.from_numpy(self.images[np.asarray(indices)]).permute(0, 3, 1, 2)
        return list(zip(t.batch(images, uniforms).unbind(0), (int(self.targets[i]) for i in indices)))

    def __getitems__(self, indices: list[int]) -> list:
        """The DataLoader's batched fetch: one transform call per batch where the pipeline allows it."""
        if self.batchable:
            return self.batch_items(list(indices))
        return [self[i] for i in indices]


class ArraySegmentation(Dataset):
    """(image, mask) from memory-mapped arrays; joint ``transform(Image, Mask)`` or float/int64 tensors."""

    def __init__(self, images: np.ndarray, semseg: np.ndarray, transform=None):
        if len(images) != len(semseg):
            raise UserError(f"{len(images)} images but {len(semseg)} masks")
        self.images, self.semseg, self.transform = images, semseg, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from torchvision import tv_tensors

        img = tv_tensors.Image(torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(np.array(self.semseg[i])))
        return dense_adapters.apply_seg_transform(img, mask, self.transform)


def _check_labels(path: Path, labels: np.ndarray, meta: dict) -> None:
    """Every label is a class index of ``meta`` (0 .. num_classes - 1): one line naming the file otherwise."""
    if not len(labels):
        return
    num_classes = int(meta.get("num_classes") or len(meta["classes"]))
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise UserError(
            f"{path}: label {bad} is not a class index of this dataset (meta.json: num_classes "
            f"{num_classes}, labels 0..{num_classes - 1})"
        )


def _exclude(meta: dict) -> set[str]:
    return set(meta.get("exclude") or [])


def build_dataset(data_dir: str | Path, split: str, transform=None, skip_bad: bool | None = None) -> Dataset:
    """Torch Dataset of ``(image, label)`` for any prepared kind.

    Without a transform, images are float tensors (3,H,W) in [0,1]. ``skip_bad`` (default: the value given
    at prepare time) replaces unreadable folder images by the next good one instead of raising.
    The dataset has ``classes`` and ``targets`` (numpy int64 labels; -1 for an image folder without labels
    (``meta["labelled"]`` false); not for ade20k, whose label is computed from the mask on access).
    """
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    _check_split(split)
    kind = meta["kind"]
    skip = bool(meta.get("skip_bad", False)) if skip_bad is None else skip_bad
    if kind in IN_MEMORY_KINDS:
        images = _load_npy(data_dir, f"{split}_images.npy")
        labels = _load_npy(data_dir, f"{split}_labels.npy", mmap=False)
        if len(images) != len(labels):
            raise UserError(f"{data_dir}: {split} has {len(images)} images but {len(labels)} labels")
        _check_labels(data_dir / f"{split}_labels.npy", labels, meta)
        return ArrayDataset(images, labels, meta["classes"], transform)
    root = Path(meta.get("root", ""))
    ex = _exclude(meta)
    if kind == "imagefolder":  # label -1 without classes (a folder of images without class folders)
        samples = adapters.imagefolder_samples(root, split, meta["classes"], meta.get("val_split"))
        samples = [s for s in samples if s[0] not in ex]
        return adapters.FolderClassification(samples, meta["classes"], transform, skip)
    if kind == "ade20k":
        pairs = [p for p in dense_adapters.scan_ade20k(root, split) if p[0] not in ex and p[1] not in ex]
        return dense_adapters.AdeClassification(pairs, meta["classes"], transform, skip)
    return _coco_dataset(data_dir, meta, split, "cls", transform, skip)


def _coco_dataset(data_dir: Path, meta: dict, split: str, mode: str, transform, skip: bool):
    if meta["kind"] == "coco":
        root = Path(meta["root"])
        ann, img_dir = dense_adapters.coco_paths(root, split)
        coco = dense_adapters.quiet_coco(dense_adapters.load_coco_json(ann))
        ex = _exclude(meta)
        ids = [i for i in sorted(coco.imgs) if str(img_dir / coco.imgs[i]["file_name"]) not in ex]
        return dense_adapters.CocoDataset(coco, img_dir, ids, meta["cat_ids"], mode, transform, skip)
    if not meta.get("has_instances"):
        raise UserError(f"dataset {data_dir} (kind {meta['kind']}) has no instance annotations")
    ann = data_dir / f"{split}_instances.json"
    coco = dense_adapters.quiet_coco(dense_adapters.load_coco_json(ann))
    images = _load_npy(data_dir, f"{split}_images.npy")
    ids = sorted(coco.imgs)
    cat_ids = sorted(c["id"] for c in coco.dataset["categories"])
    return dense_adapters.CocoDataset(coco, None, ids, cat_ids, mode, transform, skip, images=images)


def build_detection_dataset(data_dir: str | Path, split: str, transform=None, skip_bad: bool | None = None):
    """Dataset of ``(image float (3,H,W) in [0,1], target)`` with torchvision Mask R-CNN targets.

    ``target`` = {boxes (N,4) xyxy float, labels (N,) int64 in 1..C, masks (N,H,W) uint8, image_id, area,
    iscrowd}. The dataset exposes ``coco`` (pycocotools GT for COCOeval) and ``label_to_cat_id``. Use
    :func:`mae.data.dense_adapters.detection_collate` as the DataLoader's ``collate_fn``.
    """
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    _check_split(split)
    skip = bool(meta.get("skip_bad", False)) if skip_bad is None else skip_bad
    if not meta.get("has_instances"):
        raise UserError(f"dataset {data_dir} (kind {meta['kind']}) has no instance annotations")
    return _coco_dataset(data_dir, meta, split, "det", transform, skip)


def build_segmentation_dataset(data_dir: str | Path, split: str, transform=None, skip_bad: bool | None = None):
    """Dataset of ``(image, mask int64 (H,W))``; mask values in [0, len(meta['seg_classes'])) or 255.

    ``transform`` is joint, e.g. :func:`mae.data.transforms.seg_transform`. For the built-in kinds and COCO,
    0 = background and c+1 = class c; for ADE20K, c = class c (its "other" label becomes 255).
    """
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    _check_split(split)
    skip = bool(meta.get("skip_bad", False)) if skip_bad is None else skip_bad
    if not meta.get("has_semseg"):
        raise UserError(f"dataset {data_dir} (kind {meta['kind']}) has no segmentation masks")
    kind = meta["kind"]
    if kind in IN_MEMORY_KINDS:
        return ArraySegmentation(
            _load_npy(data_dir, f"{split}_images.npy"), _load_npy(data_dir, f"{split}_semseg.npy"), transform
        )
    if kind == "ade20k":
        ex = _exclude(meta)
        pairs = [p for p in dense_adapters.scan_ade20k(Path(meta["root"]), split) if p[0] not in ex and p[1] not in ex]
        return dense_adapters.AdeSegmentation(pairs, len(meta["seg_classes"]), transform, skip)
    return _coco_dataset(data_dir, meta, split, "seg", transform, skip)


def load_train_images(data_dir: str | Path, max_images: int | None = None, seed: int = 0) -> torch.Tensor:
    """ImageNet-normalised float (N, 3, H, W) images of the train split of a prepared dataset.

    Reads ``DIR/train_images.npy`` (uint8 N,H,W,3) directly; other dataset kinds go through
    ``mae.data.build_dataset`` with the evaluation transform. ``max_images`` picks a seeded random subset.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"--data: not a directory: {data_dir}")
    npy = data_dir / "train_images.npy"
    gen = np.random.default_rng(seed)
    if npy.is_file():
        arr = np.load(npy, mmap_mode="r")
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise UserError(f"{npy}: expected uint8 (N,H,W,3), got {arr.dtype} {arr.shape}")
        idx = np.arange(len(arr))
        if max_images and len(arr) > max_images:
            idx = np.sort(gen.choice(len(arr), max_images, replace=False))
        x = torch.from_numpy(np.ascontiguousarray(arr[idx])).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
        return (x - mean) / std
    from mae.data.transforms import eval_transform

    meta = load_meta(data_dir)
    ds = build_dataset(data_dir, "train", transform=eval_transform(meta["img_size"]))
    idx = np.arange(len(ds))
    if max_images and len(ds) > max_images:
        idx = np.sort(gen.choice(len(ds), max_images, replace=False))
    return torch.stack([ds[int(i)][0] for i in idx])
