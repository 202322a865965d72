"""The precision a stage computes in: ``amp: auto`` (the default of every stage) picks it per device.

- **CUDA**: bf16 autocast where the device has bf16, else fp16 autocast with a gradient scaler.
- **CPU**: bf16 autocast only where the CPU has bf16 instructions (``avx512_bf16`` or ``amx_bf16`` on x86,
  ``bf16`` on ARM) *and* a bf16 matrix product runs faster than fp32 here (:func:`probe`: well under a second,
  measured once per machine and cached in ``$MAE_CACHE/precision.json``); fp32 otherwise. Without those
  instructions torch emulates bf16: on an AVX2-only CPU a bf16 matrix product runs ~47x slower than fp32 and a
  bf16 pretraining step 7.5x slower.

An explicit ``amp: bf16`` is obeyed, with one warning per process where bf16 is slow. ``amp: none`` is fp32.
Every stage records what it used and why (``amp_used``, ``amp_reason`` in ``metrics.json`` and the log).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass

import torch

from mae.errors import UserError

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
#: CPU flags (``/proc/cpuinfo``) that mean the CPU computes bf16 products natively
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: flags reported by the bench and the precision record (what decides a CPU's matrix speed)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "asimd", "sve", "bf16")
#: bf16 must beat fp32 by this factor on the probe's product to be chosen (noise margin)
MIN_SPEEDUP = 1.2
#: environment variables that change which matrix kernels torch runs (part of the cache key)
KERNEL_ENV = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
)
CACHE_FILE = "precision.json"


@dataclass(frozen=True)
class Precision:
    """What a stage computes in: ``amp`` is ``bf16``, ``fp16`` or ``none`` (fp32); ``reason`` says why."""

    amp: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp, torch.float32)

    def autocast(self, device: torch.device):
        """The autocast context of this precision on ``device`` (none for fp32)."""
        if self.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.dtype)

    def record(self) -> dict:
        """The keys every stage writes to ``metrics.json``."""
        return {"amp_used": self.amp, "amp_reason": self.reason}


def cpu_info() -> dict:
    """The CPU model and which of :data:`CPU_FLAGS` it has (``/proc/cpuinfo`` on Linux; x86 ``flags``, ARM
    ``Features``)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "flags": [f for f in CPU_FLAGS if f in flags]}


def probe(threads: int | None = None) -> float:
    """How many times faster a bf16 matrix product runs than an fp32 one on this CPU (best of 3 each, after
    one warm-up; a (1024 x 256) @ (256 x 256) product, ~0.3 s in all where bf16 is emulated)."""
    a32, b32 = torch.randn(1024, 256), torch.randn(256, 256)
    pairs = {torch.float32: (a32, b32), torch.bfloat16: (a32.bfloat16(), b32.bfloat16())}
    best = {}
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for dtype, (a, b) in pairs.items():
            torch.mm(a, b)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                torch.mm(a, b)
                times.append(time.perf_counter() - t0)
            best[dtype] = min(times)
    finally:
        torch.set_num_threads(old)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-12)


def _machine_key(info: dict) -> str:
    """Identifies the CPU, the torch build and the kernel-selecting environment (a cluster's nodes differ)."""
    parts = [
        info["cpu"],
        " ".join(info["flags"]),
        platform.machine(),
        torch.__version__,
        *(f"{k}={os.environ.get(k, '')}" for k in KERNEL_ENV),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cached_speedup(info: dict) -> tuple[float, bool]:
    """(bf16 speed-up of :func:`probe`, whether it came from the cache); measured and stored on a miss. A cache
    that cannot be read or written is skipped (the probe then runs once per process)."""
    from mae.utils.io import atomic_write_json, cache_dir

    path = cache_dir() / CACHE_FILE
    key = _machine_key(info)
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        entry = cached.get(key) if isinstance(cached, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("bf16_speedup"), (int, float)):
            return float(entry["bf16_speedup"]), True
    except (OSError, ValueError):
        cached = {}
    speedup = probe(threads=1)
    if not isinstance(cached, dict):
        cached = {}
    cached[key] = {"bf16_speedup": speedup, "cpu": info["cpu"], "flags": info["flags"], "torch": torch.__version__}
    with contextlib.suppress(UserError, OSError):
        atomic_write_json(path, cached)
    return speedup, False


def cpu_bf16() -> tuple[bool, str]:
    """Whether bf16 autocast is the fast choice on this CPU, and why (a few words)."""
    info = cpu_info()
    native = "/".join(f for f in info["flags"] if f in BF16_FLAGS)
    if not native:
        return False, f"no bf16 instructions ({info['cpu']}; flags: {' '.join(info['flags']) or 'none'})"
    speedup, _ = _cached_speedup(info)  # the same figure in every later process on this machine (cached)
    if speedup >= MIN_SPEEDUP:
        return True, f"{native}, bf16 matmul {speedup:.1f}x fp32 (probe)"
    return False, f"{native}, but bf16 matmul only {speedup:.2f}x fp32 (probe): emulated here"


@functools.cache
def _resolve(amp: str, device_type: str, device_index: int | None) -> Precision:
    if amp not in AMP_CHOICES:
        raise UserError(f"amp: invalid value '{amp}' (valid: {', '.join(AMP_CHOICES)})")
    if device_type == "cuda":
        index = device_index or 0
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        major, minor = torch.cuda.get_device_capability(index)
        name = f"{torch.cuda.get_device_name(index)}, compute capability {major}.{minor}"
        if amp == "auto":
            if bf16:
                return Precision("bf16", f"auto: bf16, CUDA device with bf16 ({name})")
            return Precision("fp16", f"auto: fp16 with a gradient scaler, CUDA device without bf16 ({name})")
        if amp == "bf16" and not bf16:
            _warn(f"amp=bf16 on a CUDA device without bf16 ({name}): emulated, slow (amp: auto would pick fp16)")
        return Precision(amp, f"set: amp={amp}")
    if amp == "fp16":
        raise UserError(f"amp=fp16 needs a CUDA device (this one is {device_type}); use amp=auto, bf16 or none")
    if amp == "none":
        return Precision("none", "set: amp=none (fp32)")
    fast, why = cpu_bf16() if device_type == "cpu" else (False, f"no bf16 rule for {device_type}")
    if amp == "auto":
        return Precision("bf16" if fast else "none", f"auto: {'bf16' if fast else 'fp32'}, {why}")
    if not fast:
        _warn(f"amp=bf16 will be slow on this CPU ({why}); amp: auto would pick fp32")
    return Precision("bf16", "set: amp=bf16" + ("" if fast else f" (slow here: {why})"))


def resolve(amp: str | None, device: torch.device | str) -> Precision:
    """The precision ``amp`` (``auto``/``bf16``/``fp16``/``none``; None = ``none``) means on ``device``; resolved
    once per process and device."""
    device = torch.device(device)
    return _resolve(amp or "none", device.type, device.index)


_WARNED: set[str] = set()


def _warn(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def autocast(device: torch.device, amp: str | None):
    """The one autocast of the package: the context of :func:`resolve` (``amp``, ``device``)."""
    return resolve(amp, device).autocast(device)
