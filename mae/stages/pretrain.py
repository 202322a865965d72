"""``mae pretrain``: MAE pretraining of a named model on a prepared dataset.

Writes ``OUT/checkpoint.pt`` (``'model'`` = the plain MAE state dict, reference format), ``OUT/log.jsonl``,
``OUT/metrics.json`` (train loss, held-out reconstruction loss, img/s, wall time, parameter counts),
``OUT/encoder.safetensors`` (the trained encoder without pickle, its architecture in the metadata; timm loads it)
and ``OUT/../settings.json`` (the run's full knob set). Re-running with the same ``--out`` resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from mae.config import PretrainConfig, add_common_arguments, config_from_args, config_to_dict
from mae.engine import Task, fit, is_main_process, seed_everything
from mae.errors import UserError
from mae.models.masking import draw_for_rank
from mae.registry.knobs import model_kwargs
from mae.utils.io import atomic_write_json


class PretrainTask(Task):
    """Masked-image reconstruction: the model's own loss on a batch of augmented images.

    Masks come from a generator of their own, seeded with ``seed`` and in the same state on every process: each
    process draws the masks of the whole global batch and keeps its rows (:func:`mae.models.masking.draw_for_rank`),
    so with the engine's per-image seeded augmentation a run is the same for any number of processes.
    """

    def __init__(self, cfg: PretrainConfig, data_dir: str | Path):
        from mae.data import build_dataset, load_meta
        from mae.data.transforms import pretrain_transform
        from mae.models import create_mae, model_spec

        self.cfg = cfg
        self.meta = load_meta(data_dir)
        spec = model_spec(cfg.model)
        # None: the dataset's image size (the position tables are built for it), else the model's
        self.img_size = cfg.img_size or int(self.meta.get("img_size") or spec["img_size"])
        if self.img_size % spec["patch_size"]:
            raise UserError(
                f"img_size={self.img_size} for pretrain is not a multiple of {cfg.model}'s patch size "
                f"{spec['patch_size']}"
            )
        overrides = {"decoder_num_heads": cfg.decoder_heads, "img_size": self.img_size}
        self.mask_rng = torch.Generator().manual_seed(cfg.seed)
        self.model = self.mae = create_mae(
            cfg.model,
            target_path=cfg.target_path,
            norm_pix_loss=cfg.target == "norm_pixel",
            **model_kwargs(cfg),
            **{k: v for k, v in overrides.items() if v is not None},
        )
        self.resolved = {
            "decoder_depth": cfg.decoder_depth or spec["decoder_depth"],
            "decoder_width": cfg.decoder_width or spec["decoder_embed_dim"],
            "decoder_heads": cfg.decoder_heads or spec["decoder_num_heads"],
            "img_size": self.img_size,
            "patch_size": spec["patch_size"],
        }
        self.train_set = build_dataset(data_dir, "train", transform=pretrain_transform(cfg.aug, self.img_size))
        self.val_set = None
        if cfg.eval_images > 0 and self.meta.get("splits", {}).get("val", 0):
            val = build_dataset(data_dir, "val", transform=pretrain_transform("none", self.img_size))
            self.val_set = Subset(val, range(min(cfg.eval_images, len(val))))

    def train_loader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def train_step(self, batch):
        imgs = self.to_device(batch[0])
        sample = draw_for_rank(
            self.mae.sampler,
            imgs.shape[0],
            self.mae.grid_size,
            self.cfg.mask_ratio,
            imgs.device,
            self.mask_rng,
            self.rank,
            self.world_size,
        )
        loss, _, _ = self.model(imgs, mask_ratio=self.cfg.mask_ratio, sample=sample)
        return loss, imgs.shape[0], {}

    def state_dict(self) -> dict:
        return {"mask_rng": self.mask_rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "mask_rng" in state:
            self.mask_rng.set_state(state["mask_rng"])

    def evaluate(self) -> dict:
        """Reconstruction loss on held-out images with fixed masks (seeded, the global RNG untouched)."""
        if self.val_set is None:
            return {}
        devices = [self.device] if self.device.type == "cuda" else []
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.seed)
            loader = DataLoader(self.val_set, batch_size=min(self.cfg.batch_size, 256), shuffle=False)
            for imgs, _ in loader:
                imgs = self.to_device(imgs)
                loss, _, _ = self.model(imgs, mask_ratio=self.cfg.mask_ratio)
                total += float(loss) * imgs.shape[0]
                count += imgs.shape[0]
        return {"loss": total / max(count, 1)}

    def param_counts(self) -> dict:
        encoder = sum(
            p.numel()
            for n, p in self.model.named_parameters()
            if not n.startswith("decoder") and n != "mask_token" and p.requires_grad
        )
        total = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return {"params": encoder, "params_total": total}


def settings(cfg: PretrainConfig, task: PretrainTask, data_dir: str | Path, metrics: dict) -> dict:
    """The run's full knob set: every config key (knobs by their :mod:`mae.registry.knobs` names), the model defaults
    it resolved, how the global batch was split (world size, per-process batch, accum_iter, peak lr) and the
    dataset."""
    out = config_to_dict(cfg)
    out.update(task.resolved)
    out.update(
        {
            k: metrics[k]
            for k in ("world_size", "global_batch", "batch_per_process", "accum_iter", "peak_lr")
            if k in metrics
        }
    )
    out.update({"stage": "pretrain", "data": str(data_dir), "dataset": task.meta.get("name", Path(data_dir).name)})
    return out


def run(cfg: PretrainConfig, data_dir: str | Path, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    seed_everything(cfg.seed)  # model init: identical on every rank
    task = PretrainTask(cfg, data_dir)
    metrics = fit(task, cfg, out_dir, extra=task.param_counts())
    if is_main_process():  # after fit: a refused resume (a changed knob) leaves the run's settings untouched
        from mae.models.checkpoint import ENCODER_FILE, write_encoder_safetensors

        write_encoder_safetensors(out_dir / ENCODER_FILE, task.mae.state_dict(), config_to_dict(cfg))
        atomic_write_json(out_dir.parent / "settings.json", settings(cfg, task, data_dir, metrics))
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(PretrainConfig, args)
    metrics = run(cfg, args.data, args.out)
    if not is_main_process():
        return 0
    loss = metrics.get("loss")
    print(
        f"pretrain done: train_loss={metrics['train_loss']:.4f}"
        + (f" val_loss={loss:.4f}" if loss is not None else "")
        + f" img/s={metrics['img_s']:.1f} wall={metrics['wall_s']:.1f}s -> {args.out}"
    )
    return 0
