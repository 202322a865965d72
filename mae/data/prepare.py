"""`mae prepare-data`: generate a built-in dataset (shapes, shapes2), convert scikit-learn's digits, or
describe a real dataset by path (imagefolder, coco, ade20k: only ``meta.json`` is written; an image folder
without train/ and val/ gets a seeded split, and one without class folders has no labels).

The output folder is produced in a temporary folder beside the target and renamed into place at the end,
so an interrupted or failed run never leaves a half-written dataset (an existing one is replaced only on
success).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mae.data import synthetic
from mae.data.datasets import FOLDER_KINDS, KINDS
from mae.errors import UserError
from mae.utils.io import atomic_write_json, current_umask

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
SPLIT_IDS = {"train": 0, "val": 1}


@contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on error it is removed (and the
    temp folders of earlier runs that died are removed first: one writer per ``out``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out exists and is not a folder: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*"):  # left by a run that died (a SIGBUS on a full disk, a kill)
        if stale.is_dir() and stale.suffix in (".tmp", ".old"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        umask = current_umask()
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp/mkstemp create private entries: give them the usual modes
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            old.rmdir()
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":"), sort_keys=True))


# ----------------------------------------------------------------------------------------------------------
# built-in synthetic domains


def _write_builtin_split(
    tmp: Path, kind: str, split: str, n: int, img_size: int, seed: int, classes: list[str], style: synthetic.Style
) -> None:
    from tqdm import tqdm

    bs = synthetic.batch_size_for(img_size)
    images = _NpyWriter(tmp / f"{split}_images.npy", (n, img_size, img_size, 3))
    semseg = _NpyWriter(tmp / f"{split}_semseg.npy", (n, img_size, img_size))
    labels = np.zeros(n, np.int64)
    img_recs, anns = [], []
    with images, semseg, tqdm(total=n, desc=f"{kind}/{split}", unit="img", mininterval=1.0) as bar:
        for bi in range(math.ceil(n / bs)):
            rng = np.random.default_rng([seed, SPLIT_IDS[split], bi])
            batch = synthetic.generate_batch(rng, bs, img_size, kind, len(classes), style)
            lo, hi = bi * bs, min(n, (bi + 1) * bs)  # full batches are drawn, then cut: prefix-stable in n
            k = hi - lo
            images.write(batch.images[:k])
            semseg.write(batch.semseg[:k])
            labels[lo:hi] = batch.labels[:k]
            for j in range(k):
                idx = lo + j
                img_recs.append(
                    {
                        "id": idx + 1,
                        "index": idx,
                        "file_name": f"{split}/{idx:07d}.png",
                        "width": img_size,
                        "height": img_size,
                    }
                )
                for a in batch.instances[j]:
                    anns.append({"id": len(anns) + 1, "image_id": idx + 1, **a})
            bar.update(k)
    np.save(tmp / f"{split}_labels.npy", labels)
    coco = {
        "info": {"description": f"mae built-in dataset '{kind}' ({split})", "version": str(FORMAT_VERSION)},
        "licenses": [],
        "images": img_recs,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(classes)],
    }
    _dump_json(tmp / f"{split}_instances.json", coco)


class _NpyWriter:
    """A uint8 ``.npy`` file of a known shape written batch by batch through an ordinary file (not a memory map,
    where a disk that fills up during the writes — another process — ends the process with SIGBUS: here it is an
    ``OSError``, i.e. one named line, and the temp folder is removed)."""

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path, self.shape, self.rows = path, shape, 0

    def __enter__(self) -> _NpyWriter:
        self.fh = open(self.path, "wb")  # noqa: SIM115 - closed in __exit__
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_1_0(self.fh, header)
        return self

    def write(self, rows: np.ndarray) -> None:
        try:
            self.fh.write(np.ascontiguousarray(rows, dtype=np.uint8).tobytes())
        except OSError as err:  # the disk filled up after the free-space check (another writer)
            raise UserError(f"cannot write {self.path}: {err.strerror or err}") from None
        self.rows += len(rows)

    def __exit__(self, *exc) -> None:
        self.fh.close()
        if exc[0] is None and self.rows != self.shape[0]:
            raise RuntimeError(f"{self.path}: wrote {self.rows} of {self.shape[0]} rows")


def _check_free_space(out: Path, array_bytes: int) -> None:
    """Refuse up front when the arrays will not fit (with a margin for the instance annotations (COCO json) and the
    old copy kept until the swap): a disk that fills up anyway during the writes is an ``OSError`` (one line)."""
    parent = next((p for p in [Path(out).absolute(), *Path(out).absolute().parents] if p.exists()), Path("/"))
    need = int(array_bytes * 1.5) + (1 << 20)
    free = shutil.disk_usage(parent).free
    if free < need:
        raise UserError(
            f"not enough free space for {out}: about {need / 2**20:.0f} MiB needed, "
            f"{free / 2**20:.0f} MiB free in {parent}"
        )


def prepare_builtin(
    out: Path,
    kind: str,
    img_size: int = 32,
    n_train: int = 10000,
    n_val: int = 2000,
    seed: int = 0,
    num_classes: int | None = None,
    name: str | None = None,
    max_objects: int | None = None,
    max_clutter: int | None = None,
    difficulty: str = "hard",
) -> dict:
    """Generate the built-in dataset ``kind`` into ``out`` at a named difficulty; returns its meta."""
    if max_objects is not None and not 1 <= max_objects <= 8:
        raise UserError(f"--max-objects must be in [1, 8], got {max_objects}")
    if max_clutter is not None and not 0 <= max_clutter <= 16:
        raise UserError(f"--max-clutter must be in [0, 16], got {max_clutter}")
    if difficulty not in synthetic.DIFFICULTIES:
        raise UserError(f"--difficulty must be one of {', '.join(synthetic.DIFFICULTIES)}, got '{difficulty}'")
    style = synthetic.make_style(kind, max_objects, max_clutter, difficulty)
    n_fam = len(synthetic.FAMILIES[kind])
    num_classes = n_fam if num_classes is None else num_classes
    if not 2 <= num_classes <= n_fam:
        raise UserError(f"--num-classes must be in [2, {n_fam}] for kind {kind}, got {num_classes}")
    if img_size < 8:
        raise UserError(f"--img-size must be >= 8, got {img_size}")
    if n_train < 1 or n_val < 1:
        raise UserError(f"--n-train and --n-val must be >= 1, got {n_train}, {n_val}")
    classes = synthetic.class_names(kind, num_classes)
    _check_free_space(out, (n_train + n_val) * img_size * img_size * 4)  # images (3 B/px) + semantic masks
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        counts = {}
        for split, n in (("train", n_train), ("val", n_val)):
            _write_builtin_split(tmp, kind, split, n, img_size, seed, classes, style)
            counts[split] = np.bincount(np.load(tmp / f"{split}_labels.npy"), minlength=num_classes).tolist()
        meta = {
            "name": name or Path(out).name,
            "kind": kind,
            "img_size": img_size,
            "classes": classes,
            "num_classes": num_classes,
            "splits": {"train": n_train, "val": n_val},
            "seed": seed,
            "has_semseg": True,
            "has_instances": True,
            "seg_classes": ["background"] + classes,
            "ignore_index": 255,
            "class_counts": counts,
            "difficulty": difficulty,
            "style": style.__dict__,
            "format_version": FORMAT_VERSION,
        }
        atomic_write_json(tmp / "meta.json", meta)
    log.info("generated %s (%d+%d images, %d px) in %.1f s", out, n_train, n_val, img_size, time.perf_counter() - t0)
    return meta


# ----------------------------------------------------------------------------------------------------------
# digits: scikit-learn's 8×8 handwritten digits (shipped inside the package, no download)


def prepare_digits(
    out: Path, img_size: int = 32, seed: int = 0, val_fraction: float = 0.2, name: str | None = None
) -> dict:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    if img_size < 8:
        raise UserError(f"--img-size must be >= 8, got {img_size}")
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (N,1,8,8) in [0,1]
    with torch.no_grad():
        up = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    gray = np.clip(up[:, 0].numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=3)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in range(10):  # stratified split
        idx = rng.permutation(np.nonzero(y == c)[0])
        k = int(round(len(idx) * val_fraction))
        val_idx += idx[:k].tolist()
        train_idx += idx[k:].tolist()
    train_idx = rng.permutation(np.asarray(train_idx))
    val_idx = np.sort(np.asarray(val_idx))
    classes = [str(c) for c in range(10)]
    with atomic_dir(out) as tmp:
        for split, idx in (("train", train_idx), ("val", val_idx)):
            np.save(tmp / f"{split}_images.npy", np.ascontiguousarray(images[idx]))
            np.save(tmp / f"{split}_labels.npy", y[idx])
        meta = {
            "name": name or Path(out).name,
            "kind": "digits",
            "img_size": img_size,
            "classes": classes,
            "num_classes": 10,
            "splits": {"train": int(len(train_idx)), "val": int(len(val_idx))},
            "seed": seed,
            "has_semseg": False,
            "has_instances": False,
            "source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits, 8x8)",
            "val_fraction": val_fraction,
            "format_version": FORMAT_VERSION,
        }
        atomic_write_json(tmp / "meta.json", meta)
    return meta


# ----------------------------------------------------------------------------------------------------------
# real datasets by path


def prepare_folder(
    out: Path,
    kind: str,
    root: str | os.PathLike | None,
    img_size: int = 224,
    verify: bool = False,
    skip_bad: bool = False,
    num_classes: int | None = None,
    name: str | None = None,
    unlabelled: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """Describe a dataset by path. An image folder is ``root/{train,val}/<class>/``, ``root/<class>/`` (a split
    is made: ``val_fraction`` of each class, seeded by ``seed``) or images without class folders (no labels;
    also with ``unlabelled``): :func:`mae.data.adapters.describe_imagefolder`."""
    from mae.data import adapters, dense_adapters

    if not root:
        raise UserError(f"--root is required for kind {kind}")
    if unlabelled and kind != "imagefolder":
        raise UserError(f"--unlabelled is for kind imagefolder, not {kind}")
    root = Path(root)
    if kind == "imagefolder":
        meta = adapters.describe_imagefolder(root, img_size, verify, skip_bad, unlabelled, val_fraction, seed)
    elif kind == "coco":
        meta = dense_adapters.describe_coco(root, img_size, verify, skip_bad)
    else:
        meta = dense_adapters.describe_ade20k(root, img_size, verify, skip_bad, num_classes)
    meta = {"name": name or Path(out).name, **meta, "format_version": FORMAT_VERSION}
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / "meta.json", meta)
    return meta


# ----------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", required=True, choices=KINDS, help="dataset kind")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically on success)")
    parser.add_argument("--root", help="dataset root (imagefolder, coco, ade20k)")
    parser.add_argument("--img-size", type=int, default=None, help="image side (default 32; 224 for folder kinds)")
    parser.add_argument("--n-train", type=int, default=10000, help="built-in: training images")
    parser.add_argument("--n-val", type=int, default=2000, help="built-in: validation images")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="generator seed / split seed (digits, an image folder without train/ and val/)",
    )
    parser.add_argument(
        "--num-classes", type=int, default=None, help="built-in: first C shape families; ade20k: classes"
    )
    parser.add_argument(
        "--max-objects", type=int, default=None, help="built-in: at most N objects per image (difficulty)"
    )
    parser.add_argument("--max-clutter", type=int, default=None, help="built-in: at most N background distractors")
    parser.add_argument(
        "--difficulty",
        default="hard",
        help="built-in: clean (one object, plain or striped, no distractors: the studies' data), easy (one textured "
        "object, no distractors) or hard (up to 4 occluding objects in clutter); docs/calibration.md",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="digits, an image folder without train/ and val/: validation fraction of each class",
    )
    parser.add_argument(
        "--unlabelled",
        action="store_true",
        help="imagefolder: every image below --root, without labels (sub-folders are not classes)",
    )
    parser.add_argument("--verify", action="store_true", help="folder kinds: decode every image now")
    parser.add_argument("--skip-bad", action="store_true", help="folder kinds: leave out bad images (count logged)")
    parser.add_argument("--name", default=None, help="dataset name in meta.json (default: --out folder name)")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    if args.img_size is not None and args.img_size < 8:  # 0 is not "the default"
        raise UserError(f"--img-size must be >= 8, got {args.img_size}")
    if args.kind in FOLDER_KINDS:
        meta = prepare_folder(
            out,
            args.kind,
            args.root,
            args.img_size or 224,
            args.verify,
            args.skip_bad,
            args.num_classes,
            args.name,
            args.unlabelled,
            args.val_fraction,
            args.seed,
        )
    else:
        if args.root:
            raise UserError(f"--root is not used by kind {args.kind}")
        if args.kind == "digits":
            meta = prepare_digits(out, args.img_size or 32, args.seed, args.val_fraction, args.name)
        else:
            meta = prepare_builtin(
                out,
                args.kind,
                args.img_size or 32,
                args.n_train,
                args.n_val,
                args.seed,
                args.num_classes,
                args.name,
                args.max_objects,
                args.max_clutter,
                args.difficulty,
            )
    classes = f"{meta['num_classes']} classes" if meta.get("labelled", True) else "no labels"
    print(f"wrote {out} (kind {meta['kind']}, {classes}, splits {meta['splits']})")
    return 0
