"""`mae transfer-cls`: classification transfer to another dataset (paper Table 6: iNaturalist, Places).

End-to-end fine-tuning of the encoder on a *different* prepared dataset (the second built-in domain
``shapes2``, sklearn's ``digits``, or an ImageFolder by path), with exactly the machinery of
:mod:`mae.eval.finetune` (its config, data, model and task builders and :func:`mae.eval.common.run_task`);
only the stage name and the recorded dataset differ. ``metrics.json`` holds ``top1``/``top5``/``best_top1``
plus ``dataset``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

from mae.eval.finetune import FinetuneConfig


@dataclass
class TransferClsConfig(FinetuneConfig):
    """The fine-tuning recipe (:class:`mae.eval.finetune.FinetuneConfig`), recorded as stage transfer_cls."""

    stage: ClassVar[str] = "transfer_cls"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mae.eval import finetune

    finetune.add_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    from mae.config import config_from_args
    from mae.eval import common, finetune

    cfg = config_from_args(TransferClsConfig, args)
    meta = common.dataset_info(args.data)
    num_classes, img_size = int(meta["num_classes"]), int(cfg.img_size or meta["img_size"])
    device = common.engine_device(cfg)
    model, name, report = finetune.build_finetune_model(cfg, args.init, num_classes, img_size)
    model.to(device)
    train_set, val_set, mixup = finetune.build_finetune_data(args.data, cfg, img_size, num_classes)
    task = finetune.FinetuneTask(model, cfg, train_set, val_set, device, mixup=mixup, smoothing=cfg.smoothing)
    return common.run_task(
        task,
        cfg,
        args.out,
        evaluation="transfer_cls",
        init=common.init_label(args),
        init_path=args.init,
        model_name=name,
        load_report=report,
        extra={"dataset": meta.get("name"), "dataset_kind": meta.get("kind"), "num_classes": num_classes,
               "img_size": img_size, "train_images": len(train_set)},
    )


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0
