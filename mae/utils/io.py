"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

An interrupted or failed write never leaves a half-written artifact and never destroys the previous one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mae.errors import UserError


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is flushed to disk (fsync) and renamed to ``path``
    (with the permissions a new file gets under the umask, not mkstemp's 0600), on error removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~current_umask())
            _fsync(tmp_path)  # the data on disk before the name points at it
        os.replace(tmp_path, path)
    except OSError as err:  # disk full, quota, read-only file system: the earlier file stays as it was
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: the temp files of :func:`atomic_path`: ".<name>.<8 random chars><suffix>"
_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.[A-Za-z0-9]+$")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files that interrupted atomic writes left in ``folder`` (call it where one writer owns
    the folder, e.g. when a stage starts); returns what was removed."""
    removed = []
    for path in Path(folder).iterdir():
        if path.is_file() and _TEMP.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


CACHE_ENV = "MAE_CACHE"


def cache_dir() -> Path:
    """Where the package caches what it fetched or measured (URL downloads, the precision probe): ``$MAE_CACHE``,
    else ``$XDG_CACHE_HOME/mae-study``, else ``~/.cache/mae-study``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mae-study"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk, a quota) this way
            free = shutil.disk_usage(tmp.parent).free
            why = "no space left on device" if free < (1 << 20) else str(err).strip().splitlines()[0]
            raise OSError(why) from None


#: per-image results of an evaluation, beside its metrics.json (see :mod:`mae.report.stats`)
PER_IMAGE = "predictions.npz"


def write_per_image(out_dir: str | os.PathLike, arrays: dict) -> Path | None:
    """``out_dir/predictions.npz`` (compressed) from named arrays; when ``arrays`` is empty an old file is
    removed (it would belong to an earlier evaluation)."""
    import numpy as np

    path = Path(out_dir) / PER_IMAGE
    if not arrays:
        path.unlink(missing_ok=True)
        return None
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


def read_per_image(path: str | os.PathLike) -> dict:
    """The arrays of a ``predictions.npz`` (empty dict when the file does not exist)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        from mae.errors import UserError

        raise UserError(f"{path}: not a readable predictions file ({err})") from None


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
