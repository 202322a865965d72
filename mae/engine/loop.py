"""The one training loop used by every stage: :class:`Task` says what to train, :func:`fit` trains it.

``fit`` owns everything about iterating: per-iteration warmup + cosine lr (times each group's
``lr_scale``), gradient accumulation, autocast (bf16 on CPU/CUDA, fp16 + GradScaler on CUDA), gradient
clipping, non-finite loss detection, data parallelism under torchrun, atomic checkpoints with exact
resume, JSON-lines logs, a tqdm bar with images/s and the final ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

from mae.config import TrainConfig, config_to_dict, effective_lr
from mae.engine import distributed as D
from mae.errors import UserError
from mae.optim import build_optimizer, lr_at, param_groups_weight_decay, set_lr
from mae.utils.io import atomic_torch_save, atomic_write_json, atomic_write_text, write_per_image

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
METRICS = "metrics.json"
# keys that may change between a run and its resumption (they do not change what is computed)
RUNTIME_KEYS = {"device", "num_workers", "log_every", "save_every", "eval_every", "compile", "max_steps"}


class NonFiniteLossError(UserError):
    """The loss became NaN/inf; the message names epoch and step. The last good checkpoint is kept."""


class Task:
    """What a stage trains. Subclasses set ``self.model`` and implement ``train_loader`` and ``train_step``.

    ``fit`` moves ``model`` to the device and sets ``self.device`` before calling any other method;
    ``train_step`` runs inside autocast and must move its batch with :meth:`to_device`.
    """

    model: nn.Module
    device: torch.device = torch.device("cpu")

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        return param_groups_weight_decay(self.model, cfg.weight_decay)

    def optimizer(self, groups: list[dict], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
        return build_optimizer(cfg.optimizer, groups, lr, cfg)

    def train_loader(self) -> DataLoader:
        raise NotImplementedError

    def train_step(self, batch: Any) -> tuple[torch.Tensor, int, dict]:
        """Return ``(loss, n_images, extras)``; extras are scalars to log (floats or 0-d tensors)."""
        raise NotImplementedError

    def evaluate(self) -> dict:
        """Validation metrics (called under ``no_grad`` and ``model.eval()``); may be ``{}``."""
        return {}

    def per_image(self) -> dict:
        """Per-image results of the last :meth:`evaluate` (numpy arrays, e.g. ``pred``/``target``), saved by
        ``fit`` as ``predictions.npz`` beside ``metrics.json`` so that runs can be compared image by image."""
        return {}

    def state_dict(self) -> dict:
        """Extra state to checkpoint besides model/optimizer (e.g. an EMA); restored on resume."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def to_device(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.to(self.device, non_blocking=True)
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.to_device(o) for o in obj)
        if isinstance(obj, dict):
            return {k: self.to_device(v) for k, v in obj.items()}
        return obj


# ------------------------------------------------------------------------------------------------ helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _seed_worker(worker_id: int) -> None:  # torch seeds python's random in workers; numpy too
    np.random.seed(torch.initial_seed() % 2**32)


def _chain_worker_init(fn):
    if fn is None:
        return _seed_worker

    def init(worker_id: int) -> None:
        _seed_worker(worker_id)
        fn(worker_id)

    return init


@dataclass
class _EpochLoader:
    """The task's loader re-sampled so that the data order depends only on (seed, epoch, rank)."""

    loader: DataLoader
    generator: torch.Generator | None
    seed: int
    rank: int

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int):
        sampler = self.loader.sampler if self.loader.batch_sampler is None else self.loader.batch_sampler
        for s in (sampler, getattr(sampler, "sampler", None)):
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)
        if self.generator is not None:  # worker seeds (and any generator draw) depend on (seed, epoch, rank)
            self.generator.manual_seed((self.seed * 1_000_003 + epoch * 10_007 + self.rank) % 2**63)
        return iter(self.loader)


def _epoch_loader(loader: DataLoader, env: D.DistEnv, seed: int) -> _EpochLoader:
    """Replace a plain random/sequential sampler by a seeded DistributedSampler (works for world size 1)."""
    plain = loader.batch_size is not None and isinstance(loader.sampler, (RandomSampler, SequentialSampler))
    if not plain:  # a custom (batch) sampler: keep it, call its set_epoch if any
        return _EpochLoader(loader, None, seed, env.rank)
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(
        loader.dataset, num_replicas=env.world_size, rank=env.rank, shuffle=shuffle, seed=seed,
        drop_last=loader.drop_last,
    )
    generator = torch.Generator()
    kwargs: dict[str, Any] = {}
    if loader.num_workers > 0:
        kwargs = {"prefetch_factor": loader.prefetch_factor, "multiprocessing_context": loader.multiprocessing_context}
    new = DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=_chain_worker_init(loader.worker_init_fn), generator=generator,
        **kwargs,
    )
    return _EpochLoader(new, generator, seed, env.rank)


@dataclass
class _Meter:
    """Sums over a window: loss, images, extras, time."""

    loss: float = 0.0
    count: int = 0
    images: int = 0
    extras: dict = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, images: int, extras: dict) -> None:
        self.loss += loss
        self.count += 1
        self.images += images
        for k, v in extras.items():
            self.extras[k] = self.extras.get(k, 0.0) + float(v)

    def means(self, env: D.DistEnv) -> dict:
        keys = sorted(self.extras)
        n = max(self.count, 1)
        vals = D.all_reduce_mean(env, [self.loss / n] + [self.extras[k] / n for k in keys])
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {"loss": vals[0], "img_s": self.images * env.world_size / elapsed}
        out.update(zip(keys, vals[1:]))
        return out


def _read_metrics(out_dir: Path) -> dict | None:
    path = out_dir / METRICS
    if path.exists():
        return json.loads(path.read_text())
    return None


def _check_resumable(ckpt: dict, cfg: TrainConfig, path: Path) -> None:
    old = ckpt.get("config", {})
    new = config_to_dict(cfg)
    for key in sorted(set(old) | set(new)):
        if key in RUNTIME_KEYS:
            continue
        if old.get(key) != new.get(key):
            raise UserError(
                f"{path} was trained with {key}={old.get(key)!r}, now {key}={new.get(key)!r}: "
                "use another --out folder or delete the checkpoint to restart"
            )


def _trim_log(path: Path, last_epoch: int) -> None:
    """Drop log lines written after the checkpoint we resume from (an interrupted epoch)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", -1) <= last_epoch:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(line + "\n" for line in keep))


# ------------------------------------------------------------------------------------------------ fit


def fit(task: Task, cfg: TrainConfig, out_dir: str | Path) -> dict:
    """Train ``task`` per ``cfg`` into ``out_dir``; resume from ``out_dir/checkpoint.pt`` if present.

    Returns the final metrics (also written to ``out_dir/metrics.json`` by rank 0).
    """
    env = D.init_distributed(cfg.device)
    try:
        return _fit(task, cfg, Path(out_dir), env)
    finally:
        D.shutdown(env)


def _fit(task: Task, cfg: TrainConfig, out_dir: Path, env: D.DistEnv) -> dict:
    t_start = time.perf_counter()
    device = env.device
    if cfg.amp == "fp16" and device.type != "cuda":
        raise UserError("amp=fp16 needs a CUDA device; use amp=bf16 or amp=none on CPU")
    ckpt_path = out_dir / CHECKPOINT
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    D.barrier(env)

    ckpt = None
    if ckpt_path.exists():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unreadable file is a user-facing problem
            raise UserError(f"cannot read checkpoint {ckpt_path}: {err}") from None
        _check_resumable(ckpt, cfg, ckpt_path)
        if ckpt.get("finished"):
            metrics = _read_metrics(out_dir)
            if metrics is not None:  # nothing to train: hand back the trained weights and the metrics
                task.device = device
                task.model.to(device).load_state_dict(ckpt["model"])
                task.load_state_dict(ckpt.get("task") or {})
                return metrics

    task.device = device
    model = task.model.to(device)
    peak_lr = effective_lr(cfg, env.world_size)
    if ckpt is None:
        seed_everything(cfg.seed + env.rank)
        D.broadcast_module(env, model)
    groups = task.param_groups(cfg)
    optimizer = task.optimizer(groups, peak_lr, cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None

    start_epoch, step, wall_prev = 0, 0, 0.0
    last = {"loss": float("nan"), "img_s": 0.0}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        task.load_state_dict(ckpt.get("task") or {})
        start_epoch, step, wall_prev = ckpt["epoch"] + 1, ckpt["step"], ckpt.get("wall_s", 0.0)
        last = ckpt.get("last", last)
        states = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if env.rank < len(states):
            _set_rng_state(states[env.rank])
        else:
            seed_everything(cfg.seed + env.rank + 7919 * start_epoch)
        if env.is_main:
            _trim_log(out_dir / LOG, ckpt["epoch"])
            print(f"resuming from {ckpt_path} after epoch {ckpt['epoch'] + 1}", flush=True)
    finished = bool(ckpt and ckpt.get("finished"))
    if cfg.compile:
        model.compile()

    loader = _epoch_loader(task.train_loader(), env, cfg.seed)
    iters = (len(loader) // cfg.accum_iter) * cfg.accum_iter
    if iters == 0 and not finished:
        raise UserError(
            f"the training loader gives {len(loader)} batches per process, fewer than accum_iter={cfg.accum_iter}: "
            "lower batch_size/accum_iter or use more data"
        )

    log_file = open(out_dir / LOG, "a") if env.is_main else None  # noqa: SIM115 - closed in finally

    def log(record: dict) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    def save(epoch: int, done: bool) -> None:
        D.broadcast_module(env, model, buffers_only=True)
        rngs = D.all_gather_object(env, _rng_state())
        if env.is_main:
            atomic_torch_save(
                {
                    "model": task.model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "epoch": epoch, "step": step, "rng": rngs[0], "rng_ranks": rngs,
                    "config": config_to_dict(cfg), "stage": getattr(cfg, "stage", "train"),
                    "task": task.state_dict(), "finished": done, "last": last,
                    "wall_s": wall_prev + time.perf_counter() - t_start, "world_size": env.world_size,
                },
                ckpt_path,
            )
        D.barrier(env)

    def evaluate() -> dict:
        model.eval()
        with torch.no_grad(), autocast(device, cfg.amp):
            result = task.evaluate() or {}
        model.train()
        return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in result.items()}

    train_time, train_images, epochs_done = 0.0, 0, start_epoch
    try:
        epoch = start_epoch
        while not finished and epoch < cfg.epochs:
            model.train()
            optimizer.zero_grad(set_to_none=True)
            epoch_meter, window = _Meter(), _Meter()
            batches = loader.epoch(epoch)
            bar = tqdm(total=iters, desc=f"{getattr(cfg, 'stage', 'train')} {epoch + 1}/{cfg.epochs}",
                       disable=not env.is_main, dynamic_ncols=True, leave=False)
            lr = lr_at(epoch, cfg, peak_lr)
            stop = False
            for it in range(iters):
                batch = next(batches)
                if it % cfg.accum_iter == 0:
                    lr = lr_at(epoch + it / iters, cfg, peak_lr)
                    set_lr(optimizer, lr)
                with autocast(device, cfg.amp):
                    loss, n_images, extras = task.train_step(batch)
                value = float(loss.detach())
                bad = not math.isfinite(value)
                if env.distributed:
                    bad = D.all_reduce_mean(env, [float(bad)])[0] > 0
                if bad:
                    kept = f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists() else "no checkpoint was written"
                    raise NonFiniteLossError(
                        f"non-finite loss {value} at epoch {epoch} step {step} (iteration {it}); {kept}"
                    )
                scaled = loss / cfg.accum_iter
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                n_images = int(n_images)
                epoch_meter.add(value, n_images, extras)
                window.add(value, n_images, extras)
                if (it + 1) % cfg.accum_iter == 0:
                    D.average_gradients(env, params)
                    if scaler is not None:
                        if cfg.clip_grad is not None:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        if cfg.clip_grad is not None:
                            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    if step % cfg.log_every == 0:
                        stats = window.means(env)
                        log({"kind": "step", "epoch": epoch, "step": step, "lr": lr, **stats})
                        window = _Meter()
                    if cfg.max_steps is not None and step >= cfg.max_steps:
                        stop = True
                bar.update(1)
                elapsed = time.perf_counter() - epoch_meter.start
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}",
                                img_s=f"{epoch_meter.images * env.world_size / max(elapsed, 1e-9):.1f}")
                if stop:
                    break
            bar.close()
            del batches
            last = epoch_meter.means(env)
            train_time += time.perf_counter() - epoch_meter.start
            train_images += epoch_meter.images * env.world_size
            log({"kind": "epoch", "epoch": epoch, "step": step, "lr": lr, **last})
            epochs_done = epoch + 1
            done = stop or epoch + 1 == cfg.epochs
            if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and not done:
                log({"kind": "eval", "epoch": epoch, "step": step, **evaluate()})
            if done or (epoch + 1) % cfg.save_every == 0:
                save(epoch, done)
            finished = done
            epoch += 1

        final = evaluate()
        metrics = {
            "train_loss": last.get("loss"),
            "epochs": epochs_done,
            "steps": step,
            "wall_s": wall_prev + time.perf_counter() - t_start,
            "img_s": train_images / train_time if train_time > 0 else last.get("img_s", 0.0),
            "lr": peak_lr,
            "eff_batch_size": cfg.batch_size * cfg.accum_iter * env.world_size,
            "world_size": env.world_size,
            "config": config_to_dict(cfg),
            **final,
        }
        if env.is_main:
            log({"kind": "eval", "epoch": epochs_done - 1, "step": step, **final})
            write_per_image(out_dir, task.per_image())
            atomic_write_json(out_dir / METRICS, metrics)
        D.barrier(env)
        return metrics
    finally:
        if log_file is not None:
            log_file.close()
