"""Transfer: detection (Mask R-CNN + COCOeval), semantic segmentation (mIoU), classification transfer.

The fixture is a hand-written prepared dataset in the ARCHITECTURE format: a few 32 px images with coloured
rectangles and disks, their semantic masks and COCO instances with RLE masks.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

S = 32
CLASSES = ["rect", "disk"]


def _draw(rng: np.random.Generator, n: int):
    from pycocotools import mask as mask_utils

    yy, xx = np.mgrid[:S, :S]
    images = (rng.random((n, S, S, 3)) * 60).astype(np.uint8)
    semseg = np.zeros((n, S, S), np.uint8)
    labels = np.zeros(n, np.int64)
    anns: list[list[dict]] = []
    for i in range(n):
        objs = []
        for k in range(2):
            cls = int(rng.integers(0, 2))
            size = int(rng.integers(8, 14))
            x0 = 2 + 16 * k + int(rng.integers(0, 2))
            y0 = int(rng.integers(2, S - size - 1))
            if cls == 0:
                m = (xx >= x0) & (xx < x0 + size) & (yy >= y0) & (yy < y0 + size)
            else:
                r = size / 2
                m = (xx + 0.5 - x0 - r) ** 2 + (yy + 0.5 - y0 - r) ** 2 < r * r
            images[i][m] = (230, 40, 40) if cls == 0 else (40, 220, 60)
            semseg[i][m] = cls + 1
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            objs.append(
                {
                    "category_id": cls + 1,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": float(m.sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": [S, S], "counts": rle["counts"].decode("ascii")},
                }
            )
        if i == 0:  # one ignored region
            semseg[i][:2, :2] = 255
        labels[i] = objs[0]["category_id"] - 1
        anns.append(objs)
    return images, semseg, labels, anns


def write_fixture(root, n_train: int = 12, n_val: int = 6, seed: int = 0):
    """A prepared dataset folder: meta.json, *_images.npy, *_labels.npy, *_semseg.npy, *_instances.json."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        images, semseg, labels, anns = _draw(rng, n)
        np.save(root / f"{split}_images.npy", images)
        np.save(root / f"{split}_semseg.npy", semseg)
        np.save(root / f"{split}_labels.npy", labels)
        coco = {
            "images": [],
            "annotations": [],
            "info": {"description": "test"},
            "licenses": [],
            "categories": [{"id": c + 1, "name": name, "supercategory": "shape"} for c, name in enumerate(CLASSES)],
        }
        for i, objs in enumerate(anns):
            coco["images"].append({"id": i + 1, "index": i, "file_name": f"{split}/{i}.png", "height": S, "width": S})
            for a in objs:
                coco["annotations"].append({**a, "id": len(coco["annotations"]) + 1, "image_id": i + 1})
        (root / f"{split}_instances.json").write_text(json.dumps(coco))
    meta = {
        "name": "fixture",
        "kind": "shapes",
        "img_size": S,
        "classes": CLASSES,
        "num_classes": len(CLASSES),
        "splits": {"train": n_train, "val": n_val},
        "seed": seed,
        "has_instances": True,
        "has_semseg": True,
        "ignore_index": 255,
        "seg_classes": ["background"] + CLASSES,
        "format_version": 1,
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("transfer") / "fixture")


def _args(data, out, *sets, init=None):
    return argparse.Namespace(
        data=str(data), out=str(out), config=None, overrides=list(sets), device="cpu", init=init, scratch=init is None
    )


TINY = ["epochs=1", "batch_size=4", "warmup_epochs=0", "log_every=1", "max_steps=3"]


# ------------------------------------------------------------------------------------------------ backbone


def test_simple_feature_pyramid_strides_and_shapes():
    from mae.models import create_encoder
    from mae.stages.backbone import ViTPyramidBackbone

    vit = create_encoder("mae_vit_micro_patch4", num_classes=0, global_pool="token")
    bb = ViTPyramidBackbone(vit, 16, (4.0, 2.0, 1.0, 0.5), top_pool=True)
    feats = bb(torch.randn(2, 3, S, S))
    assert bb.strides == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert all(f.shape[1] == 16 for f in feats.values())
    # smaller inputs are padded to the encoder's canvas and the maps cropped back
    small = bb(torch.randn(1, 3, 24, 32))
    assert tuple(small["2"].shape[-2:]) == (6, 8)


def test_backbone_loads_mae_checkpoint_and_supervised_model(tmp_path):
    from mae.models import create_encoder, create_mae
    from mae.stages.backbone import build_vit

    mae = create_mae("mae_vit_micro_patch4")
    torch.save({"model": mae.state_dict(), "config": {"model": "mae_vit_micro_patch4"}}, tmp_path / "pre.pt")
    vit, name, report = build_vit(None, str(tmp_path / "pre.pt"), S)
    assert name == "mae_vit_micro_patch4"
    assert torch.equal(vit.blocks[0].attn.qkv.weight, mae.blocks[0].attn.qkv.weight)
    ft = create_encoder("mae_vit_micro_patch4", num_classes=10, global_pool="avg")
    torch.save({"model": ft.state_dict(), "config": {"model": "mae_vit_micro_patch4"}}, tmp_path / "model.pt")
    vit2, _, _ = build_vit(None, str(tmp_path / "model.pt"), S)
    assert torch.equal(vit2.blocks[-1].mlp.fc2.weight, ft.blocks[-1].mlp.fc2.weight)


# ----------------------------------------------------------------------------------------------- detection


def test_coco_evaluate_scores_predictions_not_ground_truth(data_dir):
    """COCOeval on perfect, shifted and empty predictions built from the fixture's val annotations."""
    from mae.data import build_detection_dataset
    from mae.stages.transfer_det import coco_evaluate, detections_to_coco

    ds = build_detection_dataset(data_dir, "val")
    outputs, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        n = len(t["labels"])
        outputs.append(
            {
                "boxes": t["boxes"],
                "labels": t["labels"],
                "scores": torch.linspace(0.9, 0.8, n),
                "masks": t["masks"][:, None].float(),
            }
        )
        ids.append(t["image_id"])
    perfect = detections_to_coco(outputs, ids, ds.label_to_cat_id)
    assert len(perfect) == sum(len(o["labels"]) for o in outputs)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in perfect)
    assert coco_evaluate(ds.coco, perfect, "bbox", ids)["ap"] == pytest.approx(100.0)
    assert coco_evaluate(ds.coco, perfect, "segm", ids)["ap"] == pytest.approx(100.0)
    # boxes shifted by 6 px: IoU well below 0.5 for the small objects -> AP drops
    shifted = [dict(r, bbox=[r["bbox"][0] + 6, r["bbox"][1] + 6, *r["bbox"][2:]]) for r in perfect]
    res = coco_evaluate(ds.coco, shifted, "bbox", ids)
    assert 0.0 <= res["ap"] < 50.0
    # wrong classes: nothing matches
    wrong = [dict(r, category_id=3 - r["category_id"]) for r in perfect]
    assert coco_evaluate(ds.coco, wrong, "bbox", ids)["ap"] == 0.0
    assert coco_evaluate(ds.coco, [], "segm", ids) == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}


def test_transfer_det_trains_and_evaluates_real_predictions(data_dir, tmp_path, monkeypatch):
    from mae.stages import transfer_det

    seen = {}
    real = transfer_det.coco_evaluate

    def spy(coco_gt, results, iou_type, image_ids):
        seen.setdefault(iou_type, (list(results), list(image_ids)))
        return real(coco_gt, results, iou_type, image_ids)

    monkeypatch.setattr(transfer_det, "coco_evaluate", spy)
    predicted = {}
    real_predict = transfer_det.DetectionTask.predict

    def predict_spy(self, limit=None):
        out = real_predict(self, limit)
        predicted["results"] = out[0]
        return out

    monkeypatch.setattr(transfer_det.DetectionTask, "predict", predict_spy)
    out = tmp_path / "det"
    args = _args(data_dir, out, *TINY, "score_thresh=0.0", "out_channels=16", "box_head_dim=32", "mask_head_dim=16")
    assert transfer_det.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in transfer_det.METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["epochs"] == 1 and metrics["eval"] == "transfer_det" and metrics["init"] == "scratch"
    # what COCOeval scored is exactly the model's prediction list, on every val image
    assert seen["bbox"][0] == predicted["results"] and seen["segm"][0] == predicted["results"]
    assert sorted(seen["bbox"][1]) == list(range(1, 7))
    assert metrics["detections"] == len(predicted["results"]) > 0
    gt_boxes = {tuple(a["bbox"]) for a in json.loads((data_dir / "val_instances.json").read_text())["annotations"]}
    assert not all(tuple(r["bbox"]) in gt_boxes for r in predicted["results"])


def test_det_config_rejects_bad_values():
    from mae.config import load_config
    from mae.errors import UserError
    from mae.stages.transfer_det import DetConfig

    with pytest.raises(UserError, match="out_channels"):
        load_config(DetConfig, None, ["out_channels=0"])
    with pytest.raises(UserError, match="unknown key 'anchors'"):
        load_config(DetConfig, None, ["anchors=3"])


# -------------------------------------------------------------------------------------------- segmentation


def test_confusion_matrix_and_miou_by_hand():
    from mae.stages.transfer_seg import confusion_matrix, segmentation_metrics

    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    cm = confusion_matrix(target.clone(), target, 3)
    assert cm.tolist() == [[2, 0, 0], [0, 3, 0], [0, 0, 2]]
    assert segmentation_metrics(cm)["miou"] == pytest.approx(100.0)
    assert segmentation_metrics(cm)["pixel_acc"] == pytest.approx(100.0)
    # one class-1 pixel predicted as 0, the ignored pixel's prediction does not count
    pred = torch.tensor([[0, 0, 0, 1], [2, 2, 0, 1]])
    m = segmentation_metrics(confusion_matrix(pred, target, 3))
    # IoU0 = 2/3, IoU1 = 2/3, IoU2 = 1 -> mIoU = 7/9; pixel acc 6/7
    assert m["miou"] == pytest.approx(700 / 9)
    assert m["pixel_acc"] == pytest.approx(600 / 7)
    assert m["iou_per_class"] == pytest.approx([200 / 3, 200 / 3, 100.0])
    # a class absent from prediction and ground truth is left out (nanmean), not counted as 0 or 100
    m4 = segmentation_metrics(confusion_matrix(pred, target, 4))
    assert m4["miou"] == pytest.approx(700 / 9) and m4["iou_per_class"][3] is None


def test_transfer_seg_trains_and_reports_miou(data_dir, tmp_path):
    from mae.stages import transfer_seg

    out = tmp_path / "seg"
    assert transfer_seg.main(_args(data_dir, out, *TINY, "out_channels=16")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 100.0 and 0.0 <= metrics["pixel_acc"] <= 100.0
    assert len(metrics["iou_per_class"]) == 3 and metrics["eval"] == "transfer_seg"
    assert metrics["eval_images"] == 6


# ------------------------------------------------------------------------------------------ classification


def test_transfer_cls_from_mae_checkpoint(data_dir, tmp_path):
    from mae.models import create_mae
    from mae.stages import transfer_cls

    mae = create_mae("mae_vit_micro_patch4")
    ckpt = tmp_path / "pre.pt"
    torch.save({"model": mae.state_dict(), "config": {"model": "mae_vit_micro_patch4"}}, ckpt)
    out = tmp_path / "cls"
    args = _args(data_dir, out, *TINY, "mixup=0", "cutmix=0", "auto_augment=null", "reprob=0", init=str(ckpt))
    assert transfer_cls.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["top1"] <= 100.0
    assert metrics["eval"] == "transfer_cls" and metrics["dataset"] == "fixture" and metrics["init"] == "mae"


def test_cli_registry_knows_transfer_commands(data_dir, tmp_path, capsys):
    from mae.cli import main

    rc = main(
        ["transfer-seg", "--data", str(data_dir), "--out", str(tmp_path / "x"), "--scratch", "--set", "layer_decay=2"]
    )
    assert rc == 2 and "layer_decay" in capsys.readouterr().err


def test_per_image_iou_counts_sum_to_the_confusion_matrix_miou():
    """Per-image intersections/unions (saved for the bootstrap) give exactly the confusion matrix's mIoU."""
    from mae.report import stats
    from mae.stages.transfer_seg import IGNORE_INDEX, confusion_matrix, per_image_iou_counts, segmentation_metrics

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randint(0, 5, (7, 8, 8), generator=g), torch.randint(0, 5, (7, 8, 8), generator=g)
    target[0, 0, :] = IGNORE_INDEX
    inter, union = per_image_iou_counts(pred, target, 5)
    assert inter.shape == union.shape == (7, 5) and (inter <= union).all()
    expected = segmentation_metrics(confusion_matrix(pred, target, 5))["miou"]
    assert stats.miou(inter.numpy(), union.numpy()) == pytest.approx(expected)
