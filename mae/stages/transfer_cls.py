"""`mae transfer-cls`: classification transfer to another dataset (paper Table 6: iNaturalist, Places).

End-to-end fine-tuning of the encoder on a *different* prepared dataset (the second built-in domain
``shapes2``, sklearn's ``digits``, or an ImageFolder by path), by :func:`mae.stages.finetune.run` itself: only
the stage name and the recorded dataset differ, and no weights are saved. ``metrics.json`` holds
``top1``/``top5``/``best_top1`` plus ``dataset``.
"""

from __future__ import annotations

import argparse

from mae.stage_configs import TransferClsConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mae.stages import finetune

    finetune.add_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    from mae.stages import finetune

    return finetune.run(args, TransferClsConfig)


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0
