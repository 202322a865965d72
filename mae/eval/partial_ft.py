"""``mae partial-ft --blocks K``: fine-tune the last K Transformer blocks, freeze the rest (paper Fig. 9).

- ``K = 0`` is exactly the linear probe: same model, head (BatchNorm1d + Linear), LARS recipe and config keys
  as ``mae linprobe`` (:class:`~mae.eval.linprobe.LinprobeConfig`, including ``cached_features``); with
  ``--reuse DIR`` the result of that ``mae linprobe`` in DIR is copied once its settings, init and data are
  checked to be the same (the study does this).
- ``K > 0`` follows the fine-tuning recipe (the paper: "follows the setting in Table 9 except for the number of
  epochs"): :class:`~mae.eval.finetune.FinetuneConfig` keys, AdamW with layer-wise lr decay, mixup/cutmix,
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
import time

import torch.nn as nn

from mae.config import add_common_arguments, config_from_args
from mae.errors import UserError
from mae.eval import common, finetune, linprobe

TRAINABLE_TAIL = ("norm.", "fc_norm.", "head.")


def freeze_for_blocks(model: nn.Module, blocks: int) -> None:
    """Train only the last ``blocks`` blocks + final norm + head of a timm ViT; every block: everything (the
    stem too, as in full fine-tuning)."""
    depth = len(model.blocks)
    if not 0 <= blocks <= depth:
        raise UserError(f"--blocks: must be in 0..{depth} for this encoder, got {blocks}")
    if blocks == depth:
        common.freeze_all_but(model, lambda name: True)
        return
    first = depth - blocks
    trainable_prefixes = tuple(f"blocks.{i}." for i in range(first, depth)) + TRAINABLE_TAIL
    common.freeze_all_but(model, lambda name: name.startswith(trainable_prefixes))
    for block in list(model.blocks)[:first]:
        for attr in ("drop_path1", "drop_path2", "drop_path"):
            if hasattr(block, attr):
                setattr(block, attr, nn.Identity())


def probe_of(probe_dir: str, init: str | None, data: str) -> dict:
    """``{dir, top1}`` of the finished probe in ``probe_dir``, checked to be of the same init and data."""
    import json
    from pathlib import Path

    path = Path(probe_dir) / common.METRICS_FILE
    try:
        probe = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"--head-from: cannot read {path} ({getattr(err, 'strerror', None) or err})") from None
    problem = common.changed_inputs(probe, path, init, data)
    if problem is not None:
        raise UserError(f"--head-from: {problem}")
    return {"dir": str(probe_dir), "top1": probe.get("top1")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    common.add_init_arguments(parser)
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
            return common.reuse_result(
                args.reuse,
                args.out,
                cfg,
                evaluation="partial_ft-0",
                init_path=args.init,
                data=args.data,
                extra={"blocks": 0, "recipe": "linprobe"},
            )
        device = common.engine_device(cfg)
        task, _, name, report, extra = linprobe.build_probe_task(cfg, args.data, args.init, device)
        recipe = "linprobe"
    else:
        cfg = config_from_args(finetune.FinetuneConfig, args)
        meta = common.dataset_info(args.data)
        num_classes, img_size = int(meta["num_classes"]), int(cfg.img_size or meta["img_size"])
        device = common.engine_device(cfg)
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
    return common.run_task(
        task,
        cfg,
        args.out,
        evaluation=f"partial_ft-{args.blocks}",
        init=common.init_label(args),
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
