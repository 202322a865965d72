"""``mae partial-ft --blocks K``: fine-tune the last K Transformer blocks, freeze the rest (paper Fig. 9).

- ``K = 0`` is exactly the linear probe: same model, head (BatchNorm1d + Linear), LARS recipe and config keys
  as ``mae linprobe`` (:class:`~mae.stages.linprobe.LinprobeConfig`, including ``cached_features``); with
  ``--reuse DIR`` the result of that ``mae linprobe`` in DIR is copied once its settings, init and data are
  checked to be the same (the study does this).
- ``K > 0`` follows the fine-tuning recipe (the paper: "follows the setting in Table 9 except for the number of
  epochs"): :class:`~mae.stages.finetune.FinetuneConfig` keys, AdamW with layer-wise lr decay, mixup/cutmix,
  RandAugment, global average pooling + ``fc_norm``. Trainable: ``blocks[-K:]``, the final norm (``norm`` or
  ``fc_norm``) and the head; everything else has ``requires_grad=False`` and is not given to the optimizer.
  Drop path is disabled in the frozen blocks (they act as a fixed feature extractor).
- ``K = depth`` is exactly full fine-tuning: the stem (patch embedding, cls token, position table) trains too.
- ``--head-from DIR`` (K > 0; the study always passes the run's ``linprobe`` folder): the head starts as the
  trained linear probe (``DIR/head.safetensors``, its BatchNorm folded in) instead of a new head of std
  ``head_init_std``. Tuning K blocks then starts from the K = 0 result, and a short schedule cannot end below
  it for want of a trained head: with a new head of std 2e-5 and a few toy epochs, K = 1 landed far below the
  probe it contains (12.7 vs 18.1 %), a protocol artefact rather than the paper's Fig. 9. (The paper, App. A.1,
  instead sweeps the schedule per K and keeps the best.) The claims report a K = 1 below K = 0 as
  ``protocol invalid`` (:mod:`mae.report.claims`).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch.nn as nn

from mae.config import add_common_arguments, config_from_args
from mae.engine import is_main_process
from mae.errors import UserError
from mae.stages import classification, finetune, linprobe

TRAINABLE_TAIL = ("norm.", "fc_norm.", "head.")


def _same_path(recorded: str | None, given: str | None) -> bool:
    """The recorded and the given path name one file (``a/b`` and ``/abs/a/b`` are the same when both exist)."""
    if recorded is None or given is None:
        return recorded == given
    try:
        return recorded == given or os.path.samefile(recorded, given)
    except OSError:
        return False


def changed_inputs(old: dict, path: Path, init_path: str | None, data: str | os.PathLike) -> str | None:
    """Why the result ``old`` (read from ``path``) was not computed from this init and data; None if it was."""
    for key, value in (("init_path", str(init_path) if init_path else None), ("data", str(data))):
        if not _same_path(old.get(key), value):
            return f"{path} was computed with {key}={old.get(key)!r}, now {key}={value!r}"
    return None


def reuse_result(
    source: str | Path,
    out_dir: str | Path,
    cfg: Any,
    *,
    evaluation: str,
    init_path: str | None,
    data: str | os.PathLike,
    extra: dict | None = None,
) -> dict:
    """Write the finished result in ``source`` (its metrics.json and predictions.npz) to ``out_dir`` as
    ``evaluation`` instead of computing it again — only if ``source`` was computed with exactly ``cfg`` (runtime
    keys aside), the same init and the same data. Partial fine-tuning with K = 0 *is* the linear probe (paper
    Fig. 9), so the study reuses the run's ``linprobe`` for it (a 90-epoch ImageNet probe at paper scale)."""
    import json

    from mae.engine import changed_setting, write_outputs
    from mae.utils.io import PER_IMAGE, read_per_image

    path = Path(source) / classification.METRICS_FILE
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"--reuse: cannot read {path} ({getattr(err, 'strerror', None) or err})") from None
    problem = changed_setting(old, cfg, path) or changed_inputs(old, path, init_path, data)
    if problem is not None:
        raise UserError(f"--reuse: {problem}")
    metrics = {**old, **(extra or {}), "eval": evaluation, "reused_from": str(source)}
    if is_main_process():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_outputs(out_dir, metrics, read_per_image(Path(source) / PER_IMAGE))
    return metrics


def freeze_for_blocks(model: nn.Module, blocks: int) -> None:
    """Train only the last ``blocks`` blocks + final norm + head of a timm ViT; every block: everything (the
    stem too, as in full fine-tuning)."""
    depth = len(model.blocks)
    if not 0 <= blocks <= depth:
        raise UserError(f"--blocks: must be in 0..{depth} for this encoder, got {blocks}")
    if blocks == depth:
        classification.freeze_all_but(model, lambda name: True)
        return
    first = depth - blocks
    trainable_prefixes = tuple(f"blocks.{i}." for i in range(first, depth)) + TRAINABLE_TAIL
    classification.freeze_all_but(model, lambda name: name.startswith(trainable_prefixes))
    for block in list(model.blocks)[:first]:
        for attr in ("drop_path1", "drop_path2", "drop_path"):
            if hasattr(block, attr):
                setattr(block, attr, nn.Identity())


def probe_of(probe_dir: str, init: str | None, data: str) -> dict:
    """``{dir, top1}`` of the finished probe in ``probe_dir``, checked to be of the same init and data."""
    import json
    from pathlib import Path

    path = Path(probe_dir) / classification.METRICS_FILE
    try:
        probe = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"--head-from: cannot read {path} ({getattr(err, 'strerror', None) or err})") from None
    problem = changed_inputs(probe, path, init, data)
    if problem is not None:
        raise UserError(f"--head-from: {problem}")
    return {"dir": str(probe_dir), "top1": probe.get("top1")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    classification.add_init_arguments(parser)
    parser.add_argument(
        "--blocks",
        type=int,
        required=True,
        metavar="K",
        help="number of last Transformer blocks to fine-tune (0 = linear probing)",
    )
    parser.add_argument(
        "--head-from",
        metavar="DIR",
        help="K > 0: start the head from the trained probe of a finished `mae linprobe` of the "
        "same init and data (DIR/head.safetensors) instead of a new head",
    )
    parser.add_argument(
        "--reuse",
        metavar="DIR",
        help="K = 0 only: the output folder of a finished `mae linprobe` with the same settings, "
        "init and data; its result is copied instead of probing again (checked)",
    )


def run(args: argparse.Namespace) -> dict:
    """Run the evaluation; returns the metrics (also in ``out/metrics.json``)."""
    started = time.perf_counter()
    if args.blocks < 0:
        raise UserError(f"--blocks: must be >= 0, got {args.blocks}")
    if args.reuse is not None and args.blocks != 0:
        raise UserError(f"--reuse: only for --blocks 0 (the linear probe), got --blocks {args.blocks}")
    if args.head_from is not None and args.blocks == 0:
        raise UserError("--head-from: only for --blocks K > 0 (K = 0 is the probe itself: use --reuse)")
    if args.blocks == 0:
        cfg = config_from_args(linprobe.LinprobeConfig, args)
        if args.reuse is not None:
            return reuse_result(
                args.reuse,
                args.out,
                cfg,
                evaluation="partial_ft-0",
                init_path=args.init,
                data=args.data,
                extra={"blocks": 0, "recipe": "linprobe"},
            )
        device = classification.engine_device(cfg)
        task, _, name, report, extra = linprobe.build_probe_task(cfg, args.data, args.init, device)
        recipe = "linprobe"
    else:
        cfg = config_from_args(finetune.FinetuneConfig, args)
        meta = classification.dataset_info(args.data)
        num_classes, img_size = int(meta["num_classes"]), int(cfg.img_size or meta["img_size"])
        device = classification.engine_device(cfg)
        model, name, report = finetune.build_finetune_model(cfg, args.init, num_classes, img_size)
        head_from = None
        if args.head_from is not None:
            head_from = probe_of(args.head_from, args.init, args.data)
            model.head = linprobe.read_probe_head(args.head_from, model.embed_dim, num_classes, cfg.global_pool)
        freeze_for_blocks(model, args.blocks)
        model.to(device)
        train_set, val_set, mixup = finetune.build_finetune_data(args.data, cfg, img_size, num_classes)
        task = finetune.FinetuneTask(model, cfg, train_set, val_set, device, mixup=mixup, smoothing=cfg.smoothing)
        extra = {
            "global_pool": cfg.global_pool,
            "eval_weights": "ema" if task.ema is not None else "live",
            "head_init": "probe" if head_from else "new",
            "head_from": head_from,
        }
        recipe = "finetune"
    extra.update({"blocks": args.blocks, "recipe": recipe})
    return classification.run_task(
        task,
        cfg,
        args.out,
        evaluation=f"partial_ft-{args.blocks}",
        init=classification.init_label(args),
        init_path=args.init,
        data=args.data,
        model_name=name,
        load_report=report,
        extra=extra,
        started=started,
    )


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0
