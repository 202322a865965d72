"""Throughput of a full MAE pretraining step (forward + backward + AdamW step), in images/s.

``python -m mae.tools.bench pretrain --preset cpu-tiny [--json]`` measures, in one process and interleaved window
by window (so machine noise hits all variants alike):

- ``baseline``      fp32, eager, timm's default attention (fused SDPA) — what the reference code does;
- ``fast``          our training path: the precision ``amp: auto`` picks on this machine (bf16 autocast where the
                    device computes bf16 fast, fp32 otherwise: :mod:`mae.engine.precision`) + ``attention='auto'``
                    (explicit-softmax attention under CPU bf16, where the fused CPU SDPA backward is slow; SDPA
                    otherwise), fused AdamW (``mae.engine.optim``; the other variants use torch's default AdamW),
                    optionally ``torch.compile`` (``--compile``); encoder on the visible tokens only;
- ``mask_token_encoder``  the fast path with mask tokens in the encoder (Table 1c ablation);
- ``hand_tuned``    what a user does by hand to the reference code: the baseline model in the precision of
                    ``fast`` + explicit-softmax attention + ``torch.compile`` of the forward, nothing else
                    (``--no-hand-tuned`` skips it: compiling takes a minute on 2 cores);
- with ``--extra``, for the record: ``fp32_math`` (fp32, explicit-softmax attention), ``bf16_sdpa`` (autocast with
  the fused kernel) and ``bf16_weights`` (the whole model cast to bf16, no autocast casts — a bound on what
  removing casts can give, not a training recipe: AdamW then updates bf16 weights).
``visible_only_img_s`` is the ``fast`` measurement (the fast path *is* the visible-only encoder). The
``visible_only`` entry sets its measured speed-up over ``mask_token_encoder`` beside the FLOP ratio of the two
steps (paper Table 2: 2.8× for ViT-L/16 with an 8-block decoder; preset ``vit-l16-224-cpu`` is that shape).

Each number is the median over ``--windows`` (≥ 5) timed windows after ``--warmup`` untimed steps; before
each window a variant runs ``--rewarm`` untimed steps, because switching between fp32 and bf16 models evicts
cached CPU kernels (oneDNN primitives) and the first step after a switch is much slower. ``--mode interleaved``
(default) times the variants window by window; ``--mode sequential`` times all windows of one variant, then
the next, so the cost of kernel-cache switches shows as the difference between the two.

**Roofline.** Every variant also gets its **% of the roofline**: FLOPs per image of its training step
(``torch.utils.flop_counter``, forward + backward) × img/s ÷ this machine's matrix-product rate *in the
variant's own precision*, which the bench measures on the step's own matrix shapes (every
``mm``/``addmm``/``bmm`` of one step, each timed alone, weighted by how often the step runs it; only the
precisions some variant uses are measured). ``gemm_only_img_s`` is a tighter ceiling for the visible-only step
in the precision of ``fast``: its matrix products, in order, back to back, every other op left out (best of 5
passes, warm operands); ``pct_of_gemm_only`` puts each visible-only variant of that precision against it — no
implementation that uses this machine's matrix kernels runs the step faster. The CPU model and its
vector/matrix flags are printed too: compare only ratios and percentages measured in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass

import torch
from tqdm import tqdm

from mae.engine.precision import Precision, cpu_info, resolve
from mae.errors import UserError
from mae.tools import roofline
from mae.utils.memory import keep_freed_memory

PRESETS = {
    "cpu-tiny": dict(model="mae_vit_tiny_patch4", img_size=32, batch_size=256, mask_ratio=0.75, device="cpu"),
    "cpu-micro": dict(model="mae_vit_micro_patch4", img_size=32, batch_size=256, mask_ratio=0.75, device="cpu"),
    "vit-b16-224": dict(model="mae_vit_base_patch16", img_size=224, batch_size=128, mask_ratio=0.75, device="cuda"),
    # the paper's Table 2 shape (ViT-L/16, 224 px, 8-block decoder) at a batch a CPU runs in seconds
    "vit-l16-224-cpu": dict(model="mae_vit_large_patch16", img_size=224, batch_size=4, mask_ratio=0.75, device="cpu"),
}
#: the variants timed by default (``--variants`` picks a subset; ``--extra`` adds :data:`EXTRA`)
DEFAULT_VARIANTS = ("baseline", "fast", "mask_token_encoder", "hand_tuned")
EXTRA = ("fp32_math", "bf16_sdpa", "bf16_weights")


@dataclass
class Variant:
    name: str
    amp: str  # auto | bf16 | none (mae.engine.precision)
    attention: str
    mask_token_in_encoder: bool = False
    compile: bool = False
    bf16_weights: bool = False
    ours: bool = False  # our training path's optimizer (mae.engine.optim: fused AdamW) instead of plain torch AdamW


class StepRunner:
    """One model + AdamW + fixed random batch; ``step()`` runs one full training step."""

    def __init__(self, variant: Variant, preset: dict, device: torch.device, seed: int = 0):
        from mae.models import create_mae

        torch.manual_seed(seed)
        self.variant, self.device, self.mask_ratio = variant, device, preset["mask_ratio"]
        self.precision: Precision = resolve(variant.amp, device)
        dtype = torch.bfloat16 if variant.bf16_weights else torch.float32
        #: the precision of the step's matrix products (its roofline's)
        self.dtype = torch.bfloat16 if variant.bf16_weights else self.precision.dtype
        self.model = create_mae(
            preset["model"],
            norm_pix_loss=True,
            attention=variant.attention,
            mask_token_in_encoder=variant.mask_token_in_encoder,
        ).to(device, dtype)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if variant.ours:
            from types import SimpleNamespace

            from mae.engine.optim import build_optimizer

            self.opt = build_optimizer(
                "adamw", [{"params": params}], 1.5e-4, SimpleNamespace(betas=(0.9, 0.95), weight_decay=0.05)
            )
        else:
            self.opt = torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
        self.forward = torch.compile(self.model) if variant.compile else self.model
        size = preset["img_size"]
        self.images = torch.randn(preset["batch_size"], 3, size, size, device=device, dtype=dtype)

    def step(self) -> float:
        with self.precision.autocast(self.device):
            loss, _, _ = self.forward(self.images, self.mask_ratio)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------- roofline
def step_flops(runner: StepRunner) -> float:
    """FLOPs of one training step (forward + backward) per image, counted on the eager model."""
    return roofline.step_flops(runner.model, runner.images, runner.mask_ratio, runner.precision.dtype)


def step_gemms(runner: StepRunner) -> list[tuple[str, tuple, tuple]]:
    """The matrix products of one training step, in order: (op, shape of A, shape of B)."""
    return roofline.step_gemms(runner.model, runner.images, runner.mask_ratio, runner.precision.dtype)


gemm_rate = roofline.gemm_rate


def _time_windows(
    runners: list[StepRunner], windows: int, steps: int, rewarm: int, mode: str, progress: bool
) -> dict[str, list[float]]:
    """Seconds per timed window of every runner; ``mode`` interleaved (window by window) or sequential."""
    times: dict[str, list[float]] = {r.variant.name: [] for r in runners}
    n = runners[0].images.shape[0] * steps
    order = (
        [r for _ in range(windows) for r in runners]
        if mode == "interleaved"
        else [r for r in runners for _ in range(windows)]
    )
    bar = tqdm(total=len(order) * n, unit="img", unit_scale=True, disable=not progress, desc=f"bench ({mode})")
    for r in order:
        for _ in range(rewarm):  # untimed: re-warms kernel caches (oneDNN primitives) after a switch
            r.step()
        r.sync()
        start = time.perf_counter()
        for _ in range(steps):
            r.step()
        r.sync()
        times[r.variant.name].append(time.perf_counter() - start)
        bar.update(n)
        bar.set_postfix({r.variant.name: f"{n / times[r.variant.name][-1]:.0f} img/s"})
    bar.close()
    return times


def bench_pretrain(
    preset_name: str,
    batch_size: int | None = None,
    windows: int = 5,
    steps_per_window: int = 1,
    warmup: int = 2,
    compile: bool = False,
    device: str | None = None,
    progress: bool = True,
    rewarm: int = 1,
    extra: bool = False,
    hand_tuned: bool = True,
    mode: str = "interleaved",
    only: list[str] | None = None,
) -> dict:
    """Measure the variants on one preset; returns the JSON-able result dict."""
    if preset_name not in PRESETS:
        raise UserError(f"unknown preset '{preset_name}' (valid: {', '.join(PRESETS)})")
    if mode not in ("interleaved", "sequential"):
        raise UserError(f"unknown mode '{mode}' (valid: interleaved, sequential)")
    preset = dict(PRESETS[preset_name])
    if batch_size is not None:
        preset["batch_size"] = batch_size
    dev = torch.device(device or preset["device"])
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"preset '{preset_name}' needs CUDA, which is not available (use --device cpu)")
    every = {
        v.name: v
        for v in (
            Variant("baseline", amp="none", attention="sdpa"),
            Variant("fast", amp="auto", attention="auto", compile=compile, ours=True),
            Variant(
                "mask_token_encoder",
                amp="auto",
                attention="auto",
                mask_token_in_encoder=True,
                compile=compile,
                ours=True,
            ),
            Variant("hand_tuned", amp="auto", attention="math", compile=True),
            Variant("fp32_math", amp="none", attention="math"),
            Variant("bf16_sdpa", amp="bf16", attention="sdpa"),
            Variant("bf16_weights", amp="none", attention="math", compile=compile, bf16_weights=True),
        )
    }
    names = list(only or [n for n in DEFAULT_VARIANTS if hand_tuned or n != "hand_tuned"])
    names += [n for n in EXTRA if extra and n not in names]
    bad = [n for n in names if n not in every]
    if bad:
        raise UserError(f"unknown variant {bad[0]!r} (valid: {', '.join(every)})")
    names = ["fast", "mask_token_encoder"] + [n for n in names if n not in ("fast", "mask_token_encoder")]
    variants = [every[n] for n in names]
    if dev.type == "cpu":
        torch.set_flush_denormal(True)  # as the training loop does (mae.engine.fit)
    malloc_tuned = keep_freed_memory()  # as every `mae` command does (mae.utils.memory)
    runners = [StepRunner(v, preset, dev) for v in variants]
    # FLOPs of the architecture, counted once on the fast path (the fused attention kernel's count differs)
    arch = {
        r.variant.mask_token_in_encoder: step_flops(r)
        for r in runners
        if r.variant.name in ("fast", "mask_token_encoder")
    }
    flops = {r.variant.name: arch[r.variant.mask_token_in_encoder] for r in runners}
    fast = runners[0]
    gemms = step_gemms(fast)  # the shapes of the visible-only step (the same in every precision)
    shapes = Counter(gemms)
    rates = {dtype: gemm_rate(shapes, dev, dtype) for dtype in dict.fromkeys(r.dtype for r in runners)}
    gemm_only = preset["batch_size"] / roofline.gemm_chain_seconds(gemms, dev, fast.dtype)
    for r in runners:
        for _ in range(warmup):
            r.step()
        r.sync()
    times = _time_windows(runners, windows, steps_per_window, rewarm, mode, progress)
    n = preset["batch_size"] * steps_per_window
    window_rates = {name: [n / t for t in ts] for name, ts in times.items()}
    med = {name: statistics.median(v) for name, v in window_rates.items()}
    by_name = {r.variant.name: r for r in runners}
    same_as_fast = [r.variant.name for r in runners if r.dtype == fast.dtype and not r.variant.mask_token_in_encoder]
    res = {
        "preset": preset_name,
        "model": preset["model"],
        "batch_size": preset["batch_size"],
        "mask_ratio": preset["mask_ratio"],
        "device": str(dev),
        "threads": torch.get_num_threads(),
        **(cpu_info() if dev.type == "cpu" else {"gpu": torch.cuda.get_device_name(dev)}),
        "mode": mode,
        "windows": windows,
        "steps_per_window": steps_per_window,
        "rewarm": rewarm,
        "compile": compile,
        "malloc_tuned": malloc_tuned,
        "amp": {r.variant.name: r.precision.amp for r in runners},
        "amp_reason": fast.precision.reason,
        "img_s": med,
        "range_img_s": {name: (min(v), max(v)) for name, v in window_rates.items()},
        "window_img_s": window_rates,
        "gflop_per_image": {name: f / 1e9 for name, f in flops.items()},
        "gemm_gflop_s": {_DTYPE_NAMES[dtype]: rate / 1e9 for dtype, rate in rates.items()},
        "roofline_pct": {name: 100.0 * flops[name] * med[name] / rates[by_name[name].dtype] for name in med},
        "gemm_only_img_s": gemm_only,
        "pct_of_gemm_only": {name: 100.0 * med[name] / gemm_only for name in same_as_fast},
        "visible_only": _visible_only(flops, med, window_rates),
    }
    return {**res, **_legacy_keys(med)}


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_SHOWN = {"none": "fp32"}


def _visible_only(flops: dict[str, float], med: dict[str, float], rates: dict[str, list[float]]) -> dict:
    """Visible-only encoder vs mask tokens in the encoder: FLOP ratio, measured ratio (of the medians; with the
    range of the window-by-window ratios), measured as % of the FLOP ratio."""
    flop_ratio = flops["mask_token_encoder"] / flops["fast"]
    measured = med["fast"] / med["mask_token_encoder"]
    pairs = [a / b for a, b in zip(rates["fast"], rates["mask_token_encoder"])]
    return {
        "flop_ratio": flop_ratio,
        "measured_ratio": measured,
        "window_ratio_range": (min(pairs), max(pairs)),
        "pct_of_flop_ratio": 100.0 * measured / flop_ratio,
    }


def _legacy_keys(med: dict[str, float]) -> dict:
    """The headline ratios (and the flat keys earlier versions of the bench printed)."""
    out = {
        "fast_img_s": med["fast"],
        "visible_only_img_s": med["fast"],
        "mask_token_encoder_img_s": med["mask_token_encoder"],
        "speedup_visible_vs_mask_token": med["fast"] / med["mask_token_encoder"],
        "extra_img_s": {
            k: v for k, v in med.items() if k not in ("baseline", "fast", "mask_token_encoder", "hand_tuned")
        },
    }
    if "baseline" in med:
        out.update(baseline_img_s=med["baseline"], speedup_fast_vs_baseline=med["fast"] / med["baseline"])
    if "hand_tuned" in med:
        out["speedup_fast_vs_hand_tuned"] = med["fast"] / med["hand_tuned"]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pretrain", help="full pretraining step throughput")
    p.add_argument("--preset", default="cpu-tiny", choices=list(PRESETS))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--windows", type=int, default=5, help="timed windows (>= 5); the median is reported")
    p.add_argument("--steps-per-window", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rewarm", type=int, default=1, help="untimed steps before each window (after a variant switch)")
    p.add_argument("--compile", action="store_true", help="torch.compile the fast variants")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="override the preset's device")
    p.add_argument("--extra", action="store_true", help="also time fp32_math, bf16_sdpa and bf16_weights")
    p.add_argument("--no-hand-tuned", action="store_true", help="skip the hand_tuned variant (saves its compile)")
    p.add_argument(
        "--mode",
        default="interleaved",
        choices=["interleaved", "sequential"],
        help="time the variants window by window, or one variant's windows after the other's",
    )
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated subset to time (fast and mask_token_encoder always run; default: "
        f"{','.join(DEFAULT_VARIANTS)})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from mae.tools import stage_rates

    stage_rates.add_arguments(
        sub.add_parser(
            "stages",
            help=(
                "every stage's end-to-end rate against its step rate, from a finished study (mae/tools/stage_rates.py)"
            ),
        )
    )


def main(args: argparse.Namespace) -> int:
    if args.what == "stages":
        from mae.tools import stage_rates

        return stage_rates.main(args)
    if args.windows < 5:
        raise UserError(f"--windows must be >= 5, got {args.windows}")
    for name, low in (("batch_size", 1), ("steps_per_window", 1), ("warmup", 0), ("rewarm", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    res = bench_pretrain(
        args.preset,
        args.batch_size,
        args.windows,
        args.steps_per_window,
        args.warmup,
        args.compile,
        args.device,
        progress=not args.json,
        rewarm=args.rewarm,
        extra=args.extra,
        hand_tuned=not args.no_hand_tuned,
        mode=args.mode,
        only=args.variants.split(",") if args.variants else None,
    )
    if args.json:
        print(json.dumps(res))
        return 0
    where = res.get("cpu") or res.get("gpu")
    print(
        f"{res['preset']} ({res['model']}, batch {res['batch_size']}, {res['device']}: {where}"
        f"{' [' + ' '.join(res['flags']) + ']' if res.get('flags') else ''}, {res['threads']} threads, "
        f"median of {res['windows']} windows, {res['mode']}, "
        f"allocator {'tuned' if res['malloc_tuned'] else 'glibc defaults'})"
    )
    rates = ", ".join(f"{rate:.0f} GFLOP/s in {dtype}" for dtype, rate in res["gemm_gflop_s"].items())
    print(f"  precision of the fast path: {res['amp']['fast']} ({res['amp_reason']})")
    print(f"  matrix products of the step's shapes: {rates} (the roofline of each precision)")
    print(
        f"  the step's matrix products alone, back to back: {res['gemm_only_img_s']:.1f} img/s "
        f"(the ceiling, in {_SHOWN.get(res['amp']['fast'], res['amp']['fast'])})"
    )
    print(f"  {'variant':22s} {'amp':>5s} {'img/s':>9s} {'GFLOP/img':>10s} {'% roofline':>11s} {'% ceiling':>10s}")
    for name, value in res["img_s"].items():
        ceiling = f"{res['pct_of_gemm_only'][name]:9.1f}%" if name in res["pct_of_gemm_only"] else f"{'-':>10s}"
        print(
            f"  {name:22s} {res['amp'][name]:>5s} {value:9.1f} {res['gflop_per_image'][name]:10.3f} "
            f"{res['roofline_pct'][name]:10.1f}% {ceiling}"
        )
    if "speedup_fast_vs_baseline" in res:
        print(f"  fast / baseline               {res['speedup_fast_vs_baseline']:.2f}x")
    if "speedup_fast_vs_hand_tuned" in res:
        print(
            f"  fast / hand_tuned             {res['speedup_fast_vs_hand_tuned']:.2f}x "
            f"(the ceiling is {res['gemm_only_img_s'] / res['img_s']['hand_tuned']:.2f}x hand_tuned)"
        )
    vis = res["visible_only"]
    print(
        f"  visible-only / mask-token enc {vis['measured_ratio']:.2f}x measured, {vis['flop_ratio']:.2f}x in FLOPs "
        f"({vis['pct_of_flop_ratio']:.0f} % of the FLOP ratio)"
    )
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m mae.tools.bench", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    try:
        sys.exit(main(_parser.parse_args()))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
