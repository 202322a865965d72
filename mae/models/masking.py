"""Which patches the encoder sees: random, block-wise (BEiT-style) and grid samplers behind one interface.

Every sampler keeps the same number of patches in each image of a batch (so kept tokens stack into one
tensor) and returns a :class:`MaskSample` in the layout of the reference random masking:

- ``ids_keep``    (N, K) long — indices of the kept patches (the encoder's input order),
- ``mask``        (N, L) float — 1 = removed, 0 = kept, in the original row-major patch order,
- ``ids_restore`` (N, L) long — ``argsort`` of the shuffle: gathering ``[kept, removed]`` tokens with it
  restores the original patch order.

The random sampler is the exact reference draw (docs/ARCHITECTURE.md, "Reference facts"): one
``torch.rand(N, L)`` on the input's
device, ``argsort`` twice, keep the first ``int(L * (1 - ratio))`` — so masks equal the original code's for
the same seed. The other samplers build a boolean mask and convert it with :func:`sample_from_mask`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from mae.errors import UserError
from mae.registry import choices


@dataclass
class MaskSample:
    ids_keep: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor

    def rows(self, index: slice) -> MaskSample:
        return MaskSample(self.ids_keep[index], self.mask[index], self.ids_restore[index])


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Reference count of kept patches: ``int(L * (1 - ratio))``. A study's ratio is checked once, by the
    ``mask_ratio`` knob (mae.registry.knobs); here only the count (0 keeps every patch: feature extraction)."""
    kept = int(num_patches * (1 - mask_ratio))
    if not 1 <= kept <= num_patches:
        raise UserError(f"mask_ratio {mask_ratio} keeps {kept} of {num_patches} patches (must keep 1 to all)")
    return kept


def sample_from_mask(removed: torch.Tensor) -> MaskSample:
    """Boolean (N, L) mask (True = removed, same count per row) -> MaskSample; kept ids in raster order."""
    counts = removed.sum(dim=1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("every image of a batch must remove the same number of patches")
    len_keep = removed.shape[1] - int(counts[0])
    ids_shuffle = torch.argsort(removed.to(torch.uint8), dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    return MaskSample(ids_shuffle[:, :len_keep], removed.to(torch.float32), ids_restore)


class MaskSampler:
    """Interface: ``sampler(batch_size, grid_size, mask_ratio, device, generator=None) -> MaskSample``.

    With a (CPU) ``generator`` every random draw comes from it, so a training run can keep its mask stream
    apart from the global RNG (see :func:`draw_for_rank`); without one, samplers draw from torch's global RNG.
    """

    name = "base"

    def __call__(
        self,
        batch_size: int,
        grid_size: tuple[int, int],
        mask_ratio: float,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> MaskSample:
        raise NotImplementedError


class RandomSampler(MaskSampler):
    """Uniform random subset per image — the reference draw, bit-identical to the original code."""

    name = "random"

    def __call__(self, batch_size, grid_size, mask_ratio, device="cpu", generator=None):
        num_patches = grid_size[0] * grid_size[1]
        len_keep = num_kept(num_patches, mask_ratio)
        if generator is None:
            noise = torch.rand(batch_size, num_patches, device=device)
        else:
            noise = torch.rand(batch_size, num_patches, generator=generator).to(device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = torch.ones(batch_size, num_patches, device=device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return MaskSample(ids_shuffle[:, :len_keep], mask, ids_restore)


class BlockSampler(MaskSampler):
    """BEiT-style block-wise masking: large random rectangles until the removal count is reached.

    Each attempt draws a block area uniformly in [min_block, remaining] patches and an aspect ratio
    log-uniformly in [min_aspect, 1/min_aspect]; a block is accepted when it removes between 1 and
    ``remaining`` new patches. After ``max_attempts`` failed attempts in a row, the count is completed with
    uniformly random extra patches, so every image removes exactly ``L - int(L*(1-ratio))`` patches.
    ``min_block`` defaults to the BEiT proportion (16 of 196 patches), at least 1.
    """

    name = "block"

    def __init__(self, min_aspect: float = 0.3, min_block: int | None = None, max_attempts: int = 10):
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.min_block = min_block
        self.max_attempts = max_attempts

    def _one(self, rng: random.Random, gh: int, gw: int, target: int, min_block: int) -> torch.Tensor:
        removed = torch.zeros(gh, gw, dtype=torch.bool)
        count = 0
        while count < target:
            remaining = target - count
            placed = False
            for _ in range(self.max_attempts):
                area = rng.uniform(min_block, max(min_block, remaining))
                aspect = math.exp(rng.uniform(*self.log_aspect))
                h = int(round(math.sqrt(area * aspect)))
                w = int(round(math.sqrt(area / aspect)))
                if not (1 <= h <= gh and 1 <= w <= gw):
                    continue
                top, left = rng.randint(0, gh - h), rng.randint(0, gw - w)
                block = removed[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= remaining:
                    block.fill_(True)
                    count += new
                    placed = True
                    break
            if not placed:
                break
        if count < target:  # fix up exactly: remove random extra patches
            free = (~removed).flatten().nonzero().flatten().tolist()
            extra = rng.sample(free, target - count)
            removed.view(-1)[extra] = True
        return removed.flatten()

    def __call__(self, batch_size, grid_size, mask_ratio, device="cpu", generator=None):
        gh, gw = grid_size
        num_patches = gh * gw
        target = num_patches - num_kept(num_patches, mask_ratio)
        min_block = self.min_block or max(1, round(num_patches * 16 / 196))
        # seeded from torch's generator so torch.manual_seed makes block masks reproducible
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator).item()))
        removed = torch.stack([self._one(rng, gh, gw, target, min_block) for _ in range(batch_size)])
        return sample_from_mask(removed.to(device))


class GridSampler(MaskSampler):
    """Regular grid: keep one patch of every s×s group (s = 2 ↔ ratio 0.75; s = 3 ↔ 8/9).

    The kept patch is the top-left one of each group (``random_offset=True`` picks one offset per image).
    ``mask_ratio`` must equal ``1 - 1/s**2`` for an integer s dividing both grid sides.
    """

    name = "grid"

    def __init__(self, random_offset: bool = False):
        self.random_offset = random_offset

    def __call__(self, batch_size, grid_size, mask_ratio, device="cpu", generator=None):
        gh, gw = grid_size
        stride = round(1 / math.sqrt(1 - mask_ratio)) if mask_ratio < 1 else 0
        if stride < 1 or abs((1 - 1 / stride**2) - mask_ratio) > 1e-6:
            raise UserError(f"sampler 'grid' needs mask_ratio = 1 - 1/s^2 (e.g. 0.75), got {mask_ratio}")
        if gh % stride or gw % stride:
            raise UserError(f"sampler 'grid' with stride {stride} needs a patch grid divisible by it, got {gh}x{gw}")
        rows = torch.arange(gh).view(gh, 1)
        cols = torch.arange(gw).view(1, gw)
        if self.random_offset:
            offsets = torch.randint(0, stride, (batch_size, 2), generator=generator)
        else:
            offsets = torch.zeros(batch_size, 2, dtype=torch.long)
        kept = ((rows[None] % stride) == offsets[:, 0, None, None]) & (
            (cols[None] % stride) == offsets[:, 1, None, None]
        )
        return sample_from_mask((~kept).reshape(batch_size, gh * gw).to(device))


def draw_for_rank(
    sampler: MaskSampler,
    batch_size: int,
    grid_size: tuple[int, int],
    mask_ratio: float,
    device: torch.device | str,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> MaskSample:
    """This process's rows of the masks of the whole global batch: ``world_size × batch_size`` masks drawn from
    ``generator`` (in the same state on every rank), rows ``rank::world_size`` kept — the rows of the images a
    :class:`~torch.utils.data.DistributedSampler` gives this rank. So image *i* of a global batch gets the same
    mask whatever the number of processes (a 2-node run equals a 1-process run with the same global batch)."""
    sample = sampler(batch_size * world_size, grid_size, mask_ratio, device=device, generator=generator)
    return sample if world_size == 1 else sample.rows(slice(rank, None, world_size))


def register_sampler(name: str, cls: type[MaskSampler]) -> None:
    """Add a sampler in this process (a plug-in package declares an entry point instead, which every process
    sees: :mod:`mae.registry.choices`)."""
    choices.register("sampling", name, cls)


def build_sampler(name: str | MaskSampler) -> MaskSampler:
    """Sampler by its name in the ``sampling`` choice table (mae.registry.choices), or an instance passed through."""
    if isinstance(name, MaskSampler):
        return name
    return choices.load("sampling", name)()
