"""The one training loop used by every stage: :class:`Task` says what to train, :func:`fit` trains it.

``fit`` owns everything about iterating: per-iteration warmup + cosine lr (times each group's
``lr_scale``), gradient accumulation, autocast (``amp``: the precision :mod:`mae.engine.precision` picks for the
device; fp16 with a GradScaler), gradient
clipping, non-finite loss detection, data parallelism under torchrun (``DistributedDataParallel``, global
batch split over processes and accumulation steps), per-image seeded augmentation, atomic checkpoints with
exact resume, JSON-lines logs, a tqdm bar with images/s and the final ``metrics.json``.

The loop is here (:class:`_Trainer`); it calls :mod:`mae.engine.resume` (the checkpoint to resume from, RNG
states, checkpoint writes, preemption), :mod:`mae.engine.data_order` (the seeded data order) and
:mod:`mae.engine.meters` (meters, clock, TensorBoard curves).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mae.config import TrainConfig, batch_plan, config_to_dict, effective_lr
from mae.engine import distributed as D
from mae.engine.data_order import EpochLoader, epoch_loader, seed_everything
from mae.engine.meters import Clock, Curves, Meter
from mae.engine.optim import build_optimizer, lr_at, param_groups_weight_decay, set_lr
from mae.engine.precision import Precision, resolve
from mae.engine.resume import (
    CHECKPOINT,
    LOG,
    METRICS,
    REPORTED,
    checkpoint_to_resume,
    preempted,
    read_metrics,
    restore_rng,
    save_checkpoint,
    trim_log,
)
from mae.errors import Preempted, UserError
from mae.utils import preemption
from mae.utils.io import atomic_write_json, remove_stale_temps, write_per_image
from mae.utils.lock import run_lock

TENSORBOARD = "tensorboard"


class NonFiniteLossError(UserError):
    """The loss became NaN/inf; the message names epoch and step. The last good checkpoint is kept."""


class Task:
    """What a stage trains. Subclasses set ``self.model`` and implement ``train_loader`` and ``train_step``.

    ``fit`` moves ``model`` to the device and sets ``self.device`` (and ``rank``/``world_size``) before calling
    any other method; ``train_step`` runs inside autocast and must move its batch with :meth:`to_device`.
    Under torchrun, ``self.model`` *is* the ``DistributedDataParallel`` wrapper during ``train_step`` (call it,
    do not reach into its attributes there) and the plain module everywhere else.

    ``train_loader`` gives the *global* batch (``cfg.batch_size``); ``fit`` re-makes a plain loader with the
    per-process batch and a sampler that seeds every image's augmentation from (seed, epoch, image index).
    """

    model: nn.Module
    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1
    #: DistributedDataParallel's flag: set when some parameters get no gradient in a step
    find_unused_parameters: bool = False

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        return param_groups_weight_decay(self.model, cfg.weight_decay)

    def optimizer(self, groups: list[dict], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
        return build_optimizer(cfg.optimizer, groups, lr, cfg)

    def train_loader(self) -> DataLoader:
        raise NotImplementedError

    def train_step(self, batch: Any) -> tuple[torch.Tensor, int, dict]:
        """Return ``(loss, n_images, extras)``; extras are scalars to log (floats or 0-d tensors)."""
        raise NotImplementedError

    def after_optimizer_step(self, step: int) -> None:
        """Called after every optimizer step (``step`` = steps taken so far), e.g. to update an EMA of the weights."""

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


# ------------------------------------------------------------------------------------------------ fit


def fit(task: Task, cfg: TrainConfig, out_dir: str | Path, extra: dict | None = None) -> dict:
    """Train ``task`` per ``cfg`` into ``out_dir``; resume from ``out_dir/checkpoint.pt`` if present.

    Returns the final metrics; rank 0 writes them once to ``out_dir/metrics.json`` with ``extra`` (the stage's own
    keys) merged in, and the task's per-image results to ``predictions.npz`` beside it.
    """
    env = D.init_distributed(cfg.device)
    if env.device.type == "cpu":
        # values below 1.2e-38 (AdamW's second moments of tiny gradients, late in a decaying schedule) make x86
        # arithmetic tens of times slower; flushing them to zero kept cpu-tiny at 434-443 img/s in epochs 2-3
        # instead of 387-393 (same loss to 4 decimals)
        torch.set_flush_denormal(True)
    try:
        with run_lock(out_dir) if env.is_main else contextlib.nullcontext():  # one writer per run folder
            return _Trainer(task, cfg, Path(out_dir), env).run(extra or {})
    finally:
        D.shutdown(env)


def _agreed_precision(amp: str, env: D.DistEnv) -> Precision:
    """:func:`mae.engine.precision.resolve` for this run; under torchrun every rank takes rank 0's choice (nodes
    of a cluster may have different CPUs, and the ranks must compute alike)."""
    precision = resolve(amp, env.device)
    if env.distributed:
        precision = D.all_gather_object(env, precision)[0]
    return precision


def write_outputs(out_dir: str | Path, metrics: dict, per_image: dict | None = None) -> dict:
    """The end of every stage: ``predictions.npz`` (per-image results), then ``metrics.json``."""
    write_per_image(out_dir, per_image or {})
    atomic_write_json(Path(out_dir) / METRICS, metrics)
    return metrics


class _Trainer:
    """The state of one :func:`fit`: model, optimizer, position (epoch, step) and clock; one method per phase
    (restore, train one epoch, one optimisation step, checkpoint, evaluate, finish)."""

    def __init__(self, task: Task, cfg: TrainConfig, out_dir: Path, env: D.DistEnv) -> None:
        self.task, self.cfg, self.out_dir, self.env = task, cfg, out_dir, env
        self.device = env.device
        self.precision = _agreed_precision(cfg.amp, env)
        self.clock = Clock()
        self.t_start = time.perf_counter()
        self.ckpt_path = out_dir / CHECKPOINT
        self.epoch, self.step, self.wall_prev = 0, 0, 0.0
        self.start_iter = 0  # > 0: resuming inside an epoch (a preempted run)
        self.resumed_meters: list | None = None  # the loss sums of that epoch before the stop (one per rank)
        self.meter = Meter()
        self.preempt: list[int] = []  # a signal number once a preemption signal arrived
        self.last: dict = {"loss": float("nan"), "img_s": 0.0}
        self.log_file = None
        self.curves: Curves | None = None
        if env.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(out_dir)  # of writes a kill interrupted
        D.barrier(env)

    # ---- phases
    def run(self, extra: dict) -> dict:
        """Train and finish (``extra`` is merged into metrics.json)."""
        ckpt = checkpoint_to_resume(self.out_dir, self.cfg, self.env.is_main)
        if ckpt is not None and ckpt.get("finished"):
            metrics = read_metrics(self.out_dir)
            if metrics is not None:  # nothing to train: hand back the trained weights and the metrics
                self.task.device = self.device
                self.task.model.to(self.device).load_state_dict(ckpt["model"])
                self.task.load_state_dict(ckpt.get("task") or {})
                return metrics
        self._build(ckpt)
        finished = bool(ckpt and ckpt.get("finished"))
        loader = epoch_loader(self.task.train_loader(), self.env, self.cfg)
        per_process = loader.loader.batch_size  # None: a custom batch sampler (cfg.batch_size is then recorded)
        self.plan = batch_plan(
            self.cfg, self.env.world_size, per_process and per_process * self.env.world_size * self.cfg.accum_iter
        )
        self.iters = (len(loader) // self.cfg.accum_iter) * self.cfg.accum_iter
        if self.iters == 0 and not finished:
            raise UserError(
                f"the training loader gives {len(loader)} batches per process, fewer than "
                f"accum_iter={self.cfg.accum_iter}: lower batch_size/accum_iter or use more data"
            )
        self.ddp = D.wrap(self.env, self.model, self.task.find_unused_parameters)  # broadcasts rank 0's weights
        self.log_file = open(self.out_dir / LOG, "a") if self.env.is_main else None  # noqa: SIM115
        if self.env.is_main and self.cfg.tensorboard:
            self.curves = Curves(self.out_dir / TENSORBOARD, self.step + 1 if self.step else None)
        if self.env.is_main and not finished:
            print(f"precision: {self.precision.amp} ({self.precision.reason})", flush=True)
            self._log({"kind": "setup", "epoch": self.epoch, "step": self.step, **self.precision.record()})
        try:
            with preemption.deferred() as self.preempt:
                train_time, train_images = 0.0, 0
                while not finished and self.epoch < self.cfg.epochs:
                    seconds, images, finished = self._train_epoch(loader)
                    train_time, train_images = train_time + seconds, train_images + images
            return self._finish(train_time, train_images, extra)
        finally:
            if self.log_file is not None:
                self.log_file.close()
            if self.curves is not None:
                self.curves.close()

    def _build(self, ckpt: dict | None) -> None:
        """Model on the device, optimizer and scaler; the training state of ``ckpt`` restored when resuming."""
        task, cfg, env = self.task, self.cfg, self.env
        task.device, task.rank, task.world_size = self.device, env.rank, env.world_size
        self.model = task.model.to(self.device)
        self.peak_lr = effective_lr(cfg)
        if ckpt is None:
            seed_everything(cfg.seed + env.rank)
            if env.is_main:  # a start from zero (e.g. killed before its first checkpoint) starts a new log
                (self.out_dir / LOG).unlink(missing_ok=True)
                shutil.rmtree(self.out_dir / TENSORBOARD, ignore_errors=True)
        self.optimizer = task.optimizer(task.param_groups(cfg), self.peak_lr, cfg)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.amp == "fp16" else None
        if ckpt is not None:
            self._restore(ckpt)
        if cfg.compile:
            self.model.compile()

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.task.load_state_dict(ckpt.get("task") or {})
        self.start_iter = ckpt.get("next_iter", 0)  # > 0: saved inside epoch `epoch` (a preempted run)
        self.epoch = ckpt["epoch"] + (0 if self.start_iter else 1)
        self.step, self.wall_prev = ckpt["step"], ckpt.get("wall_s", 0.0)
        self.resumed_meters = ckpt.get("epoch_meters")
        self.last = ckpt.get("last", self.last)
        restore_rng(ckpt, self.env.rank, self.cfg.seed, self.epoch)
        if self.env.is_main:
            trim_log(self.out_dir / LOG, ckpt["epoch"], ckpt["step"] if self.start_iter else None)
            where = (
                f"iteration {self.start_iter} of epoch {self.epoch + 1}"
                if self.start_iter
                else f"epoch {ckpt['epoch'] + 1}"
            )
            print(f"resuming from {self.ckpt_path} after {where}", flush=True)

    def _train_epoch(self, loader: EpochLoader) -> tuple[float, int, bool]:
        """One epoch (or up to ``max_steps``); returns (seconds, images over all ranks, whether training is done)."""
        cfg, epoch = self.cfg, self.epoch
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        meter, self.window = Meter(), Meter()
        if self.start_iter and self.resumed_meters:  # resumed inside this epoch: its sums before the stop
            meter.restore(self.resumed_meters[min(self.env.rank, len(self.resumed_meters) - 1)])
        self.meter, self.resumed_meters = meter, None
        start, self.start_iter = self.start_iter, 0
        batches = loader.epoch(epoch, skip=start)
        bar = tqdm(
            total=self.iters,
            desc=f"{getattr(cfg, 'stage', 'train')} {epoch + 1}/{cfg.epochs}",
            disable=not self.env.is_main,
            dynamic_ncols=True,
            leave=False,
        )
        self.lr = lr_at(epoch, cfg, self.peak_lr)
        stop = False
        bar.update(start)
        for it in range(start, self.iters):
            with self.clock("data"):
                batch = next(batches)
            with self.clock("step"):
                value, stop = self._iteration(batch, it, meter)
            if (it + 1) % cfg.accum_iter == 0 and preempted(self.env, self.preempt):
                self._save(epoch, False, next_iter=it + 1)
                raise Preempted(
                    f"stopped by signal {self.preempt[0]} at epoch {epoch + 1}, iteration {it + 1}; "
                    f"the state is in {self.ckpt_path}: rerun the same command to resume"
                )
            bar.update(1)
            elapsed = time.perf_counter() - meter.start
            bar.set_postfix(
                loss=f"{value:.4f}",
                lr=f"{self.lr:.2e}",
                img_s=f"{meter.images * self.env.world_size / max(elapsed, 1e-9):.1f}",
            )
            if stop:
                break
        bar.close()
        del batches
        self.last = meter.means(self.env)
        self._log({"kind": "epoch", "epoch": epoch, "step": self.step, "lr": self.lr, **self.last})
        done = stop or epoch + 1 == cfg.epochs
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and not done:
            with self.clock("eval"), preemption.immediate():  # a stop signal here: resume from the last checkpoint
                result = self._evaluate()
            self._log({"kind": "eval", "epoch": epoch, "step": self.step, **result})
        if done or (epoch + 1) % cfg.save_every == 0:
            with self.clock("save"):
                self._save(epoch, done)
        self.epoch += 1
        return time.perf_counter() - meter.start, meter.images * self.env.world_size, done

    def _iteration(self, batch: Any, it: int, meter: Meter) -> tuple[float, bool]:
        """Forward + backward of one batch; an optimiser step every ``accum_iter`` batches. Returns (loss, stop)."""
        cfg = self.cfg
        if it % cfg.accum_iter == 0:
            self.lr = lr_at(self.epoch + it / self.iters, cfg, self.peak_lr)
            set_lr(self.optimizer, self.lr)
        steps = (it + 1) % cfg.accum_iter == 0
        with self._through_ddp(sync=steps):
            with self.precision.autocast(self.device):
                loss, n_images, extras = self.task.train_step(batch)
            value = float(loss.detach())
            self._check_finite(value, it)
            scaled = loss / cfg.accum_iter
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        meter.add(value, int(n_images), extras)
        self.window.add(value, int(n_images), extras)
        if not steps:
            return value, False
        self._optimizer_step()
        self.step += 1
        self.task.after_optimizer_step(self.step)
        if self.step % cfg.log_every == 0:
            self._log(
                {"kind": "step", "epoch": self.epoch, "step": self.step, "lr": self.lr, **self.window.means(self.env)}
            )
            self.window = Meter()
        return value, cfg.max_steps is not None and self.step >= cfg.max_steps

    @contextlib.contextmanager
    def _through_ddp(self, sync: bool):
        """``task.model`` is the DDP wrapper for one forward/backward; ``no_sync`` unless the step ends here
        (gradient accumulation all-reduces once per optimizer step)."""
        if self.ddp is self.model:
            yield
            return
        self.task.model = self.ddp
        try:
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                yield
        finally:
            self.task.model = self.model

    def _check_finite(self, value: float, it: int) -> None:
        bad = not math.isfinite(value)
        if self.env.distributed:
            bad = D.all_reduce_mean(self.env, [float(bad)])[0] > 0
        if bad:
            kept = (
                f"the last good checkpoint {self.ckpt_path} is kept"
                if self.ckpt_path.exists()
                else "no checkpoint was written"
            )
            raise NonFiniteLossError(
                f"non-finite loss {value} at epoch {self.epoch} step {self.step} (iteration {it}); {kept}"
            )

    def _optimizer_step(self) -> None:
        """Clip, step (through the GradScaler under fp16), zero; DDP averaged the gradients during backward."""
        clip = self.cfg.clip_grad
        if self.scaler is not None:
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _save(self, epoch: int, done: bool, next_iter: int = 0) -> None:
        """Checkpoint after epoch ``epoch`` or, with ``next_iter``, inside it (resume at that iteration)."""

        def contents(rngs: list[dict], meters: list[dict] | None) -> dict:
            return {
                "model": self.task.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "epoch": epoch,
                "next_iter": next_iter,
                "step": self.step,
                "rng": rngs[0],
                "rng_ranks": rngs,
                "config": config_to_dict(self.cfg),
                "stage": getattr(self.cfg, "stage", "train"),
                "task": self.task.state_dict(),
                "finished": done,
                "last": self.last,
                "reports": True,
                "epoch_meters": meters,
                "wall_s": self.wall_prev + time.perf_counter() - self.t_start,
                "world_size": self.env.world_size,
            }

        # inside an epoch: its loss sums so far, so that the resumed epoch's logged loss covers all its iterations
        save_checkpoint(self.ckpt_path, self.env, contents, self.meter.partial() if next_iter else None)

    def _evaluate(self) -> dict:
        """The task's evaluation, on a fork of torch's global RNG: a DataLoader draws its base seed from that RNG,
        which training draws from too (dropout, drop path), so without the fork `eval_every` would change the
        trained model."""
        self.model.eval()
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad(), self.precision.autocast(self.device):
            result = self.task.evaluate() or {}
        self.model.train()
        return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in result.items()}

    def _finish(self, train_time: float, train_images: int, extra: dict) -> dict:
        started = time.perf_counter()
        final = self._evaluate()
        img_s = train_images / train_time if train_time > 0 else self.last.get("img_s", 0.0)
        timing = self.clock.report(train_time, train_images, self.env.world_size)
        timing["time_s"]["final_eval"] = round(time.perf_counter() - started, 3)
        metrics = {
            "train_loss": self.last.get("loss"),
            "epochs": self.epoch,
            "steps": self.step,
            "wall_s": self.wall_prev + time.perf_counter() - self.t_start,
            "img_s": img_s,
            **timing,
            **self.precision.record(),
            "lr": self.peak_lr,
            **self.plan,
            "config": config_to_dict(self.cfg),
            **final,
            **extra,
        }
        if self.env.is_main:
            self._log({"kind": "eval", "epoch": self.epoch - 1, "step": self.step, **final})
            write_outputs(self.out_dir, metrics, self.task.per_image())
            self._log({"kind": REPORTED, "epoch": self.epoch - 1, "step": self.step})
        D.barrier(self.env)
        return metrics

    def _log(self, record: dict) -> None:
        if self.log_file is not None:
            try:
                self.log_file.write(json.dumps(record) + "\n")
                self.log_file.flush()
                if self.curves is not None:
                    self.curves.add(record)
            except OSError as err:  # a full disk, a quota
                raise UserError(f"cannot write {self.out_dir / LOG}: {err.strerror}") from None
