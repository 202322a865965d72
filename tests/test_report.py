"""Report modules: summary (runs.csv), paper tables, figures and the claims check.

A tiny fake ``results/runs`` tree with plausible numbers stands in for a study; the numbers are a simple
function of the knobs (``_accuracy``) so that the expected table cells and claim verdicts are known.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mae.report import claims as C  # noqa: E402
from mae.report import paper as P  # noqa: E402
from mae.report import summary as S  # noqa: E402
from mae.report import tables as T  # noqa: E402

BASE = dict(model="mae_vit_micro_patch4", mask_ratio=0.75, decoder_depth=2, decoder_width=128,
            mask_token_in_encoder=False, target="norm_pixel", aug="crop_rand", sampling="random", epochs=8, seed=0)
SWEEPS = {
    "1a": [{"decoder_depth": d} for d in (1, 2, 4)],
    "1b": [{"decoder_width": w} for w in (64, 128, 256)],
    "1c": [{"mask_token_in_encoder": f} for f in (False, True)],
    "1d": [{"target": t} for t in ("pixel", "norm_pixel", "pca", "token")],
    "1e": [{"aug": a} for a in ("none", "crop_fixed", "crop_rand", "crop_rand_jitter")],
    "1f": [{"sampling": "random", "mask_ratio": 0.75}, {"sampling": "block", "mask_ratio": 0.5},
           {"sampling": "block", "mask_ratio": 0.75}, {"sampling": "grid", "mask_ratio": 0.75}],
    "fig5": [{"mask_ratio": r} for r in (0.25, 0.5, 0.75, 0.9)],
    "fig7": [{"epochs": e} for e in (4, 8, 16)],
}


def _name(settings: dict) -> str:
    parts = [f"{k}-{settings[k]}" for k in BASE if settings[k] != BASE[k]]
    return "_".join(parts) if parts else "base"


def plan(seeds=(0,)) -> dict:
    runs: dict = {}
    for seed in seeds:
        runs.setdefault(_name({**BASE, "seed": seed}), {"settings": {**BASE, "seed": seed}, "tables": []})
        for table, settings in SWEEPS.items():
            for s in settings:
                full = {**BASE, **s, "seed": seed}
                entry = runs.setdefault(_name(full), {"settings": full, "tables": []})
                entry["tables"].append(table)
    return {"base": BASE, "runs": runs, "scale": {"model": BASE["model"], "dataset": "shapes", "epochs": 8}}


def _accuracy(s: dict, kind: str) -> float:
    """Plausible toy accuracies in which the paper's trends hold (lin more sensitive than ft)."""
    lin, ft = 40.0, 60.0
    lin -= 30 * (s["mask_ratio"] - 0.75) ** 2 * 10
    ft -= 5 * (s["mask_ratio"] - 0.75) ** 2 * 10
    lin += {1: -6, 2: 0, 4: 1}.get(s["decoder_depth"], 0)
    ft += {1: -0.2, 2: 0, 4: 0.1}.get(s["decoder_depth"], 0)
    lin += {"pixel": -1, "norm_pixel": 0, "pca": -2, "token": -1.5}[s["target"]]
    ft += {"pixel": -0.5, "norm_pixel": 0, "pca": -0.8, "token": -0.1}[s["target"]]
    lin += {"none": -5, "crop_fixed": -1, "crop_rand": 0, "crop_rand_jitter": -2}[s["aug"]]
    lin += {"random": 0, "block": -4, "grid": -3}[s["sampling"]]
    ft += {"random": 0, "block": -1, "grid": -0.7}[s["sampling"]]
    lin -= 8 if s["mask_token_in_encoder"] else 0
    ft -= 0.5 if s["mask_token_in_encoder"] else 0
    lin += 3 * math.log2(s["epochs"] / 8)
    ft += 1 * math.log2(s["epochs"] / 8)
    lin += 0.3 * s["seed"]
    return lin if kind == "lin" else ft


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def make_tree(root: Path, seeds=(0,), transfer=True, scratch=True) -> dict:
    """A fake results/runs tree (+ STUDY.json) in the layout of ARCHITECTURE.md."""
    study = plan(seeds)
    runs = root / "runs"
    for name, entry in study["runs"].items():
        s = entry["settings"]
        settings = {k: v for k, v in s.items() if k != "epochs"}
        settings.update(pretrain_epochs=s["epochs"], dataset="shapes", img_size=32, patch_size=4)
        _write(runs / name / "settings.json", settings)
        speed = 300.0 / (3.0 if s["mask_token_in_encoder"] else 1.0) * (1.3 if s["decoder_depth"] == 1 else 1.0)
        _write(runs / name / "pretrain" / "metrics.json",
               {"train_loss": 0.5, "epochs": s["epochs"], "wall_s": 4000 * s["epochs"] / speed, "img_s": speed})
        lines = [json.dumps({"epoch": e / 2, "step": e * 10, "lr": 1e-4, "loss": 1.0 / (1 + e), "img_s": speed})
                 for e in range(2 * s["epochs"])]
        (runs / name / "pretrain" / "log.jsonl").write_text("\n".join(lines) + "\n")
        _write(runs / name / "finetune" / "metrics.json", {"top1": _accuracy(s, "ft"), "top5": 99.0, "loss": 1.0})
        _write(runs / name / "linprobe" / "metrics.json", {"top1": _accuracy(s, "lin")})
        _write(runs / name / "knn" / "metrics.json", {"top1": _accuracy(s, "lin") - 5})
        if name == "base" or name == "seed-1":
            lin, ft = _accuracy(s, "lin"), _accuracy(s, "ft")
            for k in (0, 1, 2, 4):
                top1 = lin if k == 0 else ft - (ft - lin) * 0.5 ** k
                _write(runs / name / f"partial_ft-{k}" / "metrics.json", {"top1": top1})
            if transfer:
                _write(runs / name / "transfer_det" / "metrics.json", {"ap_box": 20.0, "ap_mask": 18.0})
                _write(runs / name / "transfer_seg" / "metrics.json", {"miou": 40.0})
                _write(runs / name / "transfer_cls-digits" / "metrics.json", {"top1": 90.0})
    if scratch:
        _write(runs / "scratch" / "finetune" / "metrics.json", {"top1": 50.0})
        if transfer:
            _write(runs / "scratch" / "transfer_det" / "metrics.json", {"ap_box": 10.0, "ap_mask": 9.0})
    _write(root / "STUDY.json", study)
    return study


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    make_tree(root)
    return root


@pytest.fixture(scope="module")
def summary(tree) -> pd.DataFrame:
    frame = S.collect(tree / "runs", S.load_study(tree / "STUDY.json"))
    S.write_csv(frame, tree / "summary" / "runs.csv")
    return S.read_summary(tree / "summary" / "runs.csv")


# --------------------------------------------------------------------------------------------- paper
def test_paper_values_load():
    frame = P.load_paper()
    assert {"table", "setting", "model", "metric", "value"} <= set(frame.columns)
    assert P.paper_value("Table 1a", "depth=8", "lin_top1", "ViT-L/16") == pytest.approx(73.5)
    assert math.isnan(P.paper_value("Table 1a", "depth=3", "lin_top1", "ViT-L/16"))
    assert P.paper_model_for("mae_vit_micro_patch4") == "ViT-L/16"
    assert P.paper_model_for("mae_vit_base_patch16") == "ViT-B/16"


# --------------------------------------------------------------------------------------------- summary
def test_summarize_tree(tree, summary):
    assert list(summary.columns[: len(S.COLUMNS)]) == list(S.COLUMNS)
    runs = set(summary["run"])
    assert {"base", "decoder_depth-1", "scratch", "epochs-16"} <= runs
    base_ft = summary[(summary["run"] == "base") & (summary["eval"] == "finetune")]
    assert len(base_ft) == 1 and base_ft["top1"].iloc[0] == pytest.approx(_accuracy({**BASE}, "ft"))
    pft = summary[(summary["run"] == "base") & (summary["eval"] == "partial_ft")]
    assert sorted(pft["eval_setting"]) == ["0", "1", "2", "4"]
    cls = summary[summary["eval"] == "transfer_cls"]
    assert list(cls["eval_setting"]) == ["digits"]
    row = summary[(summary["run"] == "epochs-16") & (summary["eval"] == "pretrain")].iloc[0]
    assert row["pretrain_epochs"] == 16 and row["dataset"] == "shapes" and row["init"] == "mae"
    assert "fig7" in row["tables"].split(";")
    scratch = summary[summary["run"] == "scratch"]
    assert set(scratch["init"]) == {"scratch"} and scratch["mask_ratio"].isna().all()
    assert scratch["model"].iloc[0] == "mae_vit_micro_patch4"
    assert bool(summary.loc[summary["run"] == "mask_token_in_encoder-True", "mask_token_in_encoder"].iloc[0])
    assert S.base_run(summary) == "base"


def test_summarize_cli_writes_metrics_and_curves(tree, tmp_path):
    from mae.cli import main

    out = tmp_path / "summary" / "runs.csv"
    assert main(["summarize", "--runs", str(tree / "runs"), "--study", str(tree / "STUDY.json"),
                 "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) > 50
    metrics = json.loads((out.parent / "metrics.json").read_text())
    assert metrics["base_run"] == "base" and metrics["finetune_top1"] == pytest.approx(_accuracy(BASE, "ft"), abs=1e-3)
    curves = pd.read_csv(out.parent / "loss_curves.csv")
    assert set(curves.columns) >= {"run", "epoch", "step", "loss"} and (curves["run"] == "base").sum() == 16


def test_summarize_errors(tmp_path):
    from mae.cli import main

    assert main(["summarize", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "r.csv")]) == 2
    _write(tmp_path / "runs" / "a" / "finetune" / "metrics.json", {"top1": 1})
    (tmp_path / "runs" / "a" / "linprobe").mkdir()
    (tmp_path / "runs" / "a" / "linprobe" / "metrics.json").write_text("{bad")
    with pytest.raises(S.UserError, match="linprobe/metrics.json"):
        S.collect(tmp_path / "runs")


def test_summary_without_study_infers_tables(tree):
    frame = S.collect(tree / "runs")  # no STUDY.json: no tags, tables come from knob differences
    assert (frame["tables"] == "").all()
    rows = S.table_runs(frame[frame["eval"] == "linprobe"], "1a", ["decoder_depth"])
    assert sorted(rows["decoder_depth"].astype(int)) == [1, 2, 4]
