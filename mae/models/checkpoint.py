"""Reading and writing MAE checkpoints in the reference format: ``{'model': state_dict, ...}``.

Keys follow the original implementation (docs/ARCHITECTURE.md, "Reference facts"), so original pretrain
checkpoints (full model) load
into :class:`~mae.models.MaskedAutoencoderViT` with ``strict=True``, and ours load into the original code.
Released pretrain files hold the encoder only; :func:`split_encoder_keys` separates the two halves.

:func:`read_checkpoint` is the one loader of weights a user hands us, and it never unpickles anything but
tensors and plain values. Besides ``torch.save`` files it reads safetensors files (no pickle at all; ours record
their :func:`architecture` in the metadata key :data:`ARCH_KEY`) and model folders: a Hugging Face ViTMAE
folder (names translated by :mod:`mae.models.interop`) or a timm folder (``config.json`` + ``model.safetensors``).
Each comes back as ``{'model': state_dict in our names, 'config': {...}}``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mae.errors import UserError
from mae.models.interop import from_hf, is_hf_state, timm_model_name
from mae.models.specs import infer_model_name, model_specs

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


def read_checkpoint(
    path: str | Path, mmap: bool = False, option: str = "", kind: str = "checkpoint", name: str | None = None
) -> Any:
    """Load a ``torch.save`` file without running code from it: ``weights_only=True`` with the allow-list of
    :func:`_allowed_globals`. A file that needs any other Python object is refused with one line naming the
    file (``name``, e.g. the URL it came from, else its path) and the object; ``option`` (e.g. ``--init``)
    starts every message. ``mmap``: memory-map the tensors (zip-format files; older ones are read whole).
    A safetensors file (:func:`read_safetensors`) or a model folder (:func:`read_folder`) is read as well."""
    path = Path(path)
    shown, lead = name or str(path), f"{option}: " if option else ""
    if path.is_dir():
        return read_folder(path, option, shown)
    if not path.is_file():
        raise UserError(f"{lead}{kind} not found: {shown}")
    if is_safetensors(path):
        return read_safetensors(path, option, shown)
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
                raise UserError(
                    f"{lead}{kind} {shown} refused: loading it needs the Python object "
                    f"'{found.group(1)}', which could run code (allowed: tensors, numbers, strings, "
                    "containers, numpy arrays, argparse.Namespace)"
                ) from None
            detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
            reason = (
                f"not a file torch.save wrote ({detail[0]})"
                if "WeightsUnpickler" in text and detail
                else (text.strip().splitlines()[0] if text.strip() else type(err).__name__)
            )
            raise UserError(f"{lead}cannot read {kind} {shown}: {reason}") from None


def recorded_config(obj: Any) -> dict:
    """The settings a checkpoint records: our ``config`` (a dict), or the ``args`` of the official training files
    (an ``argparse.Namespace``); ``{}`` when there are none."""
    if not isinstance(obj, Mapping):
        return {}
    for key in ("config", "args", "meta"):
        section = obj.get(key)
        if isinstance(section, Mapping):
            return dict(section)
        if section is not None and hasattr(section, "__dict__"):
            return dict(vars(section))
    return {}


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint object: ``obj['model']``, ``obj['state_dict']`` or ``obj``."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}
        if sd and all(isinstance(v, torch.Tensor) for v in sd.values()):
            bad = next((k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
            if bad is not None:
                raise UserError(f"{source}: weight '{bad}' holds NaN or inf values (a diverged run?): not loaded")
            return sd
    raise UserError(f"{source}: no model state dict found (expected {{'model': state_dict}})")


def read_weights(path_or_state: str | Path | Mapping) -> tuple[dict[str, torch.Tensor], dict, str]:
    """(state dict, recorded settings, the source's name) of a checkpoint file, folder or object."""
    if isinstance(path_or_state, (str, Path)):
        obj, source = read_checkpoint(path_or_state), str(path_or_state)
    else:
        obj, source = path_or_state, "state dict"
    return extract_state_dict(obj, source), recorded_config(obj), source


def apply_layer_norm_eps(model: nn.Module, config: Mapping) -> float | None:
    """Give every LayerNorm of ``model`` the eps the weights were run with, when ``config`` records one (a Hugging
    Face ViTMAE config says 1e-12 where our models, timm's and the original code use 1e-6)."""
    eps = config.get("layer_norm_eps")
    if eps is None:
        return None
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = float(eps)
    return float(eps)


def load_mae_checkpoint(model: nn.Module, path_or_state: str | Path | Mapping, strict: bool = True):
    """Load a full MAE checkpoint (encoder + decoder); with ``strict`` every key must match exactly. A recorded
    ``layer_norm_eps`` (:func:`apply_layer_norm_eps`) is given to the model's LayerNorms."""
    sd, config, source = read_weights(path_or_state)
    apply_layer_norm_eps(model, config)
    if strict:
        own = model.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            raise UserError(
                f"{source}: keys do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        bad = [k for k in own if own[k].shape != sd[k].shape]
        if bad:
            raise UserError(
                f"{source}: shape mismatch for {bad[0]}: {tuple(sd[bad[0]].shape)} vs model {tuple(own[bad[0]].shape)}"
            )
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


# ------------------------------------------------------------------------------------------------ architecture


def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})


def encoder_shapes(sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """The encoder's architecture as far as the weights tell it: ``img_size``, ``patch_size``, ``in_chans``,
    ``embed_dim``, ``depth``, ``mlp_ratio`` (not the number of heads)."""
    try:
        proj, rows = sd["patch_embed.proj.weight"], int(sd["pos_embed"].shape[1]) - 1
        hidden = int(sd["blocks.0.mlp.fc1.weight"].shape[0])
    except KeyError as err:
        raise UserError(f"{source}: not the weights of a ViT or a MAE (no {err})") from None
    embed_dim, in_chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[-1])
    side = math.isqrt(rows)
    if side * side != rows:
        raise UserError(f"{source}: pos_embed has {rows} patch rows, not a square grid")
    return {
        "img_size": side * patch,
        "patch_size": patch,
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depth": _count_blocks(sd, "blocks."),
        "mlp_ratio": hidden / embed_dim,
    }


def architecture(sd: Mapping[str, torch.Tensor], config: Mapping | None = None, source: str = "checkpoint") -> dict:
    """What the weights ``sd`` are, as plain values (the JSON that travels with an export): our model name,
    ``kind`` ('mae': encoder + decoder, 'encoder', 'classifier': a fine-tuned ViT), the encoder (``img_size``,
    ``patch_size``, ``in_chans``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``layer_norm_eps``), a
    MAE's decoder (``decoder_width``, ``decoder_depth``, ``decoder_heads``, ``target``, ``mask_ratio``,
    ``sampling``, ``mask_token_in_encoder``) and a classifier's ``num_classes`` and ``global_pool``.

    Shapes come from the weights (:func:`encoder_shapes`). The numbers of heads are not in the weights: they come
    from ``config`` (the checkpoint's recorded settings, our names) or else from the named model. The model name
    comes from ``config``, or from the shapes and the recorded heads (a Hugging Face config records them)."""

    config = dict(config or {})
    shapes = encoder_shapes(sd, source)
    name = config.get("model")
    if not name and config.get("num_heads"):
        name = infer_model_name(
            shapes["patch_size"], shapes["embed_dim"], shapes["depth"], shapes["mlp_ratio"], int(config["num_heads"])
        )
    spec = model_specs().get(name, {})

    def heads(key: str, spec_key: str) -> int:
        value = config.get(key) or spec.get(spec_key)
        if value is None:
            raise UserError(
                f"{source}: the weights do not record their model, and '{key}' is not in them: "
                "name it (e.g. --model mae_vit_base_patch16)"
            )
        return int(value)

    arch = {
        "model": name,
        "kind": "encoder",
        **shapes,
        "num_heads": heads("num_heads", "num_heads"),
        "layer_norm_eps": float(config.get("layer_norm_eps") or 1e-6),
    }
    if "decoder_embed.weight" in sd:
        target = config.get("target") or ("norm_pixel" if config.get("norm_pix_loss") else "pixel")
        arch.update(
            kind="mae",
            decoder_width=int(sd["decoder_embed.weight"].shape[0]),
            decoder_depth=_count_blocks(sd, "decoder_blocks."),
            decoder_heads=heads("decoder_heads", "decoder_num_heads"),
            target=target,
            mask_ratio=float(config.get("mask_ratio", 0.75)),
            sampling=config.get("sampling") or "random",
            mask_token_in_encoder="encoder_mask_token" in sd,
        )
    if "head.weight" in sd:
        arch.update(
            kind="classifier",
            num_classes=int(sd["head.weight"].shape[0]),
            global_pool="avg" if "fc_norm.weight" in sd else "token",
        )
    return arch


# ------------------------------------------------------------------------------------------------ safetensors
#: the safetensors metadata key of our files: the JSON of :func:`architecture`
ARCH_KEY = "mae_architecture"
#: what every pretraining and fine-tuning run writes beside its checkpoint (pickle-free weights)
ENCODER_FILE = "encoder.safetensors"


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does: an 8-byte header length, then a JSON object."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def write_safetensors(path: str | Path, state: Mapping[str, torch.Tensor], arch: Mapping | None = None) -> Path:
    """``state`` as a safetensors file (atomically), with ``arch`` as JSON under :data:`ARCH_KEY` in its metadata."""
    from safetensors.torch import save_file

    from mae.utils.io import atomic_path

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {"format": "pt", **({ARCH_KEY: json.dumps(dict(arch), sort_keys=True)} if arch else {})}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def write_encoder_safetensors(path: str | Path, state: Mapping[str, torch.Tensor], config: Mapping) -> Path:
    """The encoder part of ``state`` (everything of a fine-tuned classifier) as ``path``, described by
    :func:`architecture` from ``config`` (the run's settings)."""
    encoder, _ = split_encoder_keys(state)
    return write_safetensors(path, encoder, architecture(encoder, config, str(path)))


def _safetensors(path: Path, lead: str, shown: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a damaged one is one line naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {key: fh.get_tensor(key) for key in fh.keys()}, dict(fh.metadata() or {})  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - the library raises several kinds
        raise UserError(f"{lead}cannot read safetensors file {shown}: {str(err).strip().splitlines()[0]}") from None


def read_safetensors(path: Path, option: str = "", shown: str | None = None) -> dict:
    """``{'model': tensors, 'config': architecture}`` of a safetensors file (``config`` only when it records one).
    The ``model.safetensors`` of a Hugging Face folder is read as that folder (its names translated)."""
    shown, lead = shown or str(path), f"{option}: " if option else ""
    state, metadata = _safetensors(path, lead, shown)
    if is_hf_state(state) and (path.parent / "config.json").is_file():
        return read_folder(path.parent, option)
    try:
        config = json.loads(metadata[ARCH_KEY]) if ARCH_KEY in metadata else {}
    except json.JSONDecodeError:
        raise UserError(f"{lead}{shown}: metadata '{ARCH_KEY}' is not JSON") from None
    return {"model": state, **({"config": config} if config else {})}


def read_folder(path: Path, option: str = "", shown: str | None = None) -> dict:
    """``{'model', 'config'}`` of a model folder: Hugging Face ViTMAE (``config.json`` with ``model_type`` vit_mae,
    ``model.safetensors`` or ``pytorch_model.bin``) or timm (``config.json`` with ``architecture``, whose name is
    ours only when the shapes are that model's: ``vit_base_patch16_224`` also carries models timm has no name for)."""
    shown, lead = shown or str(path), f"{option}: " if option else ""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        why = "no config.json" if isinstance(err, FileNotFoundError) else f"config.json: {err}"
        raise UserError(f"{lead}{shown} is not a Hugging Face ViTMAE or timm model folder ({why})") from None
    weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
    if weights is None:
        raise UserError(f"{lead}{shown}: no model.safetensors or pytorch_model.bin in the folder")
    if weights.suffix == ".safetensors":
        state = _safetensors(weights, lead, str(weights))[0]
    else:
        state = extract_state_dict(read_checkpoint(weights, option=option), str(weights))
    if config.get("model_type") == "vit_mae":
        return from_hf(state, config, shown)
    if isinstance(config.get("architecture"), str):  # timm's: our names
        name, shapes = timm_model_name(config["architecture"]), encoder_shapes(state, shown)
        fits = name == infer_model_name(shapes["patch_size"], shapes["embed_dim"], shapes["depth"], shapes["mlp_ratio"])
        return {"model": state, **({"config": {"model": name}} if name and fits else {})}
    raise UserError(
        f"{lead}{shown}: config.json describes model_type '{config.get('model_type')}' "
        "(readable: a Hugging Face vit_mae or a timm model folder)"
    )
