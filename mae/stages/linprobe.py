"""``mae linprobe``: linear probing of the frozen encoder.

Recipe (paper / docs/ARCHITECTURE.md, "Reference facts"): every encoder parameter frozen; feature = cls token
after the final norm
(``global_pool=avg``: average of the patch tokens + a parameter-free ``fc_norm``); head =
``BatchNorm1d(affine=False, eps=1e-6)`` + ``Linear`` (trunc_normal std 0.01); timm ``Lars`` with momentum 0.9,
base_lr 0.1 × batch/256, weight decay 0, warmup + cosine; RandomResizedCrop + flip
(:func:`mae.data.transforms.linprobe_transform`). The LARS trust ratio is applied to the weight matrix only (not
to biases), as in the reference.

``cached_features=true`` (fast mode) runs the encoder once over train and val *without augmentation* and trains
the head on the stored features — a deterministic approximation of the protocol (no new crop per epoch), much
cheaper on a CPU. See docs/evaluations.md.

The trained probe is also written as ``head.safetensors``: its BatchNorm folded into the Linear, one
``nn.Linear`` on the pooled features (:func:`write_probe_head`). Partial fine-tuning with K >= 1 starts its
head from it (``mae partial-ft --head-from``), so that fine-tuning K blocks starts where the probe ended.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from mae.config import add_common_arguments, config_from_args
from mae.engine import is_main_process
from mae.errors import UserError
from mae.stage_configs import LinprobeConfig
from mae.stages import classification

#: the trained probe of a ``mae linprobe`` output folder, as one Linear layer (:func:`write_probe_head`)
HEAD_FILE = "head.safetensors"


def probe_head(dim: int, num_classes: int, std: float) -> nn.Sequential:
    """``BatchNorm1d(affine=False, eps=1e-6)`` + ``Linear`` (trunc_normal weights, zero bias)."""
    linear = nn.Linear(dim, num_classes)
    classification.init_head(linear, std)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def folded_linear(head: nn.Sequential) -> nn.Linear:
    """The probe ``BatchNorm1d(affine=False)`` + ``Linear`` as one ``Linear`` with the same outputs in eval mode:
    ``W (x - mean) / sqrt(var + eps) + b = (W / sqrt(var + eps)) x + (b - W mean / sqrt(var + eps))``."""
    norm, linear = head[0], head[1]
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    weight = linear.weight.double() * scale
    folded = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        folded.weight.copy_(weight.float())
        folded.bias.copy_((linear.bias.double() - weight @ norm.running_mean.double()).float())
    return folded


def write_probe_head(head: nn.Sequential, out_dir: str | Path, global_pool: str) -> Path:
    """The trained probe as ``out_dir/head.safetensors`` (folded, :func:`folded_linear`), its pooling recorded."""
    from mae.models.checkpoint import write_safetensors

    linear = folded_linear(head)
    state = {"weight": linear.weight.detach().cpu(), "bias": linear.bias.detach().cpu()}
    return write_safetensors(Path(out_dir) / HEAD_FILE, state, {"kind": "linprobe_head", "global_pool": global_pool})


def read_probe_head(
    probe_dir: str | Path, dim: int, num_classes: int, global_pool: str, option: str = "--head-from"
) -> nn.Linear:
    """The ``nn.Linear`` a finished ``mae linprobe`` in ``probe_dir`` trained (checked: its pooling and shape)."""
    from mae.models.checkpoint import read_safetensors

    path = Path(probe_dir) / HEAD_FILE
    if path.is_file():
        found = read_safetensors(path, option)
        state, arch = found["model"], found.get("config", {})
    else:  # a probe finished before it wrote head.safetensors: its training checkpoint holds the head
        state, arch = _head_from_checkpoint(Path(probe_dir), path, option)
    if arch.get("global_pool") != global_pool:
        raise UserError(
            f"{option}: {path} is a probe of global_pool={arch.get('global_pool')!r} features; "
            f"this run pools with global_pool={global_pool!r}"
        )
    weight, bias = state.get("weight"), state.get("bias")
    if (
        weight is None
        or bias is None
        or tuple(weight.shape) != (num_classes, dim)
        or tuple(bias.shape) != (num_classes,)
    ):
        shape = None if weight is None else tuple(weight.shape)
        raise UserError(f"{option}: {path} holds a head of shape {shape}; this model needs ({num_classes}, {dim})")
    linear = nn.Linear(dim, num_classes)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear


def _head_from_checkpoint(probe_dir: Path, wanted: Path, option: str) -> tuple[dict, dict]:
    """(folded head state, {global_pool}) from the final ``checkpoint.pt`` of a finished probe (cached features:
    the head's own keys ``0.*``/``1.*``; end to end: ``head.0.*``/``head.1.*``)."""
    from mae.models.checkpoint import read_checkpoint

    ckpt_path = probe_dir / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise UserError(f"{option}: {wanted} does not exist (a `mae linprobe` output folder holds it once it finished)")
    ckpt = read_checkpoint(ckpt_path, option=option)
    state, config = ckpt.get("model") or {}, ckpt.get("config") or {}
    prefix = "head." if "head.1.weight" in state else ""
    if f"{prefix}1.weight" not in state or not ckpt.get("finished"):
        raise UserError(f"{option}: {ckpt_path} is not the checkpoint of a finished linear probe")
    linear = state[f"{prefix}1.weight"]
    head = probe_head(linear.shape[1], linear.shape[0], 1.0)
    head.load_state_dict(
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(f"{prefix}0.") or k.startswith(f"{prefix}1.")}
    )
    folded = folded_linear(head)
    return {"weight": folded.weight.detach(), "bias": folded.bias.detach()}, {"global_pool": config.get("global_pool")}


def lars_param_groups(model: nn.Module, weight_decay: float, trust_coeff: float = 1e-3) -> list[dict]:
    """Trainable params in two groups: matrices (weight decay + LARS adaptation) and 1-D params (neither)."""
    matrices, vectors = [], []
    for _, param in classification.trainable_named_params(model):
        (matrices if param.ndim > 1 else vectors).append(param)
    groups = []
    if matrices:
        groups.append(
            {"params": matrices, "weight_decay": weight_decay, "always_adapt": True, "trust_coeff": trust_coeff}
        )
    if vectors:
        groups.append({"params": vectors, "weight_decay": 0.0, "always_adapt": False})
    return groups


class LinprobeTask(classification.ClassificationTask):
    """Trains only what ``requires_grad``; LARS groups as in the reference (or ``cfg.optimizer``)."""

    def param_groups(self, cfg: LinprobeConfig) -> list[dict]:
        if cfg.optimizer == "lars":
            return lars_param_groups(self.model, cfg.weight_decay, cfg.trust_coeff)
        from mae.engine.optim import param_groups_weight_decay

        return param_groups_weight_decay(self.model, cfg.weight_decay)


def build_probe_model(cfg: LinprobeConfig, init: str | None, num_classes: int, img_size: int):
    """Frozen encoder whose head is the probe head; only the head's Linear is trainable."""
    name = classification.resolve_model_name(cfg.model, init)
    torch.manual_seed(cfg.seed)
    model, report = classification.build_encoder(
        name, num_classes, global_pool=cfg.global_pool, img_size=img_size, init=init
    )
    model.head = probe_head(model.embed_dim, num_classes, cfg.head_init_std)
    classification.freeze_all_but(model, lambda n: n.startswith("head."))
    return model, name, report


def build_probe_task(cfg: LinprobeConfig, data: str, init: str | None, device: torch.device):
    """The linear-probe task: end to end through the frozen encoder, or on cached features.

    Returns ``(task, encoder, model_name, load_report, extra_metrics)``; ``encoder`` is the full model (its head
    is the trained probe head in both modes).
    """
    from mae.data import build_dataset
    from mae.data.transforms import eval_transform, linprobe_transform

    meta = classification.dataset_info(data)
    num_classes, img_size = int(meta["num_classes"]), int(cfg.img_size or meta["img_size"])
    model, name, report = build_probe_model(cfg, init, num_classes, img_size)
    model.to(device)
    extra: dict = {"cached_features": cfg.cached_features, "global_pool": cfg.global_pool}
    if not cfg.cached_features:
        train_set = build_dataset(data, "train", linprobe_transform(img_size, True))
        val_set = build_dataset(data, "val", linprobe_transform(img_size, False))
        return LinprobeTask(model, cfg, train_set, val_set, device), model, name, report, extra
    sets, started = {}, time.perf_counter()
    for split in ("train", "val"):
        dataset = build_dataset(data, split, eval_transform(img_size))
        feats, labels, rates = classification.extract_features(
            model,
            dataset,
            device,
            batch_size=cfg.batch_size,
            amp=cfg.amp,
            num_workers=cfg.num_workers,
            desc=f"features {split}",
        )
        sets[split] = TensorDataset(feats, labels)
        extra[f"feature_img_s_{split}"] = rates["img_s"]
        extra[f"feature_step_img_s_{split}"] = rates["step_img_s"]
    extra["feature_s"] = time.perf_counter() - started  # the encoder's passes over both splits
    task = LinprobeTask(model.head, cfg, sets["train"], sets["val"], device)
    return task, model, name, report, extra


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    classification.add_init_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    """Run the evaluation; returns the metrics (also in ``out/metrics.json``)."""
    started = time.perf_counter()
    cfg = config_from_args(LinprobeConfig, args)
    device = classification.engine_device(cfg)
    task, model, name, report, extra = build_probe_task(cfg, args.data, args.init, device)
    metrics = classification.run_task(
        task,
        cfg,
        args.out,
        evaluation="linprobe",
        init=classification.init_label(args),
        init_path=args.init,
        data=args.data,
        model_name=name,
        load_report=report,
        extra=extra,
        started=started,
    )
    if is_main_process():  # fit() leaves the trained (or restored) head in the model
        write_probe_head(model.head, args.out, cfg.global_pool)
    return metrics


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0
