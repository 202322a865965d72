"""Shared pieces of every evaluation: the encoder (from a checkpoint or random init), the classification task
with top-1/top-5 evaluation, feature extraction, freezing, and the metrics file. (The k-NN scoring lives in
:mod:`mae.stages.knn`, the reuse of a finished result in :mod:`mae.stages.partial_ft`.)

The per-evaluation modules (:mod:`finetune`, :mod:`linprobe`, :mod:`partial_ft`, :mod:`knn`) are thin: they pick
the head, the trainable parameters, the optimizer and the transforms, and hand a :class:`ClassificationTask`
to the engine's ``fit()``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mae.engine import Task, autocast, is_main_process
from mae.errors import UserError

DEFAULT_MODEL = "mae_vit_micro_patch4"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pt"


# --------------------------------------------------------------------------------------------------- CLI


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    """``--init CKPT`` or ``--scratch`` (exactly one)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--init",
        metavar="CKPT",
        help="encoder weights: our pretrain checkpoint.pt, a fine-tuned model.pt, or a reference "
        "{'model': state_dict} file (decoder keys are ignored, pos_embed is interpolated); also an "
        "http(s):// URL (cached; optional #sha256=HEX suffix) or timm:NAME (e.g. timm:vit_base_patch16_224.mae)",
    )
    group.add_argument("--scratch", action="store_true", help="random initialisation (the from-scratch baseline)")


def init_label(args: argparse.Namespace) -> str:
    return "scratch" if getattr(args, "scratch", False) else "mae"


# ------------------------------------------------------------------------------------------------ device


def engine_device(cfg: Any) -> torch.device:
    """The device ``fit()`` trains on for this process (``cfg.device``; the local rank's GPU under torchrun)."""
    from mae.engine.distributed import resolve_device

    return resolve_device(getattr(cfg, "device", "auto") or "auto", int(os.environ.get("LOCAL_RANK", "0")))


# ----------------------------------------------------------------------------------------------- encoder


def _load_file(path: str | Path) -> Any:
    from mae.models.checkpoint import read_checkpoint
    from mae.models.hub import resolve_init

    path = resolve_init(path)  # a local file or folder, a URL's cached download, or timm hub weights (in memory)
    if isinstance(path, dict):
        return path
    # mmap: reading the model name does not pull a large checkpoint into memory
    return read_checkpoint(path, mmap=True, option="--init")


def checkpoint_model_name(path: str | Path) -> str | None:
    """The model name a checkpoint records: our pretrain ``config`` or fine-tuned ``model.pt``, the ``args`` of the
    official files, a safetensors file's architecture, a Hugging Face or timm folder's config; else None."""
    from mae.models.checkpoint import recorded_config

    name = recorded_config(_load_file(path)).get("model")
    return name if isinstance(name, str) and name else None


def resolve_model_name(configured: str | None, init: str | None) -> str:
    """The configured ``model`` key wins; else the name stored in the checkpoint; else the study default."""
    if configured:
        return configured
    if init:
        name = checkpoint_model_name(init)
        if name:
            return name
        raise UserError(f"model: checkpoint '{init}' does not record its model name; pass --set model=NAME")
    return DEFAULT_MODEL


def build_encoder(
    model_name: str,
    num_classes: int,
    *,
    global_pool: str = "avg",
    drop_path: float = 0.0,
    img_size: int | None = None,
    init: str | None = None,
) -> tuple[nn.Module, Any]:
    """A timm ``VisionTransformer`` with the MAE encoder architecture, loaded from ``init`` when given.

    Returns ``(model, load_report)``; the report is ``None`` for a random init.
    """
    from mae.models import create_encoder, load_encoder_checkpoint
    from mae.models.attention import auto_kernels

    if global_pool not in ("avg", "token"):
        raise UserError(f"global_pool: invalid value '{global_pool}' (valid: avg, token)")
    model = create_encoder(
        model_name, num_classes=num_classes, global_pool=global_pool, drop_path_rate=drop_path, img_size=img_size
    )
    auto_kernels(model)  # explicit softmax attention under CPU bf16 autocast (mae.models.attention)
    report = None
    if init:
        from mae.models.hub import resolve_init

        report = load_encoder_checkpoint(model, resolve_init(init))
    return model, report


def init_head(head: nn.Linear, std: float) -> None:
    nn.init.trunc_normal_(head.weight, std=std)
    if head.bias is not None:
        nn.init.zeros_(head.bias)


def features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pooled representation a timm ViT feeds its head (cls after the final norm, or avg + fc_norm)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


# ----------------------------------------------------------------------------------------------- freezing


def freeze_all_but(model: nn.Module, trainable: Callable[[str], bool]) -> None:
    """``requires_grad`` True exactly for the parameters whose name satisfies ``trainable``."""
    for name, param in model.named_parameters():
        param.requires_grad_(bool(trainable(name)))


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trainable_named_params(model: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------------- data


def dataset_info(data_dir: str | Path) -> dict:
    """The meta of a prepared dataset a classification stage can use: image size and >= 2 classes."""
    from mae.data import load_meta

    path = Path(data_dir)
    if not (path / "meta.json").is_file():
        raise UserError(f"--data: '{path}' is not a prepared dataset (no meta.json)")
    meta = load_meta(path)
    for key in ("num_classes", "img_size"):
        if key not in meta:
            raise UserError(f"--data: {path / 'meta.json'} has no '{key}'")
    if not isinstance(meta["num_classes"], int) or meta["num_classes"] < 2:
        raise UserError(
            f"--data: {path} has {meta['num_classes']} class(es); classification needs at least 2 "
            "(a single class makes every accuracy 100 %)"
        )
    return meta


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    even: bool = False,
) -> DataLoader:
    """Training loaders shuffle and drop the last partial batch (the batch shrinks to the dataset size for tiny
    sets so that an epoch always has one step; ``even`` keeps it even, as mixup needs). Under torchrun the
    engine re-samples training loaders per rank; evaluation loaders see the whole split on every rank."""
    n = len(dataset)
    if n == 0:
        raise UserError("--data: the split is empty")
    if train and n < 2:
        raise UserError(f"--data: the training split has {n} image; training needs at least 2 (batch statistics)")
    if train:
        batch_size = min(batch_size, n)
        if even and batch_size % 2 and batch_size > 1:
            batch_size -= 1
    generator = torch.Generator().manual_seed(seed) if train else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=generator,
    )


# ---------------------------------------------------------------------------------------------- metrics


def topk_correct(scores: torch.Tensor, target: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose target is among the ``k`` highest scores (``k`` capped at the class count)."""
    ks = tuple(ks)
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices
    hit = top.eq(target.view(-1, 1))
    return {k: int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


def predictions_arrays(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Per-image top-1 prediction and label of a val split, in split order (``predictions.npz``)."""
    return {"pred": pred.numpy().astype(np.int32), "target": target.numpy().astype(np.int32)}


class ClassificationTask(Task):
    """A classifier trained by the engine's ``fit()``: mixup/cutmix + label smoothing, top-1/top-5 eval.

    ``model`` maps a batch of inputs (images, or cached features for the fast linear probe) to logits.
    Subclasses choose ``param_groups`` and ``optimizer``.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Any,
        train_set: Dataset,
        val_set: Dataset,
        device: torch.device,
        *,
        mixup: Callable | None = None,
        smoothing: float = 0.0,
        eval_batch_size: int | None = None,
    ) -> None:
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        self.model = model
        self.cfg = cfg
        self.train_set = train_set
        self.val_set = val_set
        self.device = device
        self.mixup = mixup
        if mixup is not None:
            self.criterion: nn.Module = SoftTargetCrossEntropy()  # smoothing is inside the mixed targets
        elif smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.eval_batch_size = eval_batch_size or max(int(cfg.batch_size), 1)
        self.history: list[float] = []

    # ---- engine interface
    def train_loader(self) -> DataLoader:
        return make_loader(
            self.train_set,
            int(self.cfg.batch_size),
            train=True,
            num_workers=int(getattr(self.cfg, "num_workers", 0) or 0),
            seed=int(getattr(self.cfg, "seed", 0) or 0),
            even=self.mixup is not None,
        )

    def train_step(self, batch) -> tuple[torch.Tensor, int, dict]:
        inputs, target = batch[0], batch[1]
        inputs, target = self.to_device(inputs), self.to_device(target)
        if self.mixup is not None:
            inputs, target = self.mixup(inputs, target)
        logits = self.model(inputs)
        loss = self.criterion(logits.float(), target)
        return loss, int(inputs.shape[0]), {}

    def per_image(self) -> dict:
        return getattr(self, "_per_image", {})

    def state_dict(self) -> dict:
        return {"history": list(self.history)}  # so best_top1 survives a resume

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved (the trained model; an EMA of it where a subclass keeps one)."""
        return self.model

    @torch.no_grad()
    def _score(self, model: nn.Module) -> dict:
        """Top-1/top-5 and val loss of ``model`` on the val split; per-image predictions in ``preds``/``targets``."""
        was_training = model.training
        model.eval()
        loader = make_loader(
            self.val_set, self.eval_batch_size, train=False, num_workers=int(getattr(self.cfg, "num_workers", 0) or 0)
        )
        n, loss_sum, hits = 0, 0.0, {1: 0, 5: 0}
        preds, targets = [], []
        for batch in loader:
            inputs = batch[0].to(self.device, non_blocking=True)
            target = batch[1].to(self.device, non_blocking=True)
            with autocast(self.device, getattr(self.cfg, "amp", "none")):
                logits = model(inputs)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
            pred = logits.argmax(1)  # top-1 is computed from the saved predictions (ties resolved once)
            hits[1] += int((pred == target).sum())
            hits[5] += topk_correct(logits, target, ks=(5,))[5]
            preds.append(pred.cpu())
            targets.append(target.cpu())
            n += int(target.shape[0])
        model.train(was_training)
        return {
            "top1": 100.0 * hits[1] / max(n, 1),
            "top5": 100.0 * hits[5] / max(n, 1),
            "loss": loss_sum / max(n, 1),
            "n_val": n,
            "preds": preds,
            "targets": targets,
        }

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The metrics of :attr:`eval_model`; when that is an EMA, the trained weights' top-1 as ``live_top1``."""
        score = self._score(self.eval_model)
        preds, targets = score.pop("preds"), score.pop("targets")
        self._per_image = predictions_arrays(torch.cat(preds), torch.cat(targets)) if preds else {}
        self.history.append(score["top1"])
        out = {**score, "best_top1": max(self.history)}
        if self.eval_model is not self.model:
            out["live_top1"] = self._score(self.model)["top1"]
        return out


# ---------------------------------------------------------------------------------------- frozen features


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    *,
    batch_size: int = 256,
    amp: str | None = "auto",
    num_workers: int = 0,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Pooled features of every sample of ``dataset`` (float32, on CPU), their labels, and the rates: ``img_s``
    (images per second of the whole pass) and ``step_img_s`` (of the encoder's forward passes alone)."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    loader = make_loader(dataset, batch_size, train=False, num_workers=num_workers)
    feats, labels = [], []
    start, n, compute = time.perf_counter(), 0, 0.0
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
    for batch in bar:
        t0 = time.perf_counter()
        images = batch[0].to(device, non_blocking=True)
        with autocast(device, amp):
            out = features(model, images)
        feats.append(out.float().cpu())
        compute += time.perf_counter() - t0
        labels.append(torch.as_tensor(batch[1]).long().cpu())
        n += int(images.shape[0])
        bar.set_postfix(img_s=f"{n / max(time.perf_counter() - start, 1e-9):.0f}")
    model.train(was_training)
    elapsed = max(time.perf_counter() - start, 1e-9)
    return torch.cat(feats), torch.cat(labels), {"img_s": n / elapsed, "step_img_s": n / max(compute, 1e-9)}


# -------------------------------------------------------------------------------------------- outputs


def save_model(model: nn.Module, out_dir: str | Path, meta: dict | None = None) -> Path:
    """The trained ``VisionTransformer`` as ``out_dir/model.pt`` in the reference ``{'model': state_dict}`` format
    (loadable with ``timm.create_model``; ``meta`` lands beside it under ``'config'``), and the same weights
    without pickle as ``out_dir/encoder.safetensors`` (their architecture in its metadata)."""
    from mae.models.checkpoint import ENCODER_FILE, write_encoder_safetensors
    from mae.utils.io import atomic_torch_save

    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    path = Path(out_dir) / MODEL_FILE
    atomic_torch_save({"model": state, "config": dict(meta or {})}, path)
    write_encoder_safetensors(Path(out_dir) / ENCODER_FILE, state, dict(meta or {}))
    return path


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def run_task(
    task: Task,
    cfg: Any,
    out_dir: str | Path,
    *,
    evaluation: str,
    init: str,
    init_path: str | None = None,
    data: str | os.PathLike | None = None,
    model_name: str | None = None,
    load_report: Any = None,
    save_weights: bool = False,
    model_meta: dict | None = None,
    extra: dict | None = None,
    started: float | None = None,
) -> dict:
    """The one way an evaluation or transfer stage ends (k-NN, which trains nothing, uses the same writer):
    train ``task`` with the engine's ``fit()``, which writes ``metrics.json`` (with the evaluation's keys:
    ``eval``, ``init``, ``model``, ``params`` (trainable), ``setup_s``, the load report) and ``predictions.npz``;
    with ``save_weights`` also ``out/model.pt``."""
    from mae.engine import fit

    added: dict[str, Any] = {
        "eval": evaluation,
        "init": init,
        "init_path": str(init_path) if init_path else None,
        "data": str(data) if data is not None else None,
        "model": model_name,
        "params": trainable_params(task.model),
        "setup_s": time.perf_counter() - started if started is not None else 0.0,  # model + feature caching
        **(extra or {}),
    }
    if load_report is not None:
        added["init_report"] = (
            {
                "loaded": load_report.get("loaded"),
                "ignored": len(load_report.get("ignored", [])),
                "missing": list(load_report.get("missing", [])),
                "pos_embed_resampled": load_report.get("pos_embed_resampled"),
            }
            if isinstance(load_report, dict)
            else str(load_report)
        )
    metrics = fit(task, cfg, out_dir, extra=added)
    if save_weights and is_main_process():  # fit() returns the trained (or restored) weights in the task
        save_model(getattr(task, "eval_model", task.model), out_dir, model_meta)
    return metrics
