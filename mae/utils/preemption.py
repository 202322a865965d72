"""Stop signals (SIGTERM, SIGUSR1: what SLURM sends before it kills or requeues a job) end a stage at once and
resumably: :class:`~mae.errors.Preempted`, exit code 75.

- The CLI runs every training and evaluation command inside :func:`stop_on_signals`: a stop signal raises
  ``Preempted`` where the process is (feature extraction, evaluation, data set-up), so it is acted on within a
  moment, not after the current phase.
- The training loop marks its steps :func:`deferred`: there a signal is only recorded, and the loop saves a
  checkpoint after the current optimizer step and then raises (an exact resume point). Outside such a block —
  even inside ``fit``, e.g. during an evaluation — the signal raises at once and the run resumes from its last
  checkpoint.

Outside :func:`stop_on_signals` (``fit`` called from Python), :func:`deferred` installs recording handlers of its
own for its duration, and the process keeps its usual handlers otherwise.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from mae.errors import Preempted

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class _State:
    installed = False  # stop_on_signals is active
    depth = 0  # nesting of deferred()
    pending: list[int] = []


def _handler(signum, frame) -> None:
    if _State.depth:
        _State.pending.append(signum)
        return
    raise Preempted(
        f"stopped by signal {signum} ({signal.Signals(signum).name}); rerun the same command to resume "
        "from the last checkpoint"
    )


@contextlib.contextmanager
def stop_on_signals():
    """For the whole of a command: a stop signal raises ``Preempted`` unless a :func:`deferred` block is running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    _State.installed = True
    _State.pending.clear()
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _State.installed = False


@contextlib.contextmanager
def deferred():
    """Signals recorded, not raised, while the block runs; yields the list of recorded signal numbers (the
    caller checks it at its safe points). Raises ``Preempted`` on leaving the block if one is still pending."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    own = not _State.installed
    old = {sig: signal.signal(sig, _handler) for sig in SIGNALS} if own else {}
    if not _State.depth:
        _State.pending.clear()
    _State.depth += 1
    try:
        yield _State.pending
    finally:
        _State.depth -= 1
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if _State.pending and not _State.depth:
        signum = _State.pending[0]
        _State.pending.clear()
        raise Preempted(f"stopped by signal {signum}; rerun the same command to resume from the last checkpoint")


@contextlib.contextmanager
def immediate():
    """Inside a :func:`deferred` block: signals raise at once for this part (e.g. an evaluation between training
    epochs), also one recorded before it."""
    if not _State.depth or threading.current_thread() is not threading.main_thread():
        yield
        return
    if _State.pending:
        signum = _State.pending.pop(0)
        raise Preempted(f"stopped by signal {signum}; rerun the same command to resume from the last checkpoint")
    depth, _State.depth = _State.depth, 0
    try:
        yield
    finally:
        _State.depth = depth
