"""One study per results folder: a lock file in the folder itself, taken when a Snakemake run starts.

Snakemake's own lock lives in the checkout's ``.snakemake/``, so two checkouts (or two configs of one) can
run jobs into the same results folder at once. ``<results>/.study.lock`` records who holds the folder (host,
pid, checkout, start time and the study's ``scale``). A second run refuses with a message naming the holder;
a lock whose
holder process is gone on this host (a crash, a ``kill -9``) is reported and replaced; a lock from another
host cannot be checked and is reported with the file to delete. Dry runs and Snakemake's remote jobs
take no lock (the Snakefile's ``onstart`` hook, which Snakemake runs only for real runs in the main process).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from mae.errors import UserError

LOCK = ".study.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def acquire(results: str | os.PathLike, info: dict | None = None) -> Path:
    """Take ``<results>/.study.lock`` for this process, or raise a one-line :class:`UserError` naming the
    holder."""
    folder = Path(results)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "checkout": os.getcwd(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        **(info or {}),
    }
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            pid, host = holder.get("pid"), holder.get("host")
            if host == me["host"] and isinstance(pid, int) and pid == me["pid"]:
                return path  # ours already (a second onstart in one process)
            if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                print(
                    f"{path}: removing the stale lock of pid {pid} (not running on {host}; "
                    f"started {holder.get('started', '?')} from {holder.get('checkout', '?')})",
                    file=sys.stderr,
                )
                path.unlink(missing_ok=True)
                continue
            raise UserError(
                f"results folder {folder} is in use by another study run: pid {pid} on {host} from "
                f"{holder.get('checkout', '?')} since {holder.get('started', '?')}; wait for it, or if that run is "
                f"gone (e.g. killed on another machine) delete {path}"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        return path
    raise UserError(f"{path}: cannot take the study lock (removed and recreated concurrently?)")


def release(results: str | os.PathLike) -> None:
    """Remove the lock if this process holds it (never another run's)."""
    path = Path(results) / LOCK
    holder = _read(path)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike):
    """One process writes a run folder at a time: an exclusive ``flock`` of the folder itself for the block (no
    file is created). A second process is refused with one line; the kernel releases the lock when its process
    ends, however it ends (a ``kill -9`` leaves no stale lock). No-op where ``flock`` of a folder is not
    available (not POSIX; some network file systems)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{folder} is being written by another process on this machine: wait for it to "
                "finish, or use another --out"
            ) from None
        except OSError:  # the file system cannot lock folders: go on unlocked
            pass
        yield
    finally:
        os.close(fd)
