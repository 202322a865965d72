"""What :func:`mae.engine.fit` measures while it trains, for the loop (:mod:`mae.engine.loop`): :class:`Meter` (the
loss, images and extras of a window: the logged means and images/s; its sums are checkpointed inside an epoch),
:class:`Clock` (where the training time goes: ``time_s`` in ``metrics.json``) and :class:`Curves` (the log records
as TensorBoard scalars).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from mae.engine import distributed as D


@dataclass
class Meter:
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


class Clock:
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


class Curves:
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
