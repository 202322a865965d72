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

The names timm and Hugging Face transformers give our models and weights are in :mod:`mae.models.interop`.

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
from http.client import HTTPException
from pathlib import Path
from typing import Any

from mae.errors import UserError
from mae.models.checkpoint import read_checkpoint
from mae.models.interop import timm_model_name
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
        read_checkpoint(tmp, mmap=True, option=option, kind="download", name=url)  # refused files never reach the cache


def _reason(err: Any) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


# ----------------------------------------------------------------------------------------------------- timm


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
