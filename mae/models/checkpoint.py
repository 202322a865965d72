"""Reading and writing MAE checkpoints in the reference format: ``{'model': state_dict, ...}``.

Keys follow the original implementation (docs/ARCHITECTURE.md, "Reference facts"), so original pretrain checkpoints (full model) load
into :class:`~mae.models.MaskedAutoencoderViT` with ``strict=True``, and ours load into the original code.
Released pretrain files hold the encoder only; :func:`split_encoder_keys` separates the two halves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from mae.errors import UserError

DECODER_PREFIXES = ("decoder_", "mask_token", "encoder_mask_token")


def is_decoder_key(key: str) -> bool:
    """Keys used only in pretraining (decoder, mask tokens) — ignored when loading an encoder."""
    return key.startswith(DECODER_PREFIXES)


def _allowed_globals() -> list:
    """The Python objects a checkpoint may hold besides tensors, containers, numbers and strings — loaded through
    torch's ``weights_only`` allow-list, never by unpickling anything else: ``argparse.Namespace`` (the official MAE
    training checkpoints keep their arguments in one) and numpy arrays and scalars (the RNG states of our
    checkpoints written before they became tensors)."""
    import argparse

    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.float32, np.bool_)]
    return [argparse.Namespace, multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_checkpoint(path: str | Path, mmap: bool = False, option: str = "", kind: str = "checkpoint",
                    name: str | None = None) -> Any:
    """Load a ``torch.save`` file without running code from it: ``weights_only=True`` with the allow-list of
    :func:`_allowed_globals`. A file that needs any other Python object is refused with one line naming the
    file (``name``, e.g. the URL it came from, else its path) and the object; ``option`` (e.g. ``--init``)
    starts every message. ``mmap``: memory-map the tensors (zip-format files; older ones are read whole)."""
    path = Path(path)
    shown, lead = name or str(path), f"{option}: " if option else ""
    if not path.is_file():
        raise UserError(f"{lead}{kind} not found: {shown}")
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            if mmap:
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as err:
                    if "mmap" not in str(err):
                        raise
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - every unreadable file is one line naming it
            text = str(err)
            found = _GLOBAL.search(text)
            if found:
                raise UserError(f"{lead}{kind} {shown} refused: loading it needs the Python object "
                                f"'{found.group(1)}', which could run code (allowed: tensors, numbers, strings, "
                                "containers, numpy arrays, argparse.Namespace)") from None
            detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
            reason = f"not a file torch.save wrote ({detail[0]})" if "WeightsUnpickler" in text and detail else (
                text.strip().splitlines()[0] if text.strip() else type(err).__name__)
            raise UserError(f"{lead}cannot read {kind} {shown}: {reason}") from None


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint object: ``obj['model']``, ``obj['state_dict']`` or ``obj``."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
        if sd and all(isinstance(v, torch.Tensor) for v in sd.values()):
            bad = next((k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
            if bad is not None:
                raise UserError(f"{source}: weight '{bad}' holds NaN or inf values (a diverged run?): not loaded")
            return sd
    raise UserError(f"{source}: no model state dict found (expected {{'model': state_dict}})")


def load_state(path_or_state: str | Path | Mapping) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(path_or_state, (str, Path)):
        return extract_state_dict(read_checkpoint(path_or_state), str(path_or_state)), str(path_or_state)
    return extract_state_dict(path_or_state, "state dict"), "state dict"


def load_mae_checkpoint(model: nn.Module, path_or_state: str | Path | Mapping, strict: bool = True):
    """Load a full MAE checkpoint (encoder + decoder); with ``strict`` every key must match exactly."""
    sd, source = load_state(path_or_state)
    if strict:
        own = model.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            raise UserError(f"{source}: keys do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
        bad = [k for k in own if own[k].shape != sd[k].shape]
        if bad:
            raise UserError(f"{source}: shape mismatch for {bad[0]}: {tuple(sd[bad[0]].shape)} vs model {tuple(own[bad[0]].shape)}")
    return model.load_state_dict(sd, strict=strict)


def save_mae_checkpoint(model: nn.Module, path: str | Path, **extra: Any) -> None:
    """Write ``{'model': state_dict, **extra}`` atomically (reference format)."""
    from mae.utils.io import atomic_torch_save

    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    atomic_torch_save({"model": model.state_dict(), **extra}, path)


def split_encoder_keys(sd: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """(encoder part, pretraining-only part) of a MAE state dict."""
    enc = {k: v for k, v in sd.items() if not is_decoder_key(k)}
    dec = {k: v for k, v in sd.items() if is_decoder_key(k)}
    return enc, dec
