"""Real datasets by path: ImageFolder (ImageNet layout), and what every real-dataset adapter shares (decoding an
image, verifying files, replacing a bad sample). COCO and ADE20K are in :mod:`mae.data.dense_adapters`.

``describe_*`` functions validate a dataset root and return the ``meta.json`` dict that ``mae prepare-data``
writes (nothing is copied; :mod:`mae.data.prepare`). The Dataset classes decode images with PIL lazily (in
DataLoader workers); :mod:`mae.data.datasets` builds them.

Bad input raises :class:`mae.errors.UserError` naming the file; with ``skip_bad`` bad files are left out
(recorded in ``meta["exclude"]`` at prepare time, or replaced by the next good sample at load time) and the
count is logged.
"""

from __future__ import annotations

import hashlib
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


def require_dir(path: Path, what: str) -> Path:
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


def verify_files(paths: list[str], skip_bad: bool, loader: Callable = load_image) -> list[str]:
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
    require_dir(pool, "image folder")
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
        return _pool_samples(require_dir(root / SPLIT_DIRS["imagefolder"][split], f"{split} folder"), classes)
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
    root = require_dir(Path(root), "dataset root").resolve()
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
        exclude = verify_files([p for p, _ in train + val], skip_bad)
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
# Dataset classes


class SkipBadMixin:
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


def to_output(img, transform):
    """PIL → transform(img) or float tensor in [0,1] (3,H,W)."""
    if transform is not None:
        return transform(img)
    from torchvision.transforms.v2 import functional as TF

    return TF.to_dtype(TF.pil_to_tensor(img), torch.float32, scale=True)


class FolderClassification(SkipBadMixin, Dataset):
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
        return to_output(load_image(path), self.transform), int(label)

    def __getitem__(self, i: int):
        return self._safe(self._get, i)
