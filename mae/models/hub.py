"""Where ``--init`` weights come from: a local file, an ``http(s)://`` URL (downloaded once into a cache) or a
timm hub name.

:func:`resolve_init` turns an init spec into what :func:`mae.models.checkpoint.read_weights` reads:

- ``path/to/checkpoint.pt``               the file itself (it must exist);
- ``https://host/file.pth[#sha256=HEX]``  the cached copy, downloaded on first use into
  ``$MAE_CACHE/downloads/`` (default ``~/.cache/mae-study``; ``$XDG_CACHE_HOME/mae-study`` when set). The
  download is atomic (a temp file renamed into place); with a ``#sha256=`` suffix the file's SHA-256 is
  checked, after the download and on every later use: a mismatch is an error and leaves no file in the cache.
  A download that would need unpickling anything but tensors and plain values is refused before it is cached
  (:func:`mae.models.checkpoint.read_checkpoint`).
- ``timm:NAME``                          timm's pretrained weights ``NAME`` (e.g. ``timm:vit_base_patch16_224.mae``),
  fetched by timm's own mechanism (the Hugging Face hub and its cache, ``HF_HOME``): a checkpoint object
  ``{'model': state_dict, 'config': {'model': <our name>}}`` held in memory.
- ``path/to/folder``                      a Hugging Face ViTMAE folder (``config.json`` + ``model.safetensors``) or a
  timm model folder, read by :func:`mae.models.checkpoint.read_checkpoint`.

The Hugging Face transformers names of our weights (both ways: :func:`to_hf`, :func:`from_hf`) are here too: one
table of module names (:data:`HF_NAMES`), one of names inside a block (:data:`HF_BLOCK_NAMES`); our fused
``attn.qkv`` is their ``query``, ``key`` and ``value``.

Nothing is fetched at import. Offline, a URL or hub name that is not cached fails with one line naming it: when
the hub's host cannot be reached, timm reads the Hugging Face cache only (no minute of connection retries).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from http.client import HTTPException
from pathlib import Path
from typing import Any

from mae.errors import UserError
from mae.utils.io import cache_dir

TIMEOUT_ENV = "MAE_DOWNLOAD_TIMEOUT"  # seconds without data before a download gives up (default 60)
TIMM_PREFIX = "timm:"
CHUNK = 1 << 20
_SHA256 = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def resolve_init(spec: str | Path, option: str = "--init") -> Path | dict[str, Any]:
    """A local checkpoint file for ``spec`` (downloaded and cached for a URL), or the in-memory checkpoint of a
    timm hub name. Errors name ``option`` and the spec in one line."""
    spec = str(spec)
    if spec.startswith(TIMM_PREFIX):
        return timm_checkpoint(spec[len(TIMM_PREFIX) :], option)
    scheme = _SCHEME.match(spec)
    if scheme:
        if scheme.group(1).lower() not in ("http", "https"):
            raise UserError(
                f"{option}: unsupported URL scheme '{scheme.group(1)}' in {spec} (http, https or timm:NAME)"
            )
        return download(spec, option)
    path = Path(spec)
    if not path.is_file() and not path.is_dir():
        raise UserError(f"{option}: checkpoint file '{path}' does not exist")
    return path


# ----------------------------------------------------------------------------------------------------- URLs


def split_checksum(spec: str, option: str = "--init") -> tuple[str, str | None]:
    """``(url without its fragment, expected sha256 or None)``; the only fragment allowed is ``#sha256=HEX``."""
    url, _, fragment = spec.partition("#")
    if not fragment:
        return url, None
    found = _SHA256.match(fragment)
    if not found:
        raise UserError(f"{option}: bad fragment '#{fragment}' in {spec} (expected #sha256=<64 hex digits>)")
    return url, found.group(1).lower()


def cached_path(url: str) -> Path:
    """Where ``url`` is cached: ``downloads/<16 hex of the URL's hash>-<file name>``."""
    parsed = urllib.parse.urlparse(url)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(urllib.parse.unquote(parsed.path)).name) or "download"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_dir() / "downloads" / f"{key}-{name}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(spec: str, option: str = "--init") -> Path:
    """The cached file of URL ``spec`` (with an optional ``#sha256=HEX``), downloaded on first use."""
    url, expected = split_checksum(spec, option)
    path = cached_path(url)
    if path.is_file():
        if expected is None or file_sha256(path) == expected:
            return path
        path.unlink()  # a stale or corrupted copy: fetch it again, then check again
    _fetch(url, path, expected, option)
    return path


def _fetch(url: str, path: Path, expected: str | None, option: str) -> None:
    """Stream ``url`` into ``path`` atomically; the checksum is checked before the file is renamed into place."""
    from tqdm import tqdm

    from mae import __version__
    from mae.utils.io import atomic_path

    timeout = float(os.environ.get(TIMEOUT_ENV) or 60)
    request = urllib.request.Request(url, headers={"User-Agent": f"mae-study/{__version__}"})
    with atomic_path(path, suffix=".part") as tmp:
        digest, size = hashlib.sha256(), 0
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=f"download {path.name}",
                    disable=not sys.stderr.isatty(),
                ) as bar:
                    for chunk in iter(lambda: response.read(CHUNK), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as err:
            raise UserError(f"{option}: cannot download {url}: HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise UserError(f"{option}: cannot download {url}: {_reason(err.reason)}") from None
        except (OSError, HTTPException, ValueError) as err:  # reset connection, timeout, full disk, bad URL
            raise UserError(f"{option}: cannot download {url}: {_reason(err)}") from None
        if total is not None and size != total:
            raise UserError(f"{option}: cannot download {url}: got {size} of {total} bytes")
        if expected is not None and digest.hexdigest() != expected:
            raise UserError(f"{option}: {url}: sha256 {digest.hexdigest()} does not match the expected {expected}")
        from mae.models.checkpoint import read_checkpoint

        read_checkpoint(tmp, mmap=True, option=option, kind="download", name=url)  # refused files never reach the cache


def _reason(err: Any) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


# ----------------------------------------------------------------------------------------------------- timm


def timm_model_name(timm_name: str) -> str | None:
    """Our model name for a timm architecture (``vit_base_patch16_224.mae`` -> ``mae_vit_base_patch16``)."""
    from mae.models.encoder import TIMM_NAMES

    arch = timm_name.partition(".")[0]
    return next((ours for ours, theirs in TIMM_NAMES.items() if theirs == arch), None)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host and port opens within ``timeout`` seconds."""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _hub_offline_if_unreachable():
    """Hugging Face hub offline mode (its cache only) while the hub's host does not answer."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _reachable(constants.ENDPOINT):
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


@functools.lru_cache(maxsize=2)
def _timm_state(name: str) -> dict:
    import timm

    with _hub_offline_if_unreachable():
        return timm.create_model(name, pretrained=True, num_classes=0).state_dict()


def timm_checkpoint(name: str, option: str = "--init") -> dict[str, Any]:
    """timm's pretrained weights ``name`` as a checkpoint object (the classifier removed)."""
    import timm

    spec = f"{TIMM_PREFIX}{name}"
    arch, _, tag = name.partition(".")
    if not arch or not timm.is_model(arch):
        raise UserError(f"{option}: timm has no model '{arch}' ({spec})")
    if tag and name not in timm.list_pretrained(name):
        raise UserError(
            f"{option}: timm has no pretrained weights '{name}' (MAE ones: {', '.join(timm.list_pretrained('*.mae'))})"
        )
    try:
        state = _timm_state(name)
    except Exception as err:  # noqa: BLE001 - offline, no cache, a hub error: all one line naming the spec
        raise UserError(
            f"{option}: cannot load {spec} (timm fetches it from the Hugging Face hub: needs network "
            f"access or a cached copy): {_reason(err)}"
        ) from None
    ours = timm_model_name(name)
    return {"model": dict(state), **({"config": {"model": ours}} if ours else {})}


# ---------------------------------------------------------------------------------------------- Hugging Face
#: our module names -> Hugging Face transformers' ViTMAE names as the Hub stores them (facebook/vit-mae-base)
HF_NAMES = {
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj": "vit.embeddings.patch_embeddings.projection",
    "blocks": "vit.encoder.layer",
    "norm": "vit.layernorm",
    "decoder_embed": "decoder.decoder_embed",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_blocks": "decoder.decoder_layers",
    "decoder_norm": "decoder.decoder_norm",
    "decoder_pred": "decoder.decoder_pred",
}
#: inside an encoder or decoder block; our ``attn.qkv`` (rows: query, key, value) is their HF_QKV
HF_BLOCK_NAMES = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
HF_QKV = ("query", "key", "value")
#: names of newer transformers releases (in memory, and in some files they write) -> the Hub's, on reading
HF_NEWER_NAMES = (
    (r"^vit\.layers\.", "vit.encoder.layer."),
    (r"^decoder\.decoder_encoder\.layer\.", "decoder.decoder_layers."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)
_OUR_BLOCK = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$")
_HF_BLOCK = re.compile(r"^(vit\.encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)\.(weight|bias)$")


def _renamed(key: str, table: Mapping[str, str]) -> str | None:
    """``key`` with its module name (the whole key, or all but the last part) looked up in ``table``."""
    module = key if key in table else key.rpartition(".")[0]
    return table[module] + key[len(module) :] if module in table else None


def is_hf_state(state: Mapping[str, Any]) -> bool:
    return any(
        k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.", "decoder.decoder_embed.")) for k in state
    )


def to_hf_state(sd: Mapping[str, Any], source: str = "checkpoint") -> dict:
    """Our MAE state dict in the Hugging Face ViTMAE names (``attn.qkv`` split into query, key, value)."""
    out = {}
    for key, value in sd.items():
        block = _OUR_BLOCK.match(key)
        if block:
            stack, index, inner, kind = block.groups()
            base = f"{HF_NAMES[stack]}.{index}"
            if inner == "attn.qkv":
                for name, part in zip(HF_QKV, value.chunk(3), strict=True):
                    out[f"{base}.attention.attention.{name}.{kind}"] = part.clone()
                continue
            renamed = f"{base}.{HF_BLOCK_NAMES[inner]}.{kind}" if inner in HF_BLOCK_NAMES else None
        else:
            renamed = _renamed(key, HF_NAMES)
        if renamed is None:
            raise UserError(f"{source}: weight '{key}' has no counterpart in Hugging Face's ViTMAE")
        out[renamed] = value
    return out


def from_hf_state(state: Mapping[str, Any], source: str = "checkpoint") -> dict:
    """A Hugging Face ViTMAE state dict (the Hub's names or a newer release's; ``ViTMAEModel`` files without the
    ``vit.`` prefix) in our names (query, key and value fused into ``attn.qkv``)."""
    import torch

    ours, ours_block = {v: k for k, v in HF_NAMES.items()}, {v: k for k, v in HF_BLOCK_NAMES.items()}
    if not any(k.startswith(("vit.", "decoder.")) for k in state):  # ViTMAEModel's: the encoder alone
        state = {f"vit.{k}": v for k, v in state.items()}
    hub_names = {}
    for key, value in state.items():
        for pattern, replacement in HF_NEWER_NAMES:
            key = re.sub(pattern, replacement, key)
        hub_names[key] = value
    out, qkv = {}, {}
    for key, value in hub_names.items():
        block = _HF_BLOCK.match(key)
        if block:
            stack, index, inner, kind = block.groups()
            base = f"{ours[stack]}.{index}"
            part = inner.removeprefix("attention.attention.")
            if part in HF_QKV:
                qkv.setdefault(f"{base}.attn.qkv.{kind}", {})[part] = value
                continue
            renamed = f"{base}.{ours_block[inner]}.{kind}" if inner in ours_block else None
        else:
            renamed = _renamed(key, ours)
        if renamed is None:
            raise UserError(f"{source}: weight '{key}' has no counterpart in our MAE")
        out[renamed] = value
    for key, parts in qkv.items():
        if set(parts) != set(HF_QKV):
            raise UserError(f"{source}: {key}: the file lacks {sorted(set(HF_QKV) - set(parts))}")
        out[key] = torch.cat([parts[name] for name in HF_QKV])
    return out


def hf_config(arch: Mapping[str, Any]) -> dict:
    """The ``config.json`` of ViTMAEForPreTraining for a MAE of :func:`mae.models.checkpoint.architecture`
    (exact GELU as ours; the decoder uses the encoder's MLP ratio)."""

    def mlp(width: int) -> int:
        return int(round(width * arch["mlp_ratio"]))

    return {
        "architectures": ["ViTMAEForPreTraining"],
        "model_type": "vit_mae",
        "image_size": arch["img_size"],
        "patch_size": arch["patch_size"],
        "num_channels": arch["in_chans"],
        "hidden_size": arch["embed_dim"],
        "num_hidden_layers": arch["depth"],
        "num_attention_heads": arch["num_heads"],
        "intermediate_size": mlp(arch["embed_dim"]),
        "decoder_hidden_size": arch["decoder_width"],
        "decoder_num_hidden_layers": arch["decoder_depth"],
        "decoder_num_attention_heads": arch["decoder_heads"],
        "decoder_intermediate_size": mlp(arch["decoder_width"]),
        "hidden_act": "gelu",
        "qkv_bias": True,
        "layer_norm_eps": arch.get("layer_norm_eps", 1e-6),
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "mask_ratio": arch["mask_ratio"],
        "norm_pix_loss": arch["target"] == "norm_pixel",
    }


def hf_settings(config: Mapping[str, Any], source: str = "config.json") -> dict:
    """Our recorded settings (model name, heads, target, mask ratio, LayerNorm eps: the Hub's files say 1e-12,
    transformers' default, where ours say 1e-6) of a ViTMAE ``config.json``; refused when the architecture is not
    one our MAE builds."""
    from mae.models import infer_model_name

    width, depth, heads = (
        int(config.get(k, d)) for k, d in (("hidden_size", 768), ("num_hidden_layers", 12), ("num_attention_heads", 12))
    )
    ratio = int(config.get("intermediate_size", 4 * width)) / width
    decoder = int(config.get("decoder_hidden_size", 512))
    if config.get("hidden_act", "gelu") != "gelu" or not config.get("qkv_bias", True):
        raise UserError(
            f"{source}: hidden_act '{config.get('hidden_act')}' / qkv_bias "
            f"{config.get('qkv_bias')}: our MAE has exact GELU and a qkv bias"
        )
    if int(config.get("decoder_intermediate_size", 2048)) != int(round(decoder * ratio)):
        raise UserError(
            f"{source}: decoder_intermediate_size {config.get('decoder_intermediate_size')} is not "
            f"{ratio:g} x decoder_hidden_size (our decoder shares the encoder's MLP ratio)"
        )
    name = infer_model_name(int(config.get("patch_size", 16)), width, depth, ratio, heads)
    settings = {
        "model": name,
        "num_heads": heads,
        "decoder_heads": int(config.get("decoder_num_attention_heads", 16)),
        "target": "norm_pixel" if config.get("norm_pix_loss") else "pixel",
        "mask_ratio": float(config.get("mask_ratio", 0.75)),
        "layer_norm_eps": float(config.get("layer_norm_eps", 1e-12)),
    }
    return {k: v for k, v in settings.items() if v is not None}


def from_hf(state: Mapping[str, Any], config: Mapping[str, Any], source: str) -> dict:
    """The checkpoint object ``{'model', 'config'}`` of a Hugging Face ViTMAE folder's weights and config."""
    return {"model": from_hf_state(state, source), "config": hf_settings(config, f"{source}/config.json")}


def to_hf(sd: Mapping[str, Any], arch: Mapping[str, Any], source: str = "checkpoint") -> tuple[dict, dict]:
    """(state dict, config.json) of ViTMAEForPreTraining for our MAE ``sd`` described by ``arch``."""
    if arch.get("kind") != "mae":
        raise UserError(
            f"{source}: {arch.get('kind')} weights have no Hugging Face ViTMAE form "
            "(ViTMAEForPreTraining needs a pretraining checkpoint with its decoder; use --to timm or "
            "safetensors)"
        )
    if arch["target"] not in ("pixel", "norm_pixel") or arch["mask_token_in_encoder"]:
        what = "mask_token_in_encoder" if arch["mask_token_in_encoder"] else f"target '{arch['target']}'"
        raise UserError(
            f"{source}: {what} has no Hugging Face ViTMAE form (pixel or norm_pixel targets, "
            "visible tokens only); use --to safetensors"
        )
    return to_hf_state(sd, source), hf_config(arch)
