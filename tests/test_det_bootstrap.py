"""Bootstrap of COCO AP over val images (mae.stages.transfer_det): the multiset accumulation against pycocotools.

A small in-memory GT/DT set exercises what COCOeval's accumulate has to get right: several categories (one
with detections but no ground truth), images without ground truth, crowd regions (ignored matches),
duplicate detections and scores rounded to ties, within and across images.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

S = 32
IOU_TYPES = ("bbox", "segm")


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [S, S], "counts": rle["counts"].decode("ascii")}


def _box_mask(box, ellipse: bool) -> np.ndarray:
    x, y, w, h = box
    yy, xx = np.mgrid[:S, :S] + 0.5
    if ellipse:
        return ((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2 < 1
    return (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h)


def _box(rng, x=None, y=None, w=None, h=None, jitter=0):
    w = int(rng.integers(6, 14)) if w is None else w
    h = int(rng.integers(6, 14)) if h is None else h
    x = int(rng.integers(0, S - w)) if x is None else x
    y = int(rng.integers(0, S - h)) if y is None else y
    dx, dy, dw, dh = (int(v) for v in rng.integers(-jitter, jitter + 1, 4)) if jitter else (0, 0, 0, 0)
    w, h = max(2, w + dw), max(2, h + dh)
    return [float(min(max(x + dx, 0), S - w)), float(min(max(y + dy, 0), S - h)), float(w), float(h)]


def _dataset(seed: int = 0, n_images: int = 14):
    """(GT dataset dict, detections): categories 1-3 with GT, category 4 only detected; images 0-1 no GT."""
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3, 4)]}
    dets: list[dict] = []

    def det(image_id, cat, box, low):
        score = round(float(rng.uniform(low, low + 0.6)), 1)  # one decimal: plenty of ties
        dets.append(
            {
                "image_id": image_id,
                "category_id": cat,
                "bbox": box,
                "score": score,
                "segmentation": _rle(_box_mask(box, ellipse=bool(rng.random() < 0.7))),
            }
        )

    for j in range(n_images):
        image_id = 3 * j + 5
        gt["images"].append({"id": image_id, "height": S, "width": S, "file_name": f"{j}.png"})
        objects = [] if j < 2 else [(int(rng.integers(1, 4)), _box(rng)) for _ in range(int(rng.integers(1, 4)))]
        if j % 4 == 3:  # a crowd region, detected: its matches are ignored
            objects.append((1, _box(rng, w=14, h=14)))
        for k, (cat, box) in enumerate(objects):
            crowd = int(j % 4 == 3 and k == len(objects) - 1)
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": crowd,
                    "segmentation": _rle(_box_mask(box, ellipse=True)),
                }
            )
            for _ in range(1 + int(rng.random() < 0.4)):  # sometimes a duplicate detection
                if rng.random() < 0.85:
                    det(image_id, cat, _box(rng, *box, jitter=int(rng.integers(0, 3))), low=0.4)
        for _ in range(int(rng.integers(0, 3))):  # false positives, some of the GT-less category 4
            det(image_id, int(rng.integers(1, 5)), _box(rng), low=0.05)
    return gt, dets


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _cocoeval(gt: dict, dets: list[dict], iou_type: str):
    from pycocotools.cocoeval import COCOeval

    coco_gt = _coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _materialise(gt: dict, dets: list[dict], counts: np.ndarray):
    """The multiset ``counts`` (per image, in id order) as a dataset of its own: copy c of the image at position
    p gets id 100 * (p + 1) + c, so copies follow each other in id order."""
    ids = sorted(im["id"] for im in gt["images"])
    new_ids = {i: [100 * (p + 1) + c for c in range(int(counts[p]))] for p, i in enumerate(ids)}
    out = {**gt, "images": [dict(im, id=n) for im in gt["images"] for n in new_ids[im["id"]]], "annotations": []}
    for a in gt["annotations"]:
        for n in new_ids[a["image_id"]]:
            out["annotations"].append(dict(a, id=len(out["annotations"]) + 1, image_id=n))
    return out, [dict(d, image_id=n) for d in dets for n in new_ids[d["image_id"]]]


@pytest.fixture(scope="module")
def data():
    gt, dets = _dataset()
    keys = [(d["image_id"], d["category_id"], d["score"]) for d in dets]
    assert len(set(keys)) < len(keys), "the data should have tied scores within one image and category"
    assert any(a["iscrowd"] for a in gt["annotations"])
    return gt, dets


@pytest.mark.parametrize("iou_type", IOU_TYPES)
def test_identity_multiset_is_cocoeval_ap(data, iou_type):
    from mae.stages.transfer_det import multiset_ap

    gt, dets = data
    ev = _cocoeval(gt, dets, iou_type)
    assert 0.05 < ev.stats[0] < 0.95
    ap = multiset_ap(ev, np.ones(len(ev.params.imgIds)))
    assert ap.shape == (1,) and abs(ap[0] - ev.stats[0]) < 1e-9


@pytest.mark.parametrize("iou_type", IOU_TYPES)
def test_multiset_is_cocoeval_on_the_copied_images(data, iou_type):
    from mae.report.stats import bootstrap_counts
    from mae.stages.transfer_det import multiset_ap

    gt, dets = data
    ev = _cocoeval(gt, dets, iou_type)
    n = len(ev.params.imgIds)
    last_twice = np.ones(n)
    last_twice[-1] = 2  # the last image once more, under a new id after every other
    cases = np.vstack([last_twice, bootstrap_counts(n)[:3]])
    got = multiset_ap(ev, cases)
    for counts, ap in zip(cases, got):
        want = _cocoeval(*_materialise(gt, dets, counts), iou_type).stats[0]
        assert abs(ap - want) < 1e-9
    no_gt = np.zeros(n)
    no_gt[:2] = [1, 3]  # only the images without ground truth: AP undefined
    assert np.isnan(multiset_ap(ev, no_gt)).all()


def test_replicates_are_the_canonical_resamples_of_image_ids(data):
    from mae.report.stats import N_BOOT, bootstrap_indices, percentile_interval
    from mae.stages.transfer_det import coco_evaluate, multiset_ap

    gt, dets = data
    image_ids = [im["id"] for im in gt["images"]][::-1]  # evaluation order != COCO's sorted order
    scores = coco_evaluate(_coco(gt), dets, "bbox", image_ids)
    assert set(scores) == {"ap", "ap50", "ap75"}
    assert scores.boot.shape == (N_BOOT,) and np.isfinite(scores.boot).all()
    lo, hi = percentile_interval(scores.boot)
    assert lo < scores["ap"] < hi
    ev = _cocoeval(gt, dets, "bbox")
    position = {i: p for p, i in enumerate(ev.params.imgIds)}
    for b in (0, 1, N_BOOT - 1):
        drawn = [position[image_ids[i]] for i in bootstrap_indices(len(image_ids))[b]]
        counts = np.bincount(drawn, minlength=len(image_ids))
        assert scores.boot[b] == pytest.approx(100.0 * multiset_ap(ev, counts)[0], abs=1e-9)


def test_identical_detections_in_two_runs_give_identical_replicates(data):
    from mae.stages.transfer_det import coco_evaluate

    gt, dets = data
    ids = [im["id"] for im in gt["images"]]
    run_a = coco_evaluate(_coco(gt), dets, "segm", ids)
    run_b = coco_evaluate(_coco(gt), copy.deepcopy(dets), "segm", ids)
    assert run_a == run_b
    np.testing.assert_array_equal(run_a.boot, run_b.boot)
    fewer = coco_evaluate(_coco(gt), dets[::2], "segm", ids)  # another run: its replicates differ
    assert fewer["ap"] != run_a["ap"] and not np.array_equal(run_a.boot, fewer.boot)


def test_evaluate_reports_intervals_and_per_image_replicates(data):
    import torch

    from mae.report.stats import N_BOOT
    from mae.stages.transfer_det import DetectionTask

    gt, dets = data
    ids = [im["id"] for im in gt["images"]]
    task = DetectionTask.__new__(DetectionTask)  # evaluate() needs only these
    task.cfg, task.coco_gt, task.img_size = type("Cfg", (), {"eval_images": None}), _coco(gt), S
    task.model = torch.nn.Linear(1, 1)
    task.predict = lambda limit=None: (copy.deepcopy(dets), ids)
    metrics = task.evaluate()
    arrays = task.per_image()
    assert set(arrays) == {"ap_box_boot", "ap_mask_boot", "n_images"} and arrays["n_images"] == len(ids)
    for suffix in ("box", "mask"):
        boot = arrays[f"ap_{suffix}_boot"]
        assert boot.dtype == np.float32 and boot.shape == (N_BOOT,)
        assert 0.0 <= metrics[f"ap_{suffix}_lo"] < metrics[f"ap_{suffix}"] < metrics[f"ap_{suffix}_hi"] <= 100.0
        assert np.nanmean(boot) == pytest.approx(metrics[f"ap_{suffix}"], abs=5.0)  # percent, like the metric
    task.predict = lambda limit=None: ([], ids)  # no detections: AP 0 on every resample
    metrics = task.evaluate()
    assert metrics["ap_box"] == metrics["ap_box_lo"] == metrics["ap_box_hi"] == 0.0
    assert np.all(task.per_image()["ap_mask_boot"] == 0.0)
