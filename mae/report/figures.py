"""The paper's figures from our runs, each with the paper's curve where it has one (``mae figures``).

Written to ``--out`` as PNG and PDF (seaborn):

- ``fig5_masking_ratio``    masking ratio vs fine-tune / linear-probe accuracy (paper Fig. 5)
- ``fig7_schedule``         pretraining epochs vs accuracy (paper Fig. 7)
- ``fig9_partial_ft``       number of fine-tuned last blocks vs accuracy (paper Fig. 9, with MoCo v3)
- ``fig_mask_sampling``     random / block / grid masks on the same validation image (paper Fig. 6)
- ``fig_reconstructions``   original, masked, reconstruction, reconstruction + visible patches of held-out
                            validation images from the pretraining checkpoint of the base run's raw-pixel twin
                            where the study has one, else of the base run (paper Figs. 2–3)
- ``fig_loss_curves``       pretraining loss of every run (from ``pretrain/log.jsonl``)

Our accuracies and the paper's live on different scales (toy data vs ImageNet), so ours and the paper's are
drawn in separate rows with their own axes. A figure without data is skipped with a logged message, never
faked; ``figures.json`` in ``--out`` lists what was written and what was skipped (and why).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mae.errors import UserError  # noqa: E402
from mae.registry.ablations import ABLATIONS  # noqa: E402
from mae.report import paper as P  # noqa: E402
from mae.report.evidence import Evidence  # noqa: E402
from mae.report.replicates import REPLICATES, read_replicates  # noqa: E402
from mae.report.runs_csv import (  # noqa: E402
    base_knobs,
    base_run,
    differs_only_in,
    pretraining_knobs,
    read_summary,
    table_runs,
)
from mae.report.summary import loss_curves  # noqa: E402
from mae.tools.visualize import (  # noqa: E402,F401 - reconstruct, save: shared with `mae visualize`
    PIXEL_TARGETS,
    dataset_images,
    image_size,
    load_mae,
    patch_mask_image,
    reconstruct,
    reconstruction_figure,
    show_masked,
    to_display,
)
from mae.tools.visualize import (
    save_figure as save,
)
from mae.utils.io import atomic_write_json  # noqa: E402

log = logging.getLogger("mae.report.figures")

FIGURES = (
    "fig5_masking_ratio",
    "fig7_schedule",
    "fig9_partial_ft",
    "fig_mask_sampling",
    "fig_reconstructions",
    "fig_loss_curves",
)
PANEL = {"finetune": "fine-tuning", "linprobe": "linear probing"}
PAPER_PANEL = {"ft_top1": "fine-tuning", "lin_top1": "linear probing"}


class Skip(Exception):
    """A figure cannot be drawn from the available data (the message says why)."""


# --------------------------------------------------------------------------------------------- curves
def _ours_long(
    evidence: Evidence, rows: pd.DataFrame, x: str, evals: tuple[str, ...] = ("finetune", "linprobe")
) -> pd.DataFrame:
    """Our points (mean over seeds) with the half-width of their 95 % interval (``ci``, NaN if unknown)."""
    parts = []
    for ev in evals:
        cells = evidence.table(ev, "top1", [x], rows.index)
        parts.append(
            pd.DataFrame(
                {
                    "x": pd.to_numeric(cells[x], errors="coerce").astype(float),
                    "value": cells["mean"].astype(float),
                    "ci": cells["ci"].astype(float),
                    "panel": PANEL[ev],
                    "series": "ours",
                    "source": "ours",
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _paper_long(table: str, model: str, x_of, series_of=None) -> pd.DataFrame:
    rows = P.paper_rows(table)
    if series_of is None:
        rows = rows[rows["model"] == model]
    else:  # Fig. 9: one curve per pretraining method
        rows = rows[rows["model"].str.startswith(("MAE ", "MoCo"))]
    rows = rows[rows["setting"].str.contains("=")]
    return pd.DataFrame(
        {
            "x": [x_of(s) for s in rows["setting"]],
            "value": rows["value"].astype(float),
            "panel": rows["metric"].map(lambda m: PAPER_PANEL.get(m, "top-1")),
            "series": [series_of(m) for m in rows["model"]] if series_of else "MAE",
            "source": f"paper ({model})",
        }
    )


def _curve_figure(ours: pd.DataFrame, paper: pd.DataFrame, xlabel: str, title: str, logx: bool = False) -> plt.Figure:
    data = pd.concat([ours, paper], ignore_index=True)
    data["x"] = data["x"].astype(float)
    grid = sns.relplot(
        data=data,
        x="x",
        y="value",
        hue="series",
        style="series",
        row="source",
        col="panel",
        kind="line",
        markers=True,
        dashes=False,
        errorbar=None,
        height=2.6,
        aspect=1.3,
        facet_kws={"sharex": False, "sharey": False},
    )
    for (panel, _series), pts in ours.dropna(subset=["ci"]).groupby(["panel", "series"]):
        ax = grid.axes_dict.get(("ours", panel))
        if ax is not None:  # 95 % intervals of our points (seeds and val images; none without a seed variance)
            ax.errorbar(pts["x"], pts["value"], yerr=pts["ci"], fmt="none", ecolor="0.3", capsize=3, lw=1)
    grid.set_axis_labels(xlabel, "top-1 accuracy (%) ± 95% CI")
    grid.set_titles("{row_name} — {col_name}")
    if logx:
        for ax in grid.axes.flat:
            ax.set_xscale("log", base=2)
    grid.figure.suptitle(title, y=1.02)
    return grid.figure


def fig5(evidence: Evidence, paper_model: str) -> plt.Figure:
    frame = evidence.frame
    spec = ABLATIONS["fig5"]
    rows = table_runs(frame, spec.id, list(spec.columns)) if len(frame) else frame
    rows = rows[rows["sampling"].fillna("random") == "random"] if len(rows) else rows
    ours = _ours_long(evidence, rows, "mask_ratio") if len(rows) else pd.DataFrame()
    if not len(ours) or ours["x"].nunique() < 2:
        raise Skip("needs fine-tune or linear-probe results at two or more mask ratios")
    ours["x"] = ours["x"] * 100
    paper = _paper_long(spec.paper_table, paper_model, lambda s: round(100 * spec.from_paper(s)["mask_ratio"], 6))
    return _curve_figure(ours, paper, spec.headers[0], spec.title)


def fig7(evidence: Evidence, paper_model: str) -> plt.Figure:
    frame = evidence.frame
    spec = ABLATIONS["fig7"]
    rows = table_runs(frame, spec.id, list(spec.columns)) if len(frame) else frame
    ours = _ours_long(evidence, rows, spec.columns[0]) if len(rows) else pd.DataFrame()
    if not len(ours) or ours["x"].nunique() < 2:
        raise Skip("needs fine-tune or linear-probe results at two or more pretraining schedules")
    paper = _paper_long(spec.paper_table, paper_model, lambda s: float(spec.from_paper(s)["epochs"]))
    return _curve_figure(ours, paper, spec.headers[0], spec.title, logx=True)


def fig9(evidence: Evidence) -> plt.Figure:
    frame = evidence.frame
    if not len(frame):
        raise Skip("no results")
    rows = frame[differs_only_in(frame, [])]
    part = evidence.table("partial_ft", "top1", ["eval_setting"], rows.index, eval_setting=None)
    if len(part) < 2:
        raise Skip("needs partial fine-tuning of the base run at two or more block counts")
    ours = pd.DataFrame(
        {
            "x": pd.to_numeric(part["eval_setting"], errors="coerce").astype(float),
            "value": part["mean"].astype(float),
            "ci": part["ci"].astype(float),
            "panel": "top-1",
            "series": "MAE (ours)",
            "source": "ours",
        }
    )
    depth = _encoder_depth(str(base_knobs(frame).get("model")))
    full = evidence.table("finetune", "top1", [], rows.index)
    if depth and len(full) and float(depth) not in set(ours["x"]):
        ours = pd.concat(
            [
                ours,
                pd.DataFrame(
                    {
                        "x": [float(depth)],
                        "value": full["mean"].astype(float).tolist(),
                        "ci": full["ci"].astype(float).tolist(),
                        "panel": "top-1",
                        "series": "MAE (ours)",
                        "source": "ours",
                    }
                ),
            ],
            ignore_index=True,
        )
    paper = _paper_long(
        "Fig 9",
        "ViT-L/16",
        lambda s: float(s.split("=")[1]),
        series_of=lambda m: "MAE" if m.startswith("MAE") else "MoCo v3",
    )
    paper["source"] = "paper (ViT-L/16)"
    return _curve_figure(ours, paper, "# blocks fine-tuned (last ones)", "Partial fine-tuning (paper Fig. 9)")


def _encoder_depth(model: str) -> int | None:
    try:
        from mae.models import model_specs
    except ImportError:  # pragma: no cover - models missing
        return None
    return model_specs().get(model, {}).get("depth")


def fig_loss_curves(runs_dir: str | Path) -> plt.Figure:
    curves = loss_curves(runs_dir)
    if not len(curves) or curves["loss"].notna().sum() < 2:
        raise Skip(f"no pretraining logs with a loss under {runs_dir}/*/pretrain/log.jsonl")
    x = "epoch" if curves["epoch"].notna().all() else "step"
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=curves, x=x, y="loss", hue="run", ax=ax, linewidth=1)
    ax.set_title("Pretraining loss per run")
    ax.set_ylabel("training loss (removed patches)")
    if curves["run"].nunique() > 1:
        ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False)
    return fig


# --------------------------------------------------------------------------------------------- images
def _val_images(data_dir: str | Path, img_size: int, count: int):
    """``count`` held-out validation images, ImageNet-normalised (N,3,H,W), from a prepared dataset."""
    try:
        return dataset_images(data_dir, img_size, count)
    except UserError as why:  # no prepared dataset, an empty split: the figure is skipped, saying why
        raise Skip(str(why)) from None


def fig_mask_sampling(frame: pd.DataFrame, data_dir: str | Path | None, seed: int = 0) -> plt.Figure:
    import torch

    from mae.models.masking import build_sampler

    if data_dir is None:
        raise Skip("no --data folder given")
    knobs = base_knobs(frame) if len(frame) else {}
    img_size, patch = _image_geometry(knobs)
    x = _val_images(data_dir, img_size, 1)
    grid = (img_size // patch, img_size // patch)
    cases = [("random", 0.75), ("block", 0.5), ("block", 0.75), ("grid", 0.75)]
    img = to_display(x)[0]
    fig, axes = plt.subplots(1, len(cases) + 1, figsize=(2.2 * (len(cases) + 1), 2.5))
    axes[0].imshow(img)
    axes[0].set_title("original", fontsize=9)
    torch.manual_seed(seed)
    for ax, (name, ratio) in zip(axes[1:], cases):
        sample = build_sampler(name)(1, grid, ratio)
        pm = patch_mask_image(sample.mask, grid, patch)[0].permute(1, 2, 0).numpy()
        ax.imshow(show_masked(img, pm))
        ax.set_title(f"{name} {int(round(ratio * 100))}%", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle("Mask sampling strategies (paper Fig. 6)", fontsize=10)
    return fig


def _image_geometry(knobs: dict[str, Any]) -> tuple[int, int]:
    img_size, patch = knobs.get("img_size"), knobs.get("patch_size")
    if _missing(img_size) or _missing(patch):
        try:
            from mae.models import model_spec

            spec = model_spec(str(knobs.get("model")))
        except Exception as err:
            raise Skip(f"image/patch size unknown: {err}") from None
        img_size = spec["img_size"] if _missing(img_size) else img_size
        patch = spec["patch_size"] if _missing(patch) else patch
    return int(img_size), int(patch)


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def load_pretrained(run_dir: Path, knobs: dict[str, Any]):
    """The MAE of a run with its pretraining checkpoint loaded (model, target and sampler from the run's knobs)."""
    ckpt = run_dir / "pretrain" / "checkpoint.pt"
    if not ckpt.is_file():
        raise Skip(f"no pretraining checkpoint at {ckpt}")
    target = str(knobs.get("target") or "pixel")
    if target not in PIXEL_TARGETS:
        raise Skip(f"base run target '{target}' does not predict pixels")
    sampling = None if _missing(knobs.get("sampling")) else str(knobs["sampling"])
    model, _ = load_mae(ckpt, model=str(knobs.get("model")), target=target, sampling=sampling)
    return model


def reconstruction_runs(frame: pd.DataFrame) -> list[str]:
    """The runs whose reconstructions ``fig_reconstructions`` may show, in order: the base run's raw-pixel twin (its
    settings and seed with ``target: pixel``, Table 1d's ``target-pixel``) where the study has one, as the MAE
    authors draw their figures with a pixel-target model, then the base run. A normalised-pixel decoder predicts no
    patch mean or variance, so its masked patches can only be shown with those of the original image."""
    run = base_run(frame) if len(frame) else None
    if run is None:
        return []
    base = frame[frame["run"] == run].iloc[0]
    if str(base.get("target")) != "norm_pixel":
        return [run]
    twin = frame[differs_only_in(frame, ["target"], {k: base[k] for k in pretraining_knobs()})]
    twin = twin[(twin["target"].astype(str) == "pixel") & (twin["seed"].astype(str) == str(base.get("seed")))]
    return [str(twin["run"].iloc[0]), run] if len(twin) else [run]


def fig_reconstructions(
    frame: pd.DataFrame, runs_dir: str | Path, data_dir: str | Path | None, count: int = 4, seed: int = 0
) -> plt.Figure:
    """Of the first of :func:`reconstruction_runs` with a pretraining checkpoint."""
    if data_dir is None:
        raise Skip("no --data folder given")
    runs = reconstruction_runs(frame)
    if not runs:
        raise Skip("no MAE run in the summary")
    run = next((r for r in runs if (Path(runs_dir) / r / "pretrain" / "checkpoint.pt").is_file()), runs[-1])
    rows = frame[(frame["run"] == run)]
    knobs = rows.iloc[0].to_dict()
    model = load_pretrained(Path(runs_dir) / run, knobs)
    x = _val_images(data_dir, image_size(model), count)
    ratio = float(knobs["mask_ratio"]) if not _missing(knobs.get("mask_ratio")) else 0.75
    what = {
        "pixel": "raw-pixel target",
        "norm_pixel": "normalised-pixel target;\nmasked patches shown with the original's patch mean and variance",
    }.get(str(knobs.get("target")), str(knobs.get("target")))
    title = f"Reconstructions of held-out validation images\n(run {run}: {what})"
    return reconstruction_figure(model, x, ratio, title, seed)


# --------------------------------------------------------------------------------------------- all
def make_figures(
    frame: pd.DataFrame,
    runs_dir: str | Path,
    data_dir: str | Path | None,
    out_dir: str | Path,
    paper_model: str = P.DEFAULT_PAPER_MODEL,
    only: list[str] | None = None,
    replicates: dict | None = None,
) -> dict[str, Any]:
    """Draw every figure (or those in ``only``) that has data; returns ``{"written": {stem: [files]},
    "skipped": {stem: why}}``, also written to ``out_dir/figures.json``. Error bars: 95 % intervals from
    ``replicates`` (:mod:`mae.report.evidence`)."""
    evidence = Evidence(frame, replicates)
    frame = evidence.frame
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    builders = {
        "fig5_masking_ratio": lambda: fig5(evidence, paper_model),
        "fig7_schedule": lambda: fig7(evidence, paper_model),
        "fig9_partial_ft": lambda: fig9(evidence),
        "fig_mask_sampling": lambda: fig_mask_sampling(frame, data_dir),
        "fig_reconstructions": lambda: fig_reconstructions(frame, runs_dir, data_dir),
        "fig_loss_curves": lambda: fig_loss_curves(runs_dir),
    }
    report: dict[str, Any] = {"written": {}, "skipped": {}}
    sns.set_theme(style="whitegrid", context="paper")
    unknown = sorted(set(only or ()) - set(builders))
    if unknown:
        raise UserError(f"unknown figure '{unknown[0]}' (valid: {', '.join(builders)})")
    for stem, build in builders.items():
        if only and stem not in only:
            continue
        try:
            fig = build()
        except Skip as why:
            log.info("figure %s skipped: %s", stem, why)
            report["skipped"][stem] = str(why)
            for ext in ("png", "pdf"):  # a stale figure from an earlier run must not pass for a new one
                (out_dir / f"{stem}.{ext}").unlink(missing_ok=True)
            continue
        report["written"][stem] = [p.name for p in save(fig, out_dir, stem)]
    atomic_write_json(out_dir / "figures.json", report)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", required=True, help="results/summary/runs.csv")
    parser.add_argument("--runs", required=True, help="results/runs (pretraining logs and checkpoints)")
    parser.add_argument("--data", default=None, help="prepared pretraining dataset (validation images)")
    parser.add_argument("--out", required=True, help="output folder (results/figures)")
    parser.add_argument(
        "--replicates",
        default=None,
        help=f"bootstrap replicates for the error bars (default: {REPLICATES} beside --summary)",
    )
    parser.add_argument(
        "--paper-model",
        default=P.DEFAULT_PAPER_MODEL,
        help="paper model whose curves are drawn (Figs. 5 and 7 exist for ViT-L/16 only)",
    )
    parser.add_argument(
        "--only", nargs="+", default=None, metavar="FIGURE", help=f"draw only these figures (of: {', '.join(FIGURES)})"
    )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    frame = read_summary(args.summary)
    if not Path(args.runs).is_dir():
        raise UserError(f"runs folder not found: {args.runs}")
    if args.data is not None and not Path(args.data).is_dir():
        raise UserError(f"data folder not found: {args.data}")
    if not len(P.paper_rows("Fig 5", model=args.paper_model)):
        raise UserError(f"--paper-model {args.paper_model!r} has no Fig. 5/7 curve in the paper (use ViT-L/16)")
    replicates = read_replicates(args.replicates or Path(args.summary).with_name(REPLICATES))
    report = make_figures(frame, args.runs, args.data, args.out, args.paper_model, args.only, replicates)
    log.info("figures: %d written, %d skipped -> %s", len(report["written"]), len(report["skipped"]), args.out)
    return 0
