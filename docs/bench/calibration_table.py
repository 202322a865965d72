"""The calibration table and plot of docs/calibration.md from `docs/bench/calibrate.sh` outputs.

usage: python docs/bench/calibration_table.py OUTDIR [--plot docs/img/calibration.png]
Reads OUTDIR/<difficulty>/calibration.json (or OUTDIR/*.json, as docs/calibration/);
prints a Markdown table (one row per learner, top-1 % and the images it saw per dataset: difficulty and image
size) and draws top-1 per learner and dataset, the chance level dashed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def load(out: Path) -> pd.DataFrame:
    rows = []
    for path in sorted([*out.glob("*/calibration.json"), *out.glob("*.json")]):  # a run folder, or copies
        cal = json.loads(path.read_text())
        for row in cal["rows"]:
            data = f"{cal['difficulty']} {cal.get('img_size', 32)} px"
            rows.append({"data": data, "difficulty": cal["difficulty"], "chance": cal["chance"], **row})
    if not rows:
        raise SystemExit(f"error: no */calibration.json under {out}")
    return pd.DataFrame(rows)


def table(frame: pd.DataFrame) -> str:
    order = list(dict.fromkeys(frame["learner"]))
    cols = []
    for diff, part in frame.groupby("data", sort=False):
        part = part.set_index("learner").reindex(order)
        cols.append(part["top1"].map("{:.1f}".format).rename(f"{diff}: top-1 %"))
        cols.append((part["images"] / 1000).map("{:.0f}k".format).rename(f"{diff}: images seen"))
        cols.append(part["wall_s"].map("{:.0f}".format).rename(f"{diff}: CPU s (1 thread)"))
    shown = pd.concat(cols, axis=1).reset_index().replace("nan", "–")
    head = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    return head + "\n".join("| " + " | ".join(map(str, r)) + " |" for r in shown.itertuples(index=False))


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(8, 4.2))
    sns.barplot(data=frame, y="learner", x="top1", hue="data", ax=ax, orient="h")
    ax.axvline(float(frame["chance"].iloc[0]), color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("val top-1 (%)")
    ax.set_ylabel("")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    frame = load(args.out)
    print(table(frame))
    if args.plot:
        plot(frame, args.plot)


if __name__ == "__main__":
    main()
