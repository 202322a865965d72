"""The one training loop used by every stage: :class:`Task` says what to train, :func:`fit` trains it.

``fit`` owns everything about iterating: per-iteration warmup + cosine lr (times each group's
``lr_scale``), gradient accumulation, autocast (``amp``: the precision :mod:`mae.engine.precision` picks for the
device; fp16 with a GradScaler), gradient
clipping, non-finite loss detection, data parallelism under torchrun (``DistributedDataParallel``, global
batch split over processes and accumulation steps), per-image seeded augmentation, atomic checkpoints with
exact resume, JSON-lines logs, a tqdm bar with images/s and the final ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler
from tqdm.auto import tqdm

from mae.config import TrainConfig, batch_plan, config_to_dict, effective_lr
from mae.engine import distributed as D
from mae.engine.optim import build_optimizer, lr_at, param_groups_weight_decay, set_lr
from mae.engine.precision import Precision, resolve
from mae.errors import Preempted, UserError
from mae.models.checkpoint import read_checkpoint
from mae.utils import preemption
from mae.utils.io import atomic_torch_save, atomic_write_json, atomic_write_text, remove_stale_temps, write_per_image
from mae.utils.lock import run_lock

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
METRICS = "metrics.json"
# keys that may change between a run and its resumption (they do not change what is computed)
RUNTIME_KEYS = {
    "device",
    "num_workers",
    "log_every",
    "save_every",
    "eval_every",
    "compile",
    "max_steps",
    "tensorboard",
    "on_change",
    "roofline",
}  # (a key of pretraining checkpoints written before the roofline left the job's path)
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


# ------------------------------------------------------------------------------------------------ helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    """Every RNG's state as tensors and plain values (a checkpoint then loads with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    np.random.set_state(numpy_state)  # (checkpoints written before it was a dict hold numpy's own tuple)
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


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

    def epoch(self, epoch: int, skip: int = 0):
        """The batches of ``epoch``, from batch ``skip`` on (a resume inside the epoch). Our own sampler skips
        by index, so skipped batches are not loaded; augmentations are seeded per image, so the rest of the
        epoch is bit-identical to an uninterrupted run. A custom sampler's batches are loaded and dropped."""
        sampler = self.loader.sampler if self.loader.batch_sampler is None else self.loader.batch_sampler
        for s in (sampler, getattr(sampler, "sampler", None)):
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)
        if self.generator is not None:  # worker seeds (and any generator draw) depend on (seed, epoch, rank)
            self.generator.manual_seed((self.seed * 1_000_003 + epoch * 10_007 + self.rank) % 2**63)
        if not skip:
            return iter(self.loader)
        if self.generator is None:
            batches = iter(self.loader)
            for _ in range(skip):
                next(batches)
            return batches
        rest = list(self.loader.sampler)[skip * self.loader.batch_size :]
        return iter(_with_sampler(self.loader, rest))


class _SeededIndices(Sampler):
    """A :class:`DistributedSampler` whose items are ``(index, epoch)``, for :class:`_SeededDataset`."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((i, self.epoch) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class _SeededDataset(Dataset):
    """``dataset[index]`` with torch's and Python's RNGs (what torchvision's and timm's per-image transforms
    draw from) seeded from (seed, epoch, index) for the call and restored afterwards: an image's augmentation
    depends on nothing else — not the rank, the number of processes or workers, nor the batches before it.
    One by one ~40 µs per image; batched (``__getitems__``, the DataLoader's fetch), the seeds are all it adds."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _seeds(self, index: int, epoch: int) -> tuple[int, int]:
        """(torch seed, python seed) of image ``index`` in ``epoch``: a BLAKE2b hash of the three numbers (~1 µs;
        the same on every platform and Python version)."""
        digest = hashlib.blake2b(struct.pack("<3q", self.seed, epoch, index), digest_size=16).digest()
        return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        torch_seed, py_seed = self._seeds(index, epoch)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(torch_seed)
            random.seed(py_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list:
        """A batch: transformed at once where the dataset can (``batch_items``, each image's draws from its own
        seed: the same images as one by one), else image by image."""
        if getattr(self.dataset, "batchable", False):
            return self.dataset.batch_items([i for i, _ in keys], [self._seeds(i, e)[0] for i, e in keys])
        return [self[k] for k in keys]


def _with_sampler(
    loader: DataLoader,
    sampler: Any,
    generator: torch.Generator | None = None,
    worker_init_fn: Any = None,
    dataset: Dataset | None = None,
    batch_size: int | None = None,
) -> DataLoader:
    """``loader`` with another sampler (same batch size, workers, collate…; its generator, worker init, dataset and
    batch size unless others are given)."""
    kwargs: dict[str, Any] = {}
    if loader.num_workers > 0:
        kwargs = {
            "prefetch_factor": loader.prefetch_factor,
            "multiprocessing_context": loader.multiprocessing_context,
            "persistent_workers": loader.persistent_workers,
        }
    return DataLoader(
        dataset or loader.dataset,
        batch_size=batch_size or loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=worker_init_fn or loader.worker_init_fn,
        generator=generator or loader.generator,
        **kwargs,
    )


def _epoch_loader(loader: DataLoader, env: D.DistEnv, cfg: TrainConfig) -> _EpochLoader:
    """A plain random/sequential loader of the global batch -> the per-process batch, a seeded DistributedSampler
    (rank r takes the images r, r + W, … of each shuffled epoch, so a global batch holds the same images for any
    world size W) and per-image seeded augmentation (:class:`_SeededDataset`). A custom sampler is kept (its
    ``set_epoch`` called), its batch taken as per process."""
    plain = loader.batch_size is not None and isinstance(loader.sampler, (RandomSampler, SequentialSampler))
    if not plain:
        return _EpochLoader(loader, None, cfg.seed, env.rank)
    per_process = batch_plan(cfg, env.world_size, loader.batch_size)["batch_per_process"]
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=env.world_size,
        rank=env.rank,
        shuffle=shuffle,
        seed=cfg.seed,
        drop_last=loader.drop_last,
    )
    generator = torch.Generator()
    new = _with_sampler(
        loader,
        _SeededIndices(sampler),
        generator,
        _chain_worker_init(loader.worker_init_fn),
        dataset=_SeededDataset(loader.dataset, cfg.seed),
        batch_size=per_process,
    )
    return _EpochLoader(new, generator, cfg.seed, env.rank)


@dataclass
class _Meter:
    """Sums over a window: loss, images, extras, time."""

    loss: float = 0.0
    count: int = 0
    images: int = 0
    extras: dict = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def partial(self) -> dict:
        """The sums that a resume continues (not the images and time: the rate is the resumed part's)."""
        return {"loss": self.loss, "count": self.count, "extras": dict(self.extras)}

    def restore(self, state: dict) -> None:
        self.loss, self.count, self.extras = state["loss"], state["count"], dict(state["extras"])

    def add(self, loss: float, images: int, extras: dict) -> None:
        self.loss += loss
        self.count += 1
        self.images += images
        for k, v in extras.items():
            self.extras[k] = self.extras.get(k, 0.0) + float(v)

    def means(self, env: D.DistEnv) -> dict:
        """Window means (loss, extras) and images/s over all ranks."""
        keys = sorted(self.extras)
        n = max(self.count, 1)
        vals = D.all_reduce_mean(env, [self.loss / n] + [self.extras[k] / n for k in keys])
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {"loss": vals[0], "img_s": self.images * env.world_size / elapsed}
        out.update(zip(keys, vals[1:]))
        return out


class _Clock:
    """Where a run's training time goes, in seconds of this process: waiting for batches (``data``), the
    forward/backward/optimizer steps (``step``), evaluations (``eval``) and checkpoints (``save``).
    ``metrics.json`` reports it as ``time_s`` and the stage's own step rate as ``step_img_s`` (images per
    second of ``step`` time), beside ``img_s`` (images per second of the whole epochs)."""

    PARTS = ("data", "step", "eval", "save")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PARTS, 0.0)

    @contextlib.contextmanager
    def __call__(self, part: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start

    def report(self, train_time: float, train_images: int, world_size: int) -> dict:
        """``time_s`` (the parts and ``other``: progress bar, logging, lr schedule) and ``step_img_s``."""
        parts = {k: round(v, 3) for k, v in self.seconds.items()}
        parts["other"] = round(max(train_time - sum(self.seconds.values()), 0.0), 3)
        step = self.seconds["step"]
        return {
            "time_s": parts,
            "step_img_s": train_images / step if step > 0 else None,
            "data_img_s": train_images / world_size / self.seconds["data"] if self.seconds["data"] > 0 else None,
        }


class _Curves:
    """The log records as TensorBoard scalars in ``OUT/tensorboard`` (``tensorboard --logdir results/runs``):
    ``train/*`` per logged optimizer step, ``epoch/*`` per epoch, ``eval/*``; x = optimizer step. A resumed run
    purges the events written after its checkpoint (``purge_step``), as ``log.jsonl`` is trimmed."""

    SECTIONS = {"step": "train", "epoch": "epoch", "eval": "eval"}

    def __init__(self, folder: Path, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported only when curves are written

        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def add(self, record: dict) -> None:
        section = self.SECTIONS.get(record.get("kind", ""))
        if section is None:
            return
        for key, value in record.items():
            if key not in ("kind", "epoch", "step") and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{section}/{key}", value, record.get("step", 0))

    def close(self) -> None:
        self.writer.close()


def _read_metrics(out_dir: Path) -> dict | None:
    path = out_dir / METRICS
    if path.exists():
        return json.loads(path.read_text())
    return None


#: config keys renamed since a checkpoint may have been written (old -> new)
RENAMED_KEYS = {"sampler": "sampling"}


def changed_setting(ckpt: dict, cfg: TrainConfig, path: Path) -> str | None:
    """Why ``ckpt`` (a checkpoint, or a metrics.json: both carry ``config``) was not made with ``cfg`` (the first
    setting that differs, :data:`RUNTIME_KEYS` aside), or None."""
    old = {RENAMED_KEYS.get(k, k): v for k, v in ckpt.get("config", {}).items()}
    new = config_to_dict(cfg)
    for key in sorted(set(old) | set(new)):
        if key not in RUNTIME_KEYS and old.get(key) != new.get(key) and not _same_precision(key, old, new):
            return f"{path} was trained with {key}={old.get(key)!r}, now {key}={new.get(key)!r}"
    return None


def _same_precision(key: str, old: dict, new: dict) -> bool:
    """``amp: auto`` and the precision it picks on this machine are one setting (checkpoints written before
    ``auto`` was the default say ``amp: bf16``)."""
    if key != "amp" or "auto" not in (old.get(key), new.get(key)):
        return False
    device = D.resolve_device(new.get("device") or "auto")
    try:
        return resolve(old.get(key), device).amp == resolve(new.get(key), device).amp
    except UserError:
        return False


#: the log record written after ``metrics.json``: its metrics were delivered (see ``_Trainer._read_checkpoint``)
REPORTED = "reported"


def _reported(out_dir: Path) -> bool:
    """Whether the run's log says its metrics were written once (then removed by someone: a rerun)."""
    path = out_dir / LOG
    if not path.exists():
        return False
    return any(f'"kind": "{REPORTED}"' in line for line in path.read_text(encoding="utf-8").splitlines())


def _trim_log(path: Path, last_epoch: int, last_step: int | None = None) -> None:
    """Drop log lines written after the checkpoint we resume from: after epoch ``last_epoch``, or (a checkpoint
    inside an epoch) after step ``last_step`` of it."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        epoch = record.get("epoch", -1)
        if epoch < last_epoch or (epoch == last_epoch and (last_step is None or record.get("step", 0) <= last_step)):
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


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
        self.clock = _Clock()
        self.t_start = time.perf_counter()
        self.ckpt_path = out_dir / CHECKPOINT
        self.epoch, self.step, self.wall_prev = 0, 0, 0.0
        self.start_iter = 0  # > 0: resuming inside an epoch (a preempted run)
        self.resumed_meters: list | None = None  # the loss sums of that epoch before the stop (one per rank)
        self.meter = _Meter()
        self.preempt: list[int] = []  # a signal number once a preemption signal arrived
        self.last: dict = {"loss": float("nan"), "img_s": 0.0}
        self.log_file = None
        self.curves: _Curves | None = None
        if env.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(out_dir)  # of writes a kill interrupted
        D.barrier(env)

    # ---- phases
    def run(self, extra: dict) -> dict:
        """Train and finish (``extra`` is merged into metrics.json)."""
        ckpt = self._read_checkpoint()
        if ckpt is not None and ckpt.get("finished"):
            metrics = _read_metrics(self.out_dir)
            if metrics is not None:  # nothing to train: hand back the trained weights and the metrics
                self.task.device = self.device
                self.task.model.to(self.device).load_state_dict(ckpt["model"])
                self.task.load_state_dict(ckpt.get("task") or {})
                return metrics
        self._build(ckpt)
        finished = bool(ckpt and ckpt.get("finished"))
        loader = _epoch_loader(self.task.train_loader(), self.env, self.cfg)
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
            self.curves = _Curves(self.out_dir / TENSORBOARD, self.step + 1 if self.step else None)
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

    def _read_checkpoint(self) -> dict | None:
        if not self.ckpt_path.exists():
            return None
        ckpt = read_checkpoint(self.ckpt_path)
        problem = changed_setting(ckpt, self.cfg, self.ckpt_path)
        if self.cfg.on_change == "restart":
            if (
                problem is None
                and ckpt.get("finished")
                and not (self.out_dir / METRICS).exists()
                and (_reported(self.out_dir) or not ckpt.get("reports"))
            ):
                # Snakemake deletes a job's outputs before rerunning it, and reruns a finished job only when
                # its settings or inputs changed: the weights belong to the old inputs. (A finished checkpoint
                # whose metrics were never written — the process was killed in between — is finished instead.)
                problem = f"{self.ckpt_path} is finished but its {METRICS} is gone (a rerun for changed inputs)"
            if problem is not None:
                if self.env.is_main:
                    print(f"{problem}: training from scratch (on_change=restart)", flush=True)
                return None
        if problem is not None:
            raise UserError(f"{problem}: use another --out folder or delete the checkpoint to restart")
        return ckpt

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
        states = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if self.env.rank < len(states):
            _set_rng_state(states[self.env.rank])
        else:
            seed_everything(self.cfg.seed + self.env.rank + 7919 * self.epoch)
        if self.env.is_main:
            _trim_log(self.out_dir / LOG, ckpt["epoch"], ckpt["step"] if self.start_iter else None)
            where = (
                f"iteration {self.start_iter} of epoch {self.epoch + 1}"
                if self.start_iter
                else f"epoch {ckpt['epoch'] + 1}"
            )
            print(f"resuming from {self.ckpt_path} after {where}", flush=True)

    def _train_epoch(self, loader: _EpochLoader) -> tuple[float, int, bool]:
        """One epoch (or up to ``max_steps``); returns (seconds, images over all ranks, whether training is done)."""
        cfg, epoch = self.cfg, self.epoch
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        meter, self.window = _Meter(), _Meter()
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
            if (it + 1) % cfg.accum_iter == 0 and self._preempted():
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

    def _iteration(self, batch: Any, it: int, meter: _Meter) -> tuple[float, bool]:
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
            self.window = _Meter()
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

    def _preempted(self) -> bool:
        """Whether a preemption signal reached this rank (any rank, when distributed: all stop together)."""
        if self.env.distributed:
            return D.all_reduce_mean(self.env, [float(bool(self.preempt))])[0] > 0
        return bool(self.preempt)

    def _save(self, epoch: int, done: bool, next_iter: int = 0) -> None:
        """Checkpoint after epoch ``epoch`` or, with ``next_iter``, inside it (resume at that iteration)."""
        env = self.env
        rngs = D.all_gather_object(env, _rng_state())
        # inside an epoch: its loss sums so far, so that the resumed epoch's logged loss covers all its iterations
        meters = D.all_gather_object(env, self.meter.partial()) if next_iter else None
        if env.is_main:
            atomic_torch_save(
                {
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
                    "world_size": env.world_size,
                },
                self.ckpt_path,
            )
        D.barrier(env)

    def _evaluate(self) -> dict:
        self.model.eval()
        with torch.no_grad(), self.precision.autocast(self.device):
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
