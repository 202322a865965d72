"""Learning curves of a study's evaluations (docs/learning-curves.md): the val metric after every epoch.

usage: python docs/bench/learning_curves.py RESULTS [--plot docs/img/learning_curves.png] [--runs base scratch]
Reads RESULTS/runs/<run>/<evaluation>/log.jsonl (the `eval` records every stage writes), prints per evaluation
and run the first, last and best value and the gain over the last quarter of the epochs (a converged protocol
gains little there), and draws one panel per evaluation, one line per run. By default the base setting's runs
(`base`, `seed-<s>`) and the baselines (`scratch`, `supervised`, with their seeds) are shown.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

from mae.report.table_render import to_markdown

#: the metric of each evaluation's `eval` records, in order of preference
METRICS = ("top1", "miou", "ap50_box", "ap_box")
DEFAULT_RUNS = re.compile(r"^(base|seed-\d+|scratch(_seed-\d+)?|supervised(_seed-\d+)?)$")


def load(results: Path, runs: re.Pattern = DEFAULT_RUNS) -> pd.DataFrame:
    rows = []
    for log in sorted(results.glob("runs/*/*/log.jsonl")):
        run, evaluation = log.parent.parent.name, log.parent.name
        if evaluation == "pretrain" or not runs.match(run):
            continue
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            metric = next((m for m in METRICS if m in rec), None)
            if rec.get("kind") == "eval" and metric:
                rows.append(
                    dict(
                        run=run, evaluation=evaluation, epoch=rec["epoch"] + 1, metric=metric, value=float(rec[metric])
                    )
                )
    if not rows:
        raise SystemExit(f"error: no eval records under {results}/runs/*/*/log.jsonl")
    return pd.DataFrame(rows)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (evaluation, run), part in frame.groupby(["evaluation", "run"], sort=True):
        part = part.sort_values("epoch")
        n = len(part)
        tail = part["value"].iloc[max(0, n - 1 - max(1, n // 4))]
        out.append(
            dict(
                evaluation=evaluation,
                run=run,
                metric=part["metric"].iloc[0],
                epochs=n,
                first=part["value"].iloc[0],
                last=part["value"].iloc[-1],
                best=part["value"].max(),
                last_quarter_gain=part["value"].iloc[-1] - tail,
            )
        )
    return pd.DataFrame(out)


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame = frame.assign(
        init=frame["run"]
        .str.replace(r"_seed-\d+$", "", regex=True)
        .str.replace(r"^seed-\d+$", "base", regex=True)
        .replace({"base": "MAE"})
    )
    evaluations = sorted(frame["evaluation"].unique())
    cols = min(4, len(evaluations))
    rows = -(-len(evaluations) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.7 * rows), squeeze=False)
    for ax, evaluation in zip(axes.flat, evaluations):
        part = frame[frame["evaluation"] == evaluation]
        sns.lineplot(
            data=part,
            x="epoch",
            y="value",
            hue="init",
            units="run",
            estimator=None,
            ax=ax,
            lw=1,
            marker="o",
            markersize=3,
        )
        ax.set_title(evaluation, fontsize=9)
        ax.set_ylabel(part["metric"].iloc[0], fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(evaluations) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--runs", default=None, help="regular expression of the run names to show")
    args = parser.parse_args()
    frame = load(args.results, re.compile(args.runs) if args.runs else DEFAULT_RUNS)
    print(to_markdown(summary(frame).round(1)))
    if args.plot:
        plot(frame, args.plot)


if __name__ == "__main__":
    main()
