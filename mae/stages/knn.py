"""``mae knn``: weighted k-NN classification on frozen features — a cheap monitor, no training.

Features of the frozen encoder (cls token after the final norm, or ``global_pool=avg``) for train and val with
the evaluation transform; each val image takes the ``k`` most cosine-similar train images, which vote for their
class with weight ``exp(similarity / temperature)`` (k = 20, T = 0.07). Top-1/top-5 of the summed votes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mae.config import add_common_arguments, config_from_args, config_to_dict
from mae.engine import write_outputs
from mae.engine.precision import resolve
from mae.errors import UserError
from mae.stage_configs import KnnConfig
from mae.stages import classification


def knn_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted k-NN class scores: cosine similarity, the ``k`` nearest training samples vote for their class
    with weight ``exp(sim / temperature)``. Returns ``(N_query, num_classes)``."""
    if k < 1:
        raise UserError(f"k: must be >= 1, got {k}")
    if temperature <= 0:
        raise UserError(f"temperature: must be > 0, got {temperature}")
    bank = F.normalize(train_feats.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, query_feats.shape[0], chunk):
        q = F.normalize(query_feats[start : start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weight = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, dtype=weight.dtype)
        votes.scatter_add_(1, train_labels[idx], weight)
        out.append(votes)
    return torch.cat(out)


def knn_metrics(
    train_feats, train_labels, val_feats, val_labels, num_classes: int, k: int, temperature: float
) -> tuple[dict, dict]:
    """(metrics, per-image arrays) of the weighted k-NN classifier on the val features."""
    scores = knn_scores(train_feats, train_labels, val_feats, num_classes, k=k, temperature=temperature)
    n = max(int(val_labels.shape[0]), 1)
    per_image = classification.predictions_arrays(scores.argmax(1), val_labels)
    top1 = 100.0 * float((per_image["pred"] == per_image["target"]).sum()) / n
    return {"top1": top1, "top5": 100.0 * classification.topk_correct(scores, val_labels, ks=(5,))[5] / n}, per_image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    classification.add_init_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    """Run the evaluation; returns the metrics (also in ``out/metrics.json``)."""
    from mae.data import build_dataset
    from mae.data.transforms import eval_transform

    start = time.perf_counter()
    cfg = config_from_args(KnnConfig, args)
    meta = classification.dataset_info(args.data)
    num_classes, img_size = int(meta["num_classes"]), int(cfg.img_size or meta["img_size"])
    device = classification.engine_device(cfg)
    name = classification.resolve_model_name(cfg.model, args.init)
    torch.manual_seed(cfg.seed)
    model, report = classification.build_encoder(
        name, 0, global_pool=cfg.global_pool, img_size=img_size, init=args.init
    )
    model.to(device)
    feats = {}
    images, extract_s, compute_s = 0, 0.0, 0.0
    for split in ("train", "val"):
        dataset = build_dataset(args.data, split, eval_transform(img_size))
        t0 = time.perf_counter()
        *feats[split], rates = classification.extract_features(
            model,
            dataset,
            device,
            batch_size=cfg.batch_size,
            amp=cfg.amp,
            num_workers=cfg.num_workers,
            desc=f"knn features {split}",
        )
        extract_s += time.perf_counter() - t0
        compute_s += len(dataset) / rates["step_img_s"]
        images += len(dataset)
    (train_f, train_y), (val_f, val_y) = feats["train"], feats["val"]
    metrics, per_image = knn_metrics(train_f, train_y, val_f, val_y, num_classes, cfg.k, cfg.temperature)
    metrics.update(
        {
            "eval": "knn",
            "init": classification.init_label(args),
            "init_path": str(args.init) if args.init else None,
            "model": name,
            "k": cfg.k,
            "temperature": cfg.temperature,
            "global_pool": cfg.global_pool,
            "n_train": int(train_y.shape[0]),
            "n_val": int(val_y.shape[0]),
            "epochs": 0,
            "params": 0,
            "wall_s": time.perf_counter() - start,
            "img_s": images / max(extract_s, 1e-9),
            "step_img_s": images / max(compute_s, 1e-9),
            **resolve(cfg.amp, device).record(),
            "config": config_to_dict(cfg),
        }
    )
    if report is not None:
        metrics["init_report"] = {"loaded": report.get("loaded"), "missing": list(report.get("missing", []))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out, metrics, per_image)
    print(f"knn k={cfg.k} T={cfg.temperature}: top1 {metrics['top1']:.2f}  top5 {metrics['top5']:.2f}")
    return metrics


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0
