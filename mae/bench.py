"""Throughput of a full MAE pretraining step (forward + backward + AdamW step), in images/s.

``python -m mae.bench pretrain --preset cpu-tiny [--json]`` measures, in one process and interleaved window
by window (so machine noise hits all variants alike):

- ``baseline``      fp32, eager, timm's default attention (fused SDPA) — what the reference code does;
- ``fast``          our training path: bf16 autocast + ``attention='auto'`` (explicit-softmax attention
                    under CPU bf16, where the fused CPU SDPA backward is slow; SDPA on CUDA), optionally
                    ``torch.compile`` (``--compile``); encoder on the visible tokens only;
- ``mask_token_encoder``  the fast path with mask tokens in the encoder (Table 1c ablation);
- with ``--extra``, for the record: ``fp32_math`` (fp32, explicit-softmax attention), ``bf16_sdpa`` (autocast with
  the fused kernel) and ``bf16_weights`` (the whole model cast to bf16, no autocast casts — a bound on what
  removing casts can give, not a training recipe: AdamW then updates bf16 weights).
``visible_only_img_s`` is the ``fast`` measurement (the fast path *is* the visible-only encoder).

Each number is the median over ``--windows`` (≥ 5) timed windows after ``--warmup`` untimed steps; before
each window a variant runs ``--rewarm`` untimed steps, because switching between fp32 and bf16 models evicts
cached CPU kernels (oneDNN primitives) and the first step after a switch is much slower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from mae.errors import UserError

PRESETS = {
    "cpu-tiny": dict(model="mae_vit_tiny_patch4", img_size=32, batch_size=256, mask_ratio=0.75, device="cpu"),
    "cpu-micro": dict(model="mae_vit_micro_patch4", img_size=32, batch_size=256, mask_ratio=0.75, device="cpu"),
    "vit-b16-224": dict(model="mae_vit_base_patch16", img_size=224, batch_size=128, mask_ratio=0.75, device="cuda"),
}


@dataclass
class Variant:
    name: str
    bf16: bool
    attention: str
    mask_token_in_encoder: bool = False
    compile: bool = False
    bf16_weights: bool = False


class StepRunner:
    """One model + AdamW + fixed random batch; ``step()`` runs one full training step."""

    def __init__(self, variant: Variant, preset: dict, device: torch.device, seed: int = 0):
        from mae.models import create_mae

        torch.manual_seed(seed)
        self.variant, self.device, self.mask_ratio = variant, device, preset["mask_ratio"]
        dtype = torch.bfloat16 if variant.bf16_weights else torch.float32
        self.model = create_mae(preset["model"], norm_pix_loss=True, attention=variant.attention,
                                mask_token_in_encoder=variant.mask_token_in_encoder).to(device, dtype)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
        self.forward = torch.compile(self.model) if variant.compile else self.model
        size = preset["img_size"]
        self.images = torch.randn(preset["batch_size"], 3, size, size, device=device, dtype=dtype)

    def step(self) -> float:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.variant.bf16):
            loss, _, _ = self.forward(self.images, self.mask_ratio)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def bench_pretrain(preset_name: str, batch_size: int | None = None, windows: int = 5, steps_per_window: int = 1,
                   warmup: int = 2, compile: bool = False, device: str | None = None, progress: bool = True,
                   rewarm: int = 1, extra: bool = False) -> dict:
    """Measure the variants on one preset; returns the JSON-able result dict."""
    if preset_name not in PRESETS:
        raise UserError(f"unknown preset '{preset_name}' (valid: {', '.join(PRESETS)})")
    preset = dict(PRESETS[preset_name])
    if batch_size:
        preset["batch_size"] = batch_size
    dev = torch.device(device or preset["device"])
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"preset '{preset_name}' needs CUDA, which is not available (use --device cpu)")
    variants = [
        Variant("baseline", bf16=False, attention="sdpa"),
        Variant("fast", bf16=True, attention="auto", compile=compile),
        Variant("mask_token_encoder", bf16=True, attention="auto", mask_token_in_encoder=True, compile=compile),
    ]
    if extra:
        variants += [Variant("fp32_math", bf16=False, attention="math"),
                     Variant("bf16_sdpa", bf16=True, attention="sdpa"),
                     Variant("bf16_weights", bf16=False, attention="math", compile=compile, bf16_weights=True)]
    runners = [StepRunner(v, preset, dev) for v in variants]
    for r in runners:
        for _ in range(warmup):
            r.step()
        r.sync()
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    n = preset["batch_size"] * steps_per_window
    bar = tqdm(total=windows * len(runners) * n, unit="img", unit_scale=True, disable=not progress, desc="bench")
    for _ in range(windows):
        for r in runners:  # interleaved: the same noise window hits every variant
            for _ in range(rewarm):  # untimed: re-warms kernel caches (oneDNN primitives) after a switch
                r.step()
            r.sync()
            start = time.perf_counter()
            for _ in range(steps_per_window):
                r.step()
            r.sync()
            times[r.variant.name].append(time.perf_counter() - start)
            bar.update(n)
            bar.set_postfix({r.variant.name: f"{n / times[r.variant.name][-1]:.0f} img/s"})
    bar.close()
    rates = {name: [n / t for t in ts] for name, ts in times.items()}
    med = {name: statistics.median(v) for name, v in rates.items()}
    spread = {name: (min(v), max(v)) for name, v in rates.items()}
    return {
        "preset": preset_name, "model": preset["model"], "batch_size": preset["batch_size"],
        "mask_ratio": preset["mask_ratio"], "device": str(dev), "threads": torch.get_num_threads(),
        "windows": windows, "steps_per_window": steps_per_window, "rewarm": rewarm, "compile": compile,
        "baseline_img_s": med["baseline"], "fast_img_s": med["fast"], "visible_only_img_s": med["fast"],
        "mask_token_encoder_img_s": med["mask_token_encoder"],
        "speedup_fast_vs_baseline": med["fast"] / med["baseline"],
        "speedup_visible_vs_mask_token": med["fast"] / med["mask_token_encoder"],
        "range_img_s": spread,
        "extra_img_s": {name: v for name, v in med.items() if name not in ("baseline", "fast", "mask_token_encoder")},
    }


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
    p.add_argument("--device", default=None, help="override the preset's device")
    p.add_argument("--extra", action="store_true", help="also time fp32_math, bf16_sdpa and bf16_weights")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    if args.windows < 5:
        raise UserError(f"--windows must be >= 5, got {args.windows}")
    res = bench_pretrain(args.preset, args.batch_size, args.windows, args.steps_per_window, args.warmup,
                         args.compile, args.device, progress=not args.json, rewarm=args.rewarm, extra=args.extra)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['preset']} ({res['model']}, batch {res['batch_size']}, {res['device']}, "
              f"{res['threads']} threads, median of {res['windows']} windows)")
        for key in ("baseline_img_s", "fast_img_s", "mask_token_encoder_img_s"):
            print(f"  {key:28s} {res[key]:9.1f} img/s")
        for name, value in res["extra_img_s"].items():
            print(f"  {name + '_img_s':28s} {value:9.1f} img/s")
        print(f"  fast / baseline               {res['speedup_fast_vs_baseline']:.2f}x")
        print(f"  visible-only / mask-token enc {res['speedup_visible_vs_mask_token']:.2f}x")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m mae.bench", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    try:
        sys.exit(main(_parser.parse_args()))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
