"""Which lever buys probe and fine-tune accuracy per CPU second? (docs/calibration.md, "Levers")

One lever = one change from the default study's base setting (config/config.yaml: the micro ViT, clean 24 px
`shapes`, 5 pretraining epochs, its pretraining, linear-probe and fine-tuning recipes). Each lever pretrains once
and then runs the study's linear probe and fine-tune on the checkpoint, all through ``mae.cli.main`` in this
process (so the extra architectures below exist only here: they are registered for the sweep, not shipped).

usage: python docs/bench/levers.py OUTDIR [--with-scratch] [LEVER ...]   (default: every lever; run two processes
       python docs/bench/levers.py OUTDIR --table       side by side on 2 cores, one thread each; --table prints it)
--with-scratch adds the compute-matched from-scratch fine-tune of the lever's architecture (the study's
scratch_finetune recipe, pretraining + fine-tuning epochs). Writes OUTDIR/LEVER/{pretrain,linprobe,finetune,
scratch_finetune}/metrics.json and OUTDIR/LEVER/lever.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BASE_ARCH = "mae_vit_micro_patch4"
# name -> (what changes, architecture overrides, pretraining overrides, data: (n_train, img_size))
LEVERS: dict[str, tuple[str, dict, dict, tuple[int, int]]] = {
    "base": ("the default study's base setting", {}, {}, (10000, 24)),
    "epochs10": ("10 pretraining epochs (images seen x2)", {}, {"epochs": 10}, (10000, 24)),
    "unique25k": ("25k unique images, 2 epochs (same images seen)", {}, {"epochs": 2}, (25000, 24)),
    "patch6": ("patch 6 (4x4 tokens)", {"patch_size": 6}, {}, (10000, 24)),
    "patch6_ep12": ("patch 6, 12 epochs (about the base's CPU time)", {"patch_size": 6}, {"epochs": 12}, (10000, 24)),
    "patch3": ("patch 3 (8x8 tokens)", {"patch_size": 3}, {}, (10000, 24)),
    "width192": ("width 192, 6 heads", {"embed_dim": 192, "num_heads": 6}, {}, (10000, 24)),
    "width64": ("width 64, 4 heads", {"embed_dim": 64, "num_heads": 4}, {}, (10000, 24)),
    "depth3": ("depth 3", {"depth": 3}, {}, (10000, 24)),
    "depth12": ("depth 12", {"depth": 12}, {}, (10000, 24)),
    "depth3_patch3": ("depth 3 and patch 3", {"depth": 3, "patch_size": 3}, {}, (10000, 24)),
    "depth3_width192": ("depth 3 and width 192", {"depth": 3, "embed_dim": 192, "num_heads": 6}, {}, (10000, 24)),
    "lr4e-3": ("pretraining base lr 4e-3 (default 1.5e-3)", {}, {"base_lr": 4.0e-3}, (10000, 24)),
    "lr5e-4": ("pretraining base lr 5e-4", {}, {"base_lr": 5.0e-4}, (10000, 24)),
    "batch64": ("pretraining batch 64 (lr scales with it)", {}, {"batch_size": 64}, (10000, 24)),
    "batch256": ("pretraining batch 256", {}, {"batch_size": 256}, (10000, 24)),
}


def _sets(section: dict) -> list[str]:
    out: list[str] = []
    for key, value in section.items():
        text = json.dumps(value) if isinstance(value, (list, dict)) or value is None else str(value)
        out += ["--set", f"{key}={'null' if value is None else text}"]
    return out


def _data(root: Path, n_train: int, img: int) -> Path:
    from mae.cli import main

    path = root / "data" / f"shapes-clean-{img}px-{n_train // 1000}k"
    if not (path / "meta.json").exists():
        args = ["--kind", "shapes", "--img-size", str(img), "--n-train", str(n_train), "--n-val", "5000"]
        main(["prepare-data", "--out", str(path), *args, "--seed", "0", "--difficulty", "clean"])
    return path


def run_lever(root: Path, name: str, scratch: bool = False) -> dict:
    import mae.models
    from mae.cli import main
    from mae.registry import choices

    what, arch, pre_over, (n_train, img) = LEVERS[name]
    study = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    model = BASE_ARCH if not arch else f"lever_{name}"
    choices.register("model", model, {**mae.models.model_spec(BASE_ARCH), **arch})
    data, out = _data(root, n_train, img), root / name
    common = ["--data", str(data), "--device", "cpu", "--set", f"model={model}"]
    walls = {}
    pre = {**study["pretrain"], **{k: study["base"][k] for k in ("mask_ratio", "target", "aug", "epochs")}}
    pre.update(decoder_depth=study["base"]["decoder_depth"], decoder_width=study["base"]["decoder_width"])
    pre.update(pre_over)
    stages = (
        ("pretrain", ["pretrain", *common, *_sets(pre)]),
        (
            "linprobe",
            ["linprobe", *common, "--init", str(out / "pretrain" / "checkpoint.pt"), *_sets(study["linprobe"])],
        ),
        (
            "finetune",
            ["finetune", *common, "--init", str(out / "pretrain" / "checkpoint.pt"), *_sets(study["finetune"])],
        ),
    )
    if scratch:  # the compute-matched from-scratch fine-tune of the same architecture (pretraining + FT epochs)
        matched = {**study["finetune"], **study["scratch_finetune"]}
        matched["epochs"] = pre["epochs"] + study["finetune"]["epochs"]
        stages += (("scratch_finetune", ["finetune", *common, "--scratch", *_sets(matched)]),)
    for stage, argv in stages:
        if not (out / stage / "metrics.json").exists():
            t0 = time.monotonic()
            code = main([argv[0], "--out", str(out / stage), *argv[1:]])
            if code:
                raise SystemExit(f"{name}: {stage} exited {code}")
            walls[stage] = time.monotonic() - t0
    metrics = {s: json.loads((out / s / "metrics.json").read_text()) for s, _ in stages}
    record = dict(
        lever=name,
        what=what,
        params=metrics["pretrain"].get("params"),
        pretrain_loss=metrics["pretrain"].get("train_loss"),
        probe_top1=metrics["linprobe"]["top1"],
        finetune_top1=metrics["finetune"]["top1"],
        scratch_top1=metrics["scratch_finetune"]["top1"] if scratch else None,
        cpu_s={s: round(metrics[s].get("wall_s", 0.0), 1) for s, _ in stages},
        process_s={s: round(w, 1) for s, w in walls.items()},
    )
    (out / "lever.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record), flush=True)
    return record


def table(root: Path) -> str:
    rows = [
        "| lever | change | probe top-1 % | fine-tune top-1 % | scratch FT top-1 % | pretrain s | fine-tune s "
        "| params |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in LEVERS:
        path = root / name / "lever.json"
        if path.exists():
            r = json.loads(path.read_text())
            c = r["cpu_s"]
            scratch = (
                "" if r.get("scratch_top1") is None else f"{r['scratch_top1']:.1f} ({c['scratch_finetune']:.0f} s)"
            )
            rows.append(
                f"| `{name}` | {r['what']} | {r['probe_top1']:.1f} | {r['finetune_top1']:.1f} | {scratch} "
                f"| {c['pretrain']:.0f} | {c['finetune']:.0f} | {r['params'] / 1e6:.2f} M |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root, rest = Path(sys.argv[1]), sys.argv[2:]
    with_scratch = "--with-scratch" in rest
    rest = [a for a in rest if a != "--with-scratch"]
    if rest == ["--table"]:
        print(table(root))
        sys.exit(0)
    unknown = [n for n in rest if n not in LEVERS]
    if unknown:
        print(f"error: unknown lever(s) {unknown} (valid: {', '.join(LEVERS)})", file=sys.stderr)
        sys.exit(2)
    for lever in rest or list(LEVERS):
        run_lever(root, lever, scratch=with_scratch)
