"""Warm start: `mae` commands of a local study start from a process that has already imported torch.

Every job of a study is a new `mae` process, and ~3 s of each goes to importing torch, torchvision (which
imports ``torch._dynamo``) and timm before the job does anything; the default study runs 53 jobs on 2 cores.
A study run (the Snakefile's ``onstart`` hook) starts one **server** that imports those libraries once and
then waits on a Unix socket. The `mae` console script of a job, seeing ``MAE_WARM_START=<socket>`` in its
environment, sends its argv, working directory, environment, ``sys.path`` and its stdin/stdout/stderr file
descriptors to the server and waits; the server forks a supervisor, the supervisor forks the **worker**, which
takes over the job's descriptors, folder, environment, umask, CPU affinity and thread count, imports `mae`
afresh (edits to the project's code apply at once; only the third-party libraries are shared) and runs the
command. The job's
process forwards the signals it gets (SIGTERM, SIGINT, SIGUSR1, …; held back while the command is handed
over, and those it was started ignoring, as under nohup, stay ignored in the worker) and ends with the worker's
exit status (a worker killed by a signal kills it with the same signal); the supervisor kills the worker
(SIGKILL) when the job's process disappears without one (it was killed) or the hand-over fails.

Nothing changes when it cannot apply: the command runs in its own process, as without a server, when the
variable is unset, the socket does not answer (a job on another node, a server gone idle), the job runs
under torchrun, its environment differs from the server's in a variable read when libraries load
(:data:`IMPORT_TIME`: ``TORCH*``, ``PYTHON*``, ``OMP_*``, ``LD_*``, locale, … — thread counts aside, the worker
sets those), or its interpreter or libraries resolve to other files. Not carried over: resource limits
(``ulimit``), niceness and cgroup — the worker has the server's (the study's own, unless a rule changes them).
Linux only (fork after import, ``SCM_RIGHTS``, pidfds). Results are the same as without it (tests compare a
pretraining run both ways to the last digit). The server exits after :data:`IDLE_S` seconds without a job
and when the study ends (``onsuccess``/``onerror``); it logs to ``logs/warm_start.log``.

This module imports no third-party library: the job's side costs a Python start and a socket round trip.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

#: the environment variable that points a `mae` command at a server's socket
ENV = "MAE_WARM_START"
#: third-party modules the server imports once (the project's own modules are imported by each worker)
PRELOAD = (
    "numpy",
    "yaml",
    "tqdm",
    "PIL.Image",
    "torch",
    "torchvision",
    "timm",
    "timm.data",
    "timm.optim",
    "timm.loss",
    "timm.utils",
    "torch.utils.flop_counter",
    "torch.utils.tensorboard",
    "pycocotools.coco",
    "pycocotools.cocoeval",
    "threadpoolctl",
)
#: top-level packages whose location a job compares with the server's (same files, or it runs by itself)
CHECKED = ("torch", "torchvision", "timm", "numpy")
#: environment variables that the preloaded libraries (or the interpreter, or the C library) may read when
#: they are loaded: a job whose value differs from the server's runs by itself (its libraries would have read
#: another value). Everything else a job reads when it runs (its own environment is restored in the worker).
IMPORT_TIME = (
    "TORCH",
    "PYTORCH",
    "CUDA",
    "CUBLAS",
    "CUDNN",
    "NCCL",
    "NVIDIA",
    "TRITON",
    "OMP_",
    "KMP_",
    "GOMP_",
    "MKL",
    "DNNL_",
    "ONEDNN_",
    "OPENBLAS",
    "GOTO_",
    "LD_",
    "MALLOC_",
    "GLIBC_",
    "PYTHON",
    "TIMM",
    "HF_",
    "HUGGINGFACE",
    "TF_",
    "NUMPY",
    "NPY_",
    "TQDM_",
    "LANG",
    "LC_",
    "TZ",
    "HOME",
    "USER",
    "LOGNAME",
)
#: thread counts: a job's own (the worker sets them: torch, and numpy's BLAS through threadpoolctl)
PER_JOB = frozenset({"OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS"})
#: signals a job forwards to its worker
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
#: a server without jobs for this long exits (a study that died without its onerror hook)
IDLE_S = 120.0
MAX_MESSAGE = 1 << 20


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")


def _interpreter() -> list[str]:
    """The interpreter's binary (links resolved: python and python3 of one venv are one) and environment."""
    return [os.path.realpath(sys.executable), sys.prefix, sys.version]


def _origins() -> dict[str, str | None]:
    """Where this interpreter would import each :data:`CHECKED` package from (without importing it)."""
    out = {}
    for name in CHECKED:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        out[name] = spec.origin if spec else None
    return out


# ------------------------------------------------------------------------------------------------- job side


def delegate(argv: list[str], entry: str) -> int | None:
    """Run ``mae`` ``argv`` (``sys.argv``) in the server named by :data:`ENV`; ``None``: run it here instead.
    ``entry`` (``"module:function"``) is the command line's entry point, which the worker imports afresh and
    calls with ``argv[1:]``."""
    path = os.environ.get(ENV)
    if not path or not supported() or "WORLD_SIZE" in os.environ:  # torchrun ranks start by themselves
        return None
    ignored = [int(sig) for sig in FORWARDED if signal.getsignal(sig) is signal.SIG_IGN]  # e.g. under nohup
    # a stop signal that arrives while the command is handed over waits until it can be forwarded (or, when
    # the command runs here after all, until the old handlers are back)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        try:
            sock.connect(path)
            umask = os.umask(0o022)
            os.umask(umask)
            request = {
                "argv": list(argv),
                "entry": entry,
                "cwd": os.getcwd(),
                "env": dict(os.environ),
                "path": list(sys.path),
                "interpreter": _interpreter(),
                "origins": _origins(),
                "ignored": ignored,
                "umask": umask,
                "cpus": sorted(os.sched_getaffinity(0)),
            }
            socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
            reply = json.loads(sock.recv(MAX_MESSAGE) or b"{}")
        except (OSError, ValueError):  # no server there (gone idle, another node, a closed descriptor)
            sock.close()
            return None
        if "pid" not in reply:
            print(f"warm start: not used ({reply.get('refused', 'no answer')})", file=sys.stderr)
            sock.close()
            return None
        worker = int(reply["pid"])

        def forward(signum, _frame):
            try:
                os.kill(worker, signum)
            except ProcessLookupError:
                pass

        for sig in FORWARDED:
            if int(sig) not in ignored:
                signal.signal(sig, forward)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    data = sock.recv(MAX_MESSAGE)  # the worker's end (a forwarded signal does not interrupt the wait)
    if not data:
        print("warm start: lost the server before the command finished", file=sys.stderr)
        return 1
    status = json.loads(data)
    if status.get("signal"):  # end the way the worker ended
        signal.signal(status["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), status["signal"])
    return int(status.get("code", 1))


# ---------------------------------------------------------------------------------------------- server side


def refusal(request: dict, env: dict[str, str], added: dict[str, str], origins: dict[str, str | None]) -> str | None:
    """Why the server must not run ``request`` (the job would not get what a fresh process gets), or None.
    ``env``: the server's environment before its imports; ``added``: what the imports set in it."""
    if request.get("interpreter") != _interpreter():
        return f"another interpreter: {request.get('interpreter')}"
    if request.get("origins") != origins:
        return "libraries installed elsewhere"
    theirs = request.get("env", {})
    for key in sorted(set(env) | set(theirs) | set(added)):
        if key in PER_JOB or not key.startswith(IMPORT_TIME):
            continue
        if key in added and theirs.get(key) == added[key]:
            continue
        if key in added and key not in theirs:  # the import would set it (inductor's: from the temp folder)
            if key == "TORCHINDUCTOR_CACHE_DIR" and _tempdir(theirs) != _tempdir(env):
                return f"{key} would follow another temp folder than the server's"
            continue
        if env.get(key) != theirs.get(key):
            return f"environment variable {key} differs from the server's"
    if "OMP_NUM_THREADS" in env and "OMP_NUM_THREADS" not in theirs:  # its default would be the server's
        return "OMP_NUM_THREADS is unset, the server's is not"
    for key in PER_JOB & set(theirs):
        if not theirs[key].isdigit() or int(theirs[key]) < 1:  # e.g. OpenMP's nested "4,2"
            return f"{key}={theirs[key]!r} is not a plain thread count"
    return None


def _tempdir(env: dict[str, str]) -> str:
    """The folder ``tempfile`` picks under ``env``: its variables in its order, else /tmp (a usable one)."""
    for key in ("TMPDIR", "TEMP", "TMP"):
        if env.get(key):
            return os.path.realpath(env[key])
    return "/tmp"


def _preload(log) -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as err:  # optional library (e.g. no pycocotools): the worker imports what it needs
            print(f"warm start: preload {name} skipped ({err})", file=log, flush=True)


def _work(request: dict, fds: list[int], added: dict, default_threads: int) -> None:
    """In the worker: become the job (signals, descriptors, folder, environment, threads) and run ``mae``."""
    code = 1
    try:
        ignored = set(request.get("ignored", ()))
        for sig in (*FORWARDED, signal.SIGCHLD):  # as in a fresh interpreter started the way the job was
            signal.signal(
                sig,
                signal.SIG_IGN
                if int(sig) in ignored
                else signal.default_int_handler
                if sig == signal.SIGINT
                else signal.SIG_DFL,
            )
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # blocked by the supervisor across the fork
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])  # file modes of what the job writes (mae.utils.io)
        os.sched_setaffinity(0, request["cpus"])  # e.g. a job started under taskset
        os.environ.clear()
        os.environ.update({**added, **request["env"]})
        tempfile.tempdir = None  # TMPDIR is the job's
        sys.argv = list(request["argv"])
        sys.path[:] = request["path"]
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
        import torch
        from threadpoolctl import threadpool_limits

        threads = int(os.environ.get("OMP_NUM_THREADS") or default_threads)
        torch.set_num_threads(threads)  # the libraries read the variables when the server imported them
        threadpool_limits(int(os.environ.get("OPENBLAS_NUM_THREADS") or threads), user_api="blas")
        for name in [m for m in sys.modules if m == "mae" or m.startswith("mae.")]:
            del sys.modules[name]  # the project's code as it is now, not as it was when the server started
        module, _, function = request["entry"].partition(":")
        main = getattr(importlib.import_module(module), function)

        code = int(main(sys.argv[1:]) or 0)
    except SystemExit as exc:  # as the interpreter ends on it: an int, None (0) or a message (printed, 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception of a fresh process
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    os._exit(code)


def _supervise(conn: socket.socket, env: dict, added: dict, origins: dict, default_threads: int) -> None:
    """In the supervisor (one per job): check the request, fork the worker, report its end to the job."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, 3)
        request = json.loads(data)
        why = refusal(request, env, added, origins) if len(fds) == 3 else "no standard descriptors"
        if why:
            conn.send(json.dumps({"refused": why}).encode())
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # the worker unblocks them once it has its handlers
        pid = os.fork()
        if pid == 0:
            conn.close()
            _work(request, fds, added, default_threads)
        try:
            for fd in fds:
                os.close(fd)
            conn.send(json.dumps({"pid": pid}).encode())
            print(f"warm start: worker {pid}: {' '.join(request['argv'][1:3])}", flush=True)
            pidfd = os.pidfd_open(pid)
            ready, _, _ = select.select([pidfd, conn], [], [])  # the worker's end, or the job's process gone
            if pidfd not in ready and not conn.recv(16):
                raise ConnectionError("the job's process is gone")
            _, status = os.waitpid(pid, 0)
        except BaseException:
            # the job's process died without a signal to forward (SIGKILL, e.g. `kill -9` of the study or its
            # process group), or the hand-over failed: the worker dies the same way, as a plain process would
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        conn.send(json.dumps({"code": 128 + sig if sig else os.WEXITSTATUS(status), "signal": sig}).encode())
    except ConnectionError:  # the job's process is gone
        pass
    except BaseException:  # noqa: BLE001 - logged; a supervisor never returns into the server's loop
        traceback.print_exc()
    finally:
        os._exit(0)


def serve(path: str, idle: float = IDLE_S) -> int:
    """The server: preload, then fork a supervisor per connection until idle for ``idle`` s or SIGTERM."""
    start, env = time.perf_counter(), dict(os.environ)
    _preload(sys.stdout)
    import torch

    # what the imports put in the environment (torch: TORCHINDUCTOR_CACHE_DIR), a job's own values first
    added = {k: v for k, v in os.environ.items() if env.get(k) != v}
    default_threads, origins = torch.get_num_threads(), _origins()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tmp = f"{path}.{os.getpid()}.tmp"
    listener.bind(tmp)
    listener.listen(64)
    os.replace(tmp, path)  # the socket appears only once the server is ready
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(
        f"warm start: serving {path} (pid {os.getpid()}, preloaded in {time.perf_counter() - start:.1f} s, "
        f"{len(os.listdir('/proc/self/task'))} thread(s))",
        flush=True,
    )
    children: set[int] = set()
    last = time.monotonic()
    try:
        while children or time.monotonic() - last < idle:
            for pid in list(children):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    children.discard(pid)
                    last = time.monotonic()
            if not select.select([listener], [], [], 1.0)[0]:
                continue
            conn, _ = listener.accept()
            last = time.monotonic()
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                _supervise(conn, env, added, origins, default_threads)
            conn.close()
            children.add(pid)
    finally:
        for leftover in (path, os.path.dirname(path)):  # the socket and its private folder (from start())
            try:
                os.rmdir(leftover) if leftover != path else os.unlink(leftover)
            except OSError:
                pass
        print("warm start: server stopped", flush=True)
    return 0


# ------------------------------------------------------------------------------- the study's hooks (Snakefile)


def start(log: str | os.PathLike, idle: float = IDLE_S, wait_s: float = 60.0) -> subprocess.Popen | None:
    """Start a server for this study (its own session, logging to ``log``); set :data:`ENV` for the jobs
    Snakemake starts from this process. Returns the server's process, or None where unsupported."""
    if not supported():
        return None
    folder = tempfile.mkdtemp(prefix="mae-warm-")  # private (0700): only this user reaches the socket
    path = os.path.join(folder, "socket")
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    # thread counts: the machine's defaults (torch's is what a job without OMP_NUM_THREADS gets); numpy's
    # OpenBLAS starts no thread pool in the server (each worker sets its own)
    env = {k: v for k, v in os.environ.items() if k not in PER_JOB and not k.startswith(("VECLIB", "NUMEXPR"))}
    env["OPENBLAS_NUM_THREADS"] = "1"
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mae.tools.warmstart", path, "--idle", str(idle)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.socket = path
    deadline = time.monotonic() + wait_s
    while not os.path.exists(path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not os.path.exists(path):  # jobs run by themselves, as without a server
        stop(proc)
        return None
    os.environ[ENV] = path
    return proc


def stop(proc: subprocess.Popen | None) -> None:
    """End the server started by :func:`start` (running jobs finish: their supervisors are separate)."""
    os.environ.pop(ENV, None)
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    folder = Path(proc.socket).parent
    for leftover in (*folder.glob("*"), folder):  # a server that could not clean up (killed, or never ready)
        try:
            leftover.rmdir() if leftover == folder else leftover.unlink()
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mae.tools.warmstart", description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="path of the Unix socket to serve on")
    parser.add_argument("--idle", type=float, default=IDLE_S, help="exit after this many seconds without a job")
    args = parser.parse_args(argv)
    return serve(args.socket, args.idle)


if __name__ == "__main__":
    sys.exit(main())
