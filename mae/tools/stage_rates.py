"""``mae bench stages RESULTS``: how close every stage of a finished study ran to its own step rate.

Reads each job's ``metrics.json`` under ``RESULTS/runs`` (and, when present, Snakemake's ``benchmarks/<rule>/
<job>.tsv`` for the job's wall time) and prints one row per stage:

- **step img/s**: images per second of the stage's compute alone, measured inside the real job — the training
  steps (forward + backward + optimizer, ``step_img_s`` of :func:`mae.engine.fit`), or the encoder's forward
  passes for feature extraction (cached linear probe, k-NN);
- **end-to-end img/s**: images per second of the whole epochs (loading, steps, evaluations, checkpoints;
  ``img_s``), or of the whole feature pass;
- the share of the epochs spent waiting for batches, evaluating and checkpointing, and what limits the stage;
- **overhead**: the job's wall time minus its work (epochs, final evaluation, feature passes): start-up,
  imports, model and data set-up.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from mae.errors import UserError

#: the share of end-to-end time below which a stage counts as running at its step rate
TARGET = 0.9


def _stage(folder: str) -> str:
    """``partial_ft-2`` -> ``partial_ft``; ``transfer_cls-digits`` -> ``transfer_cls``."""
    return folder.split("-", 1)[0]


def _job_wall(benchmarks: Path, run: str, folder: str) -> float | None:
    """The job's wall seconds from Snakemake's ``benchmark:`` file (``benchmarks/<stage>/<run>[-<setting>].tsv``)."""
    stage, _, setting = folder.partition("-")
    path = benchmarks / stage / (f"{run}-{setting}.tsv" if setting else f"{run}.tsv")
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    try:
        return float(rows[-1]["s"])
    except (IndexError, KeyError, ValueError):
        return None


def job_rates(metrics: dict) -> dict | None:
    """Step rate, end-to-end rate, time shares and work seconds of one job's ``metrics.json`` (None: no rates)."""
    if metrics.get("cached_features") and metrics.get("feature_step_img_s_train"):
        step, e2e = metrics["feature_step_img_s_train"], metrics["feature_img_s_train"]
        parts = metrics.get("time_s") or {}
        work = float(metrics.get("feature_s") or 0.0) + sum(parts.values())
        return {
            "step": step,
            "e2e": e2e,
            "data": 1 - e2e / step,
            "eval": 0.0,
            "save": 0.0,
            "work": work,
            "amp": metrics.get("amp_used"),
        }
    if metrics.get("eval") == "knn" and metrics.get("step_img_s"):
        step, e2e = metrics["step_img_s"], metrics["img_s"]
        return {
            "step": step,
            "e2e": e2e,
            "data": 1 - e2e / step,
            "eval": 0.0,
            "save": 0.0,
            "work": float(metrics.get("wall_s") or 0.0),
            "amp": metrics.get("amp_used"),
        }
    parts = metrics.get("time_s")
    if not parts or not metrics.get("step_img_s") or not metrics.get("img_s"):
        return None
    epochs = sum(v for k, v in parts.items() if k != "final_eval")
    shares = {k: parts.get(k, 0.0) / epochs if epochs > 0 else 0.0 for k in ("data", "eval", "save")}
    work = sum(parts.values()) + float(metrics.get("feature_s") or 0.0)
    return {
        "step": metrics["step_img_s"],
        "e2e": metrics["img_s"],
        **shares,
        "work": work,
        "amp": metrics.get("amp_used"),
    }


def stage_table(results: str | Path, benchmarks: str | Path = "benchmarks", per_job: bool = False) -> list[dict]:
    """One row per stage: medians over its jobs (see the module docstring); ``per_job``: one row per job."""
    runs = Path(results) / "runs"
    if not runs.is_dir():
        raise UserError(f"no runs folder under {results} (run a study first)")
    by_stage: dict[str, list[dict]] = {}
    for path in sorted(runs.glob("*/*/metrics.json")):
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {path}: {err}") from None
        if metrics.get("reused_from"):
            continue  # partial_ft-0 copied from the linear probe: no job of its own
        rates = job_rates(metrics)
        if rates is None:
            continue
        wall = _job_wall(Path(benchmarks), path.parent.parent.name, path.parent.name)
        rates["overhead"] = wall - rates["work"] if wall is not None else None
        key = f"{path.parent.parent.name}/{path.parent.name}" if per_job else _stage(path.parent.name)
        by_stage.setdefault(key, []).append(rates)
    table = []
    for stage, jobs in by_stage.items():
        med = {k: statistics.median(j[k] for j in jobs) for k in ("step", "e2e", "data", "eval", "save")}
        overheads = [j["overhead"] for j in jobs if j["overhead"] is not None]
        ratio = med["e2e"] / med["step"]
        shares = {"loader": med["data"], "evaluation": med["eval"], "checkpoints": med["save"]}
        limit = "the step" if ratio >= TARGET else max(shares, key=shares.get)
        table.append(
            {
                "stage": stage,
                "jobs": len(jobs),
                "amp": sorted({str(j["amp"]) for j in jobs}),
                **med,
                "ratio": ratio,
                "limit": limit,
                "overhead_s": statistics.median(overheads) if overheads else None,
                "overhead_max_s": max(overheads) if overheads else None,
            }
        )
    return table


def markdown(table: list[dict]) -> str:
    lines = [
        "| stage | jobs | precision | step img/s | end-to-end img/s | end-to-end / step | loader | evaluation "
        "| checkpoints | limit | overhead s (median, max) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in table:
        overhead = "-" if r["overhead_s"] is None else f"{r['overhead_s']:.1f}, {r['overhead_max_s']:.1f}"
        lines.append(
            f"| {r['stage']} | {r['jobs']} | {'/'.join(r['amp'])} | {r['step']:.0f} | {r['e2e']:.0f} | "
            f"{100 * r['ratio']:.0f} % | {100 * r['data']:.0f} % | {100 * r['eval']:.0f} % | "
            f"{100 * r['save']:.0f} % | {r['limit']} | {overhead} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="a study's results folder (with runs/)")
    parser.add_argument("--benchmarks", default="benchmarks", help="Snakemake's benchmark folder (job wall times)")
    parser.add_argument("--jobs", action="store_true", help="one row per job instead of per stage")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def main(args: argparse.Namespace) -> int:
    table = stage_table(args.results, args.benchmarks, per_job=args.jobs)
    print(json.dumps(table, indent=1) if args.json else markdown(table))
    return 0
