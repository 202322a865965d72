"""Resuming a run of :func:`mae.engine.fit`, for the loop (:mod:`mae.engine.loop`): the run folder's files, the
checkpoint to resume from (refused, or ignored under ``on_change: restart``, when a setting changed), the log
trimmed back to it, every rank's RNG state saved and restored, the checkpoint write all ranks take part in and the
preemption check at an optimizer step. :func:`changed_setting` is also the check of stages that keep their own
outputs (``mae.stages.partial_ft``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mae.config import TrainConfig, config_to_dict
from mae.engine import distributed as D
from mae.engine.data_order import seed_everything
from mae.engine.precision import resolve
from mae.errors import UserError
from mae.models.checkpoint import read_checkpoint
from mae.utils.io import atomic_torch_save, atomic_write_text

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


def checkpoint_to_resume(out_dir: Path, cfg: TrainConfig, is_main: bool) -> dict | None:
    """The checkpoint in ``out_dir`` that a run with ``cfg`` resumes from, or None (train from scratch). One made
    with other settings is refused with a :class:`UserError`, or (``on_change: restart``) ignored, as is a
    finished one whose metrics were delivered and then deleted; rank 0 (``is_main``) says so."""
    ckpt_path = out_dir / CHECKPOINT
    if not ckpt_path.exists():
        return None
    ckpt = read_checkpoint(ckpt_path)
    problem = changed_setting(ckpt, cfg, ckpt_path)
    if cfg.on_change == "restart":
        if (
            problem is None
            and ckpt.get("finished")
            and not (out_dir / METRICS).exists()
            and (_reported(out_dir) or not ckpt.get("reports"))
        ):
            # Snakemake deletes a job's outputs before rerunning it, and reruns a finished job only when
            # its settings or inputs changed: the weights belong to the old inputs. (A finished checkpoint
            # whose metrics were never written — the process was killed in between — is finished instead.)
            problem = f"{ckpt_path} is finished but its {METRICS} is gone (a rerun for changed inputs)"
        if problem is not None:
            if is_main:
                print(f"{problem}: training from scratch (on_change=restart)", flush=True)
            return None
    if problem is not None:
        raise UserError(f"{problem}: use another --out folder or delete the checkpoint to restart")
    return ckpt


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


#: the log record written after ``metrics.json``: its metrics were delivered (see :func:`checkpoint_to_resume`)
REPORTED = "reported"


def _reported(out_dir: Path) -> bool:
    """Whether the run's log says its metrics were written once (then removed by someone: a rerun)."""
    path = out_dir / LOG
    if not path.exists():
        return False
    return any(f'"kind": "{REPORTED}"' in line for line in path.read_text(encoding="utf-8").splitlines())


def read_metrics(out_dir: Path) -> dict | None:
    """The run's ``metrics.json``, or None where it has none."""
    path = out_dir / METRICS
    if path.exists():
        return json.loads(path.read_text())
    return None


def trim_log(path: Path, last_epoch: int, last_step: int | None = None) -> None:
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


def restore_rng(ckpt: dict, rank: int, seed: int, epoch: int) -> None:
    """This rank's RNG states from ``ckpt``; a rank the checkpoint has none for (the run now has more processes)
    is seeded from (``seed``, ``rank``, ``epoch``: the epoch it resumes in)."""
    states = ckpt.get("rng_ranks") or [ckpt["rng"]]
    if rank < len(states):
        _set_rng_state(states[rank])
    else:
        seed_everything(seed + rank + 7919 * epoch)


def save_checkpoint(
    path: Path, env: D.DistEnv, contents: Callable[[list[dict], list[dict] | None], dict], meters: dict | None
) -> None:
    """Write a checkpoint; every rank calls it. Each rank's RNG states (and ``meters``, the sums of the epoch so
    far, when saving inside an epoch) are gathered; rank 0 writes ``contents(rngs, gathered meters)`` atomically
    to ``path``; all ranks wait for it."""
    rngs = D.all_gather_object(env, _rng_state())
    gathered = D.all_gather_object(env, meters) if meters is not None else None
    if env.is_main:
        atomic_torch_save(contents(rngs, gathered), path)
    D.barrier(env)


def preempted(env: D.DistEnv, signals: list[int]) -> bool:
    """Whether a preemption signal reached this rank (``signals``: those recorded; any rank's, when distributed:
    all stop together)."""
    if env.distributed:
        return D.all_reduce_mean(env, [float(bool(signals))])[0] > 0
    return bool(signals)
