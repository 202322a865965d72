"""The roofline of a pretraining step on this machine: FLOPs per image (``torch.utils.flop_counter``, forward +
backward) and the rate of the matrix products the step runs, in the precision the step computes in (each of
its ``mm``/``addmm``/``bmm`` shapes timed alone, weighted by how often the step runs it). ``% of roofline`` =
FLOPs per image × img/s ÷ that rate. A second, tighter limit: the step's matrix products run back to back in the
step's order and nothing else (:func:`gemm_chain_seconds`) — what a step costs at the very least with this
machine's matrix kernels.

Used by ``mae bench`` only (a measurement, not part of any training job): each variant is put against the rate
of its own precision, so no figure can exceed 100 % of a limit measured in another precision.
"""

from __future__ import annotations

import time
from collections import Counter

import torch
from torch import nn

GEMM_OPS = ("mm", "addmm", "bmm", "baddbmm")


def _one_step(model: nn.Module, images: torch.Tensor, mask_ratio: float, dtype: torch.dtype) -> None:
    """Forward + backward of ``model`` on ``images`` under autocast to ``dtype`` (none for fp32); the global RNG
    and the gradients are left as they were."""
    devices = [images.device] if images.device.type == "cuda" else []
    grads = {p: p.grad for p in model.parameters()}
    with (
        torch.random.fork_rng(devices=devices),
        torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32),
    ):
        loss, _, _ = model(images, mask_ratio)
    loss.backward()
    for p, g in grads.items():
        p.grad = g


def step_flops(model: nn.Module, images: torch.Tensor, mask_ratio: float, dtype: torch.dtype = torch.float32) -> float:
    """FLOPs of one training step (forward + backward) per image."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _one_step(model, images, mask_ratio, dtype)
    return counter.get_total_flops() / images.shape[0]


def step_gemms(
    model: nn.Module, images: torch.Tensor, mask_ratio: float, dtype: torch.dtype = torch.float32
) -> list[tuple[str, tuple, tuple]]:
    """Every matrix product one training step runs, in the step's order: (op, shape of A, shape of B)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    gemms: list[tuple[str, tuple, tuple]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in GEMM_OPS:
                a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
                gemms.append((name, tuple(a.shape), tuple(b.shape)))
            return func(*args, **(kwargs or {}))

    with Record():
        _one_step(model, images, mask_ratio, dtype)
    return gemms


def step_gemm_shapes(
    model: nn.Module, images: torch.Tensor, mask_ratio: float, dtype: torch.dtype = torch.float32
) -> Counter:
    """How often one training step runs each matrix product, keyed by (op, shape of A, shape of B)."""
    return Counter(step_gemms(model, images, mask_ratio, dtype))


def _operands(op: str, sa: tuple, sb: tuple, device: torch.device, dtype: torch.dtype):
    """The product's function and random operands of its shapes in ``dtype``."""
    a = torch.randn(sa, device=device, dtype=dtype)
    b = torch.randn(sb, device=device, dtype=dtype)
    return (torch.bmm if op in ("bmm", "baddbmm") else torch.mm), a, b


def gemm_flops(op: str, sa: tuple, sb: tuple) -> float:
    """FLOPs of one matrix product (2 per multiply-add)."""
    return 2.0 * (sa[0] if len(sa) == 3 else 1) * sa[-2] * sa[-1] * sb[-1]


def _best_seconds(run, device: torch.device, repeats: int) -> float:
    """Best of ``repeats`` timings of ``run()``, after one untimed call (which warms kernel caches)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_rate(shapes: Counter, device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """FLOP/s of this machine on ``shapes`` in ``dtype``: each product timed alone (best of ``repeats``), the rates
    combined with the weights the step gives them (total FLOPs ÷ total time)."""
    flops = seconds = 0.0
    for (op, sa, sb), count in shapes.items():
        fn, a, b = _operands(op, sa, sb, device, dtype)
        best = _best_seconds(lambda fn=fn, a=a, b=b: fn(a, b), device, repeats)
        flops += count * gemm_flops(op, sa, sb)
        seconds += count * best
    return flops / seconds


def gemm_chain_seconds(
    gemms: list[tuple[str, tuple, tuple]], device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 5
) -> float:
    """Seconds for ``gemms`` run back to back in their order and nothing else (best of ``repeats``): the time a
    step would take if every other op were free and its matrix products ran as this machine's kernels run them
    in sequence. One operand pair per shape, reused (warm caches: a ceiling, not an estimate)."""
    pairs = {(op, sa, sb): _operands(op, sa, sb, device, dtype) for op, sa, sb in dict.fromkeys(gemms)}
    chain = [pairs[g] for g in gemms]

    def run() -> None:
        for fn, a, b in chain:
            fn(a, b)

    return _best_seconds(run, device, repeats)
