"""The seeded randomness of a run, for :func:`mae.engine.fit` (:mod:`mae.engine.loop`) and its resume
(:mod:`mae.engine.resume`): :func:`seed_everything` seeds the global RNGs, and :func:`epoch_loader` re-makes a
stage's loader so that the data order depends only on (seed, epoch, rank) and every image's augmentation only on
(seed, epoch, image index) (:class:`SeededDataset`) — a resumed or re-sharded run sees the same batches.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from mae.config import TrainConfig, batch_plan
from mae.engine import distributed as D


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
class EpochLoader:
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
    """A :class:`DistributedSampler` whose items are ``(index, epoch)``, for :class:`SeededDataset`."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((i, self.epoch) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class SeededDataset(Dataset):
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


def epoch_loader(loader: DataLoader, env: D.DistEnv, cfg: TrainConfig) -> EpochLoader:
    """A plain random/sequential loader of the global batch -> the per-process batch, a seeded DistributedSampler
    (rank r takes the images r, r + W, … of each shuffled epoch, so a global batch holds the same images for any
    world size W) and per-image seeded augmentation (:class:`SeededDataset`). A custom sampler is kept (its
    ``set_epoch`` called), its batch taken as per process."""
    plain = loader.batch_size is not None and isinstance(loader.sampler, (RandomSampler, SequentialSampler))
    if not plain:
        return EpochLoader(loader, None, cfg.seed, env.rank)
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
        dataset=SeededDataset(loader.dataset, cfg.seed),
        batch_size=per_process,
    )
    return EpochLoader(new, generator, cfg.seed, env.rank)
