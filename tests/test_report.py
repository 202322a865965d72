"""Report modules: summary (runs.csv), paper tables, figures and the claims check.

A tiny fake ``results/runs`` tree with plausible numbers stands in for a study; the numbers are a simple
function of the knobs (``_accuracy``) so that the expected table cells and claim verdicts are known.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mae.report import claims as C  # noqa: E402
from mae.report import claims_render as CR  # noqa: E402
from mae.report import paper as P  # noqa: E402
from mae.report import runs_csv as R  # noqa: E402
from mae.report import stats  # noqa: E402
from mae.report import summary as S  # noqa: E402
from mae.report import tables as T  # noqa: E402
from mae.report import verdicts as V  # noqa: E402
from mae.report.replicates import REPLICATES, read_replicates, write_replicates  # noqa: E402

BASE = dict(
    model="mae_vit_micro_patch4",
    mask_ratio=0.75,
    decoder_depth=2,
    decoder_width=128,
    mask_token_in_encoder=False,
    target="norm_pixel",
    aug="crop_rand",
    sampling="random",
    epochs=8,
    seed=0,
)
SWEEPS = {
    "1a": [{"decoder_depth": d} for d in (1, 2, 4)],
    "1b": [{"decoder_width": w} for w in (64, 128, 256)],
    "1c": [{"mask_token_in_encoder": f} for f in (False, True)],
    "1d": [{"target": t} for t in ("pixel", "norm_pixel", "pca", "token")],
    "1e": [{"aug": a} for a in ("none", "crop_fixed", "crop_rand", "crop_rand_jitter")],
    "1f": [
        {"sampling": "random", "mask_ratio": 0.75},
        {"sampling": "block", "mask_ratio": 0.5},
        {"sampling": "block", "mask_ratio": 0.75},
        {"sampling": "grid", "mask_ratio": 0.75},
    ],
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
    lin -= 60 * (s["mask_ratio"] - 0.75) ** 2
    # fine-tuning flat in the mask ratio, as the paper's 40-80 % (within the claim's 0.5 points)
    lin += {1: -6, 2: 0, 4: 1}.get(s["decoder_depth"], 0)
    ft += {1: -0.2, 2: 0, 4: 0.1}.get(s["decoder_depth"], 0)
    lin += {64: -3, 128: 0, 256: 0.5}.get(s["decoder_width"], 0)
    ft += {64: -0.2, 128: 0, 256: 0.1}.get(s["decoder_width"], 0)
    lin += {"pixel": -1, "norm_pixel": 0, "pca": -2, "token": -1.5}[s["target"]]
    ft += {"pixel": -1.0, "norm_pixel": 0, "pca": -1.5, "token": 0.0}[s["target"]]
    lin += {"none": -5, "crop_fixed": -1, "crop_rand": 0, "crop_rand_jitter": -2}[s["aug"]]
    lin += {"random": 0, "block": -4, "grid": -3}[s["sampling"]]
    ft += {"random": 0, "block": -1, "grid": -0.7}[s["sampling"]]
    lin -= 8 if s["mask_token_in_encoder"] else 0
    ft -= 0.5 if s["mask_token_in_encoder"] else 0
    lin += 3 * math.log2(s["epochs"] / 8)
    ft += 1 * math.log2(s["epochs"] / 8)
    lin += 0.3 * s["seed"]  # seeds: a little training noise, the same in every setting
    ft += 0.2 * s["seed"]
    return lin if kind == "lin" else ft


SEEDS = (0, 1)


def _seed_mean(s: dict, kind: str) -> float:
    """The mean over the fixture's seeds (what tables and claims show)."""
    return sum(_accuracy({**s, "seed": seed}, kind) for seed in SEEDS) / len(SEEDS)


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


N_VAL = 4000
_DIFFICULTY = np.random.default_rng(123).random(N_VAL)  # shared by every run: differences are paired
_TARGET = np.arange(N_VAL) % 10


def _rng(path: Path) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(path.parts[-2:]).encode()))


def _classification(folder: Path, acc: float, **extra) -> None:
    """predictions.npz with top-1 ``acc`` (to 1/N_VAL): the easiest images (shared difficulty + a little
    run noise) are the correct ones; metrics.json with the exact top-1 of those predictions."""
    key = _DIFFICULTY + 0.02 * _rng(folder).standard_normal(N_VAL)
    k = int(round(acc / 100 * N_VAL))
    correct = np.zeros(N_VAL, bool)
    correct[np.argsort(key)[:k]] = True
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "predictions.npz", pred=np.where(correct, _TARGET, (_TARGET + 1) % 10), target=_TARGET)
    _write(folder / "metrics.json", {"top1": 100.0 * k / N_VAL, "n_val": N_VAL, **extra})


def _segmentation(folder: Path, miou: float) -> None:
    union = np.full((200, 5), 100, dtype=np.int32)
    inter = _rng(folder).binomial(100, miou / 100, size=(200, 5)).astype(np.int32)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "predictions.npz", inter=inter, union=union)
    _write(folder / "metrics.json", {"miou": stats.miou(inter, union)})


def _detection(folder: Path, ap_box: float, ap_mask: float) -> None:
    shared = np.random.default_rng(7).standard_normal(stats.N_BOOT)  # same resamples in every run
    own = 0.2 * _rng(folder).standard_normal(stats.N_BOOT)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "predictions.npz", ap_box_boot=ap_box + shared + own, ap_mask_boot=ap_mask + shared + own)
    _write(folder / "metrics.json", {"ap_box": ap_box, "ap_mask": ap_mask})


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
        _write(
            runs / name / "pretrain" / "metrics.json",
            {"train_loss": 0.5, "epochs": s["epochs"], "wall_s": 4000 * s["epochs"] / speed, "img_s": speed},
        )
        lines = [
            json.dumps({"epoch": e / 2, "step": e * 10, "lr": 1e-4, "loss": 1.0 / (1 + e), "img_s": speed})
            for e in range(2 * s["epochs"])
        ]
        (runs / name / "pretrain" / "log.jsonl").write_text("\n".join(lines) + "\n")
        _classification(runs / name / "finetune", _accuracy(s, "ft"), top5=99.0, loss=1.0)
        _classification(runs / name / "linprobe", _accuracy(s, "lin"))
        _classification(runs / name / "knn", _accuracy(s, "lin") - 5)
        if name == "base" or name == "seed-1":
            lin, ft = _accuracy(s, "lin"), _accuracy(s, "ft")
            for k in (0, 1, 2, 4):
                _classification(runs / name / f"partial_ft-{k}", lin if k == 0 else ft - (ft - lin) * 0.4**k)
            if transfer:
                _detection(runs / name / "transfer_det", 20.0, 18.0)
                _segmentation(runs / name / "transfer_seg", 40.0)
                _classification(runs / name / "transfer_cls-digits", 90.0 + 0.3 * s["seed"])
    for seed in seeds if scratch else ():  # the baselines have seeds too: scratch, scratch_seed-1, ...
        suffix = f"_seed-{seed}" if seed else ""
        _classification(runs / f"scratch{suffix}" / "finetune", 50.0 + 0.2 * seed)
        _classification(runs / f"scratch{suffix}" / "linprobe", 10.0 + 0.3 * seed)
        if transfer:
            _detection(runs / f"scratch{suffix}" / "transfer_det", 10.0, 9.0)
            _segmentation(runs / f"scratch{suffix}" / "transfer_seg", 30.0)
            _classification(runs / f"scratch{suffix}" / "transfer_cls-digits", 80.0 + 0.3 * seed)
            _detection(runs / f"supervised{suffix}" / "transfer_det", 15.0, 13.0)
            _segmentation(runs / f"supervised{suffix}" / "transfer_seg", 35.0)
            _classification(runs / f"supervised{suffix}" / "transfer_cls-digits", 85.0 + 0.3 * seed)
    _write(root / "STUDY.json", study)
    return study


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    make_tree(root, seeds=SEEDS)
    return root


@pytest.fixture(scope="module")
def summary(tree) -> pd.DataFrame:
    replicates = S.collect_replicates(tree / "runs")
    frame = S.add_intervals(S.collect(tree / "runs", S.load_study(tree / "STUDY.json")), replicates)
    S.write_csv(frame, tree / "summary" / "runs.csv")
    write_replicates(replicates, tree / "summary" / REPLICATES)
    return R.read_summary(tree / "summary" / "runs.csv")


@pytest.fixture(scope="module")
def replicates(tree, summary) -> dict:
    return read_replicates(tree / "summary" / REPLICATES)


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
    assert list(summary.columns[: len(R.COLUMNS)]) == list(R.COLUMNS)
    runs = set(summary["run"])
    assert {"base", "decoder_depth-1", "scratch", "epochs-16"} <= runs
    base_ft = summary[(summary["run"] == "base") & (summary["eval"] == "finetune")]
    assert len(base_ft) == 1 and base_ft["top1"].iloc[0] == pytest.approx(_accuracy({**BASE}, "ft"), abs=0.02)
    lo, hi = base_ft[["top1_lo", "top1_hi"]].iloc[0]  # bootstrap interval over the val images
    assert lo < base_ft["top1"].iloc[0] < hi and 1.5 < hi - lo < 4.0
    pft = summary[(summary["run"] == "base") & (summary["eval"] == "partial_ft")]
    assert sorted(pft["eval_setting"]) == ["0", "1", "2", "4"]
    cls = summary[summary["eval"] == "transfer_cls"]
    assert list(cls["eval_setting"]) == ["digits"] * 6 and set(cls["init"]) == {"mae", "scratch", "supervised"}
    seeded = summary[summary["run"] == "supervised_seed-1"]  # a baseline of another seed: its init and its seed
    assert set(seeded["init"]) == {"supervised"} and set(seeded["seed"]) == {1}
    row = summary[(summary["run"] == "epochs-16") & (summary["eval"] == "pretrain")].iloc[0]
    assert row["pretrain_epochs"] == 16 and row["dataset"] == "shapes" and row["init"] == "mae"
    assert "fig7" in row["tables"].split(";")
    scratch = summary[summary["run"] == "scratch"]
    assert set(scratch["init"]) == {"scratch"} and scratch["mask_ratio"].isna().all()
    assert scratch["model"].iloc[0] == "mae_vit_micro_patch4"
    assert bool(summary.loc[summary["run"] == "mask_token_in_encoder-True", "mask_token_in_encoder"].iloc[0])
    assert R.base_run(summary) == "base"


def test_summarize_cli_writes_metrics_and_curves(tree, tmp_path):
    from mae.cli import main

    out = tmp_path / "summary" / "runs.csv"
    assert (
        main(["summarize", "--runs", str(tree / "runs"), "--study", str(tree / "STUDY.json"), "--out", str(out)]) == 0
    )
    assert len(pd.read_csv(out)) > 50
    metrics = json.loads((out.parent / "metrics.json").read_text())
    assert metrics["base_run"] == "base" and metrics["finetune_top1"] == pytest.approx(_accuracy(BASE, "ft"), abs=0.02)
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
    rows = R.table_runs(frame[frame["eval"] == "linprobe"], "1a", ["decoder_depth"])
    assert sorted(rows["decoder_depth"].astype(int)) == [1, 1, 2, 2, 4, 4]  # two seeds each


# --------------------------------------------------------------------------------------------- tables
def test_tables_rows_and_paper_values(summary, replicates, tmp_path):
    tables = {t.id: t for t in T.build_tables(summary, replicates=replicates)}
    assert set(tables) == {"1a", "1b", "1c", "1d", "1e", "1f", "2", "3", "4", "5", "6", "7"}
    t7 = tables["7"].data.set_index("paper setting")  # the Table 1d runs, fine-tuned (+ transferred if run)
    assert t7.loc["target=pixel (w/o norm)", "ft top-1 ours"] == pytest.approx(
        _seed_mean({**BASE, "target": "pixel"}, "ft"), abs=0.02
    )
    assert t7.loc["target=pixel (w/ norm)", "AP box ours"] == pytest.approx(20.0)  # the base run's detection
    assert t7.loc["target=dVAE token", "mIoU paper"] == pytest.approx(53.4)
    t1a = tables["1a"].data.set_index("paper setting")
    assert list(t1a.columns[:2]) == ["decoder depth", "ft top-1 ours"] or "ft top-1 ours" in t1a.columns
    # ours beside the paper's, adjacent columns
    cols = list(tables["1a"].data.columns)
    assert cols.index("lin top-1 paper") == cols.index("lin top-1 ±") + 1 == cols.index("lin top-1 ours") + 2
    assert t1a.loc["depth=1", "lin top-1 ours"] == pytest.approx(
        _seed_mean({**BASE, "decoder_depth": 1}, "lin"), abs=0.02
    )
    assert 0.7 < t1a.loc["depth=1", "lin top-1 ±"] < 2.0  # ~t * sqrt(p(1-p)/4000 + training noise / 2) points
    shown = tables["1a"].display().set_index("paper setting")
    assert "lin top-1 ±" not in shown and " ± " in shown.loc["depth=1", "lin top-1 ours"]
    assert t1a.loc["depth=1", "lin top-1 paper"] == pytest.approx(65.5)
    assert t1a.loc["depth=8", "note"] == "paper only" and math.isnan(t1a.loc["depth=8", "lin top-1 ours"])
    assert "depth=8" in tables["1a"].caption and "mae_vit_micro_patch4" in tables["1a"].caption
    t1b = tables["1b"].data.set_index("paper setting")
    assert t1b.loc["width=64", "note"] == "not in paper"
    t1c = tables["1c"].data.set_index("paper setting")
    assert t1c.loc["encoder w/ [M]", "time rel. ours"] == pytest.approx(3.0)
    assert t1c.loc["encoder w/ [M]", "FLOPs rel. paper"] == pytest.approx(3.3)
    t1d = tables["1d"].data.set_index("target")
    assert t1d.loc["norm_pixel", "paper setting"] == "pixel (w/ norm)"
    assert t1d.loc["norm_pixel", "ft top-1 paper"] == pytest.approx(85.4)
    t1f = tables["1f"].data.set_index("paper setting")
    assert t1f.loc["block 50", "lin top-1 paper"] == pytest.approx(72.3)
    assert not math.isnan(t1f.loc["block 50", "lin top-1 ours"])
    t2 = tables["2"].data
    assert t2["speedup ours"].iloc[0] == pytest.approx(1.0) and t2["speedup ours"].iloc[2] == pytest.approx(3.9)
    assert t2["pretrain wall-clock paper [h]"].tolist()[:3] == [42.4, 15.4, 11.6]
    t3 = tables["3"].data.set_index("init")
    assert t3.loc["scratch", "ft top-1 ours"] == pytest.approx(50.1) and t3.loc["scratch", "ft top-1 paper"] == 82.6
    assert t3.loc["scratch", "seeds"] == 2  # the baseline's two seeds (scratch, scratch_seed-1)
    assert 1.0 < t3.loc["scratch", "ft top-1 ±"] < 2.0
    t4 = tables["4"].data.set_index("init")
    assert t4.loc["MAE (ours, base run)", "AP box paper"] == 53.3 and t4.loc["supervised", "AP box ours"] == 15.0
    assert 0 < t4.loc["supervised", "AP box ±"] < 2
    written = T.write_tables(list(tables.values()), tmp_path)
    assert {p.suffix for p in written} == {".csv", ".md", ".tex"}
    tex = (tmp_path / "table1a_decoder_depth.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "mae\\_vit\\_micro\\_patch4" in tex
    md = (tmp_path / "table4_detection.md").read_text()
    assert "| MAE (ours, base run) |" in md and "53.3" in md
    assert pd.read_csv(tmp_path / "table1d_target.csv").shape[0] == 4


def test_tables_without_transfer_or_runs(tmp_path):
    make_tree(tmp_path, transfer=False, scratch=False)
    frame = S.collect(tmp_path / "runs", S.load_study(tmp_path / "STUDY.json"))
    tables = {t.id: t for t in T.build_tables(frame)}
    t4 = tables["4"]
    assert "MAE (ours, base run)" in t4.missing and t4.data["AP box ours"].isna().all()
    assert (t4.data["note"] == "paper only").sum() == 2 and "Missing" in t4.caption
    assert tables["6"].data["note"].eq("paper only").all()
    empty = R.normalise(pd.DataFrame(columns=list(R.COLUMNS)))
    for t in T.build_tables(empty):  # nothing run yet: paper rows only, never a crash
        assert len(t.data) > 0 and t.data.filter(like="ours").isna().all().all()


def test_tables_cli(tree, summary, tmp_path):
    from mae.cli import main

    runs_csv = tree / "summary" / "runs.csv"
    assert main(["tables", "--summary", str(runs_csv), "--out", str(tmp_path / "t")]) == 0
    for stem in T.TABLE_STEMS:
        for ext in ("csv", "md", "tex"):
            assert (tmp_path / "t" / f"{stem}.{ext}").stat().st_size > 0
    assert main(["tables", "--summary", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "t")]) == 2


# --------------------------------------------------------------------------------------------- claims
NO_PAPER_MARGIN = {"lin_vs_random", "transfer_vs_scratch"}  # the paper reports no random-init probe/transfer


def test_claims_hold_on_fixture_and_on_paper(summary, replicates):
    result = C.check_claims(summary, replicates).set_index("id")
    assert set(result.index) == {cid for cid, _, _ in C.CLAIMS}
    assert (result["verdict"] == V.HOLDS).all(), result[["verdict", "margin", "ci_lo", "ci_hi", "evidence"]]
    threshold = pd.Series({cid: -C.TOLERANCE.get(cid, 0.0) for cid in result.index})
    assert (result["ci_lo"] > threshold).all() and (result["ci_lo"] < result["margin"]).all()
    assert (result["margin"] < result["ci_hi"]).all()
    assert (result["p_holm"] >= result["p_value"]).all() and (result["p_value"] < 0.05).all()
    assert (result["seeds"] == "2").all() and (result["seed_var"] == "pooled").all() and (result["df"] > 1).all()
    # every decided verdict is recomputed without each seed (two seeds: one is left to borrow the pooled variance)
    assert result["fragile"].map(lambda f: f == "no" or f.startswith("yes: without seed")).all()
    assert (result["fragile"] == "no").sum() >= 12, result["fragile"]
    # every claim reads the 4 000 classification val images but transfer_vs_supervised (det + seg only, whose
    # fixture metrics record no image count)
    assert (result.drop(index="transfer_vs_supervised")["n_val"] == N_VAL).all()
    assert pd.isna(result.loc["transfer_vs_supervised", "n_val"])
    paper = result.drop(index=list(NO_PAPER_MARGIN))
    assert (paper["paper_margin"] > threshold[paper.index]).all(), result["paper_margin"]
    assert result.loc[list(NO_PAPER_MARGIN), "paper_margin"].isna().all()
    assert result.loc["mae_vs_scratch", "margin"] == pytest.approx(_seed_mean(BASE, "ft") - 50.1, abs=0.03)
    assert result.loc["lin_vs_random", "margin"] == pytest.approx(_seed_mean(BASE, "lin") - 10.15, abs=0.03)
    assert result.loc["decoder_depth", "margin"] == pytest.approx(7.0 - 0.3, abs=0.06)
    assert result.loc["transfer_vs_scratch", "margin"] == pytest.approx(10.0, abs=1.5)  # the weakest transfer
    assert result.loc["mae_vs_scratch", "paper_margin"] == pytest.approx(84.9 - 82.6)
    assert result.loc["mask_token", "paper_margin"] == pytest.approx(73.5 - 59.6)
    assert result.loc["transfer_vs_supervised", "paper_margin"] == pytest.approx(53.6 - 49.9)  # min(det, seg)
    assert result.loc["ratio_ft_insensitive", "paper_margin"] == pytest.approx(84.5 - 84.9)  # 80 %: within 0.5
    assert result.loc["token_target", "rule"] == "|·| < 0.5" and result.loc["high_mask_ratio", "rule"] == "all > 0"


def test_a_transfer_claim_read_on_part_of_its_transfers_says_which_were_not_run(summary, replicates):
    """Tables 4/5 name detection and segmentation: a study that runs segmentation alone decides the claim on it,
    and its evidence says that detection was not run (an overlay such as docs/bench/transfer_budget_seg8000.yaml)."""
    both = C.check_claims(summary, replicates, with_paper=False).set_index("id").loc["transfer_vs_supervised"]
    assert "not run" not in both["evidence"]
    seg_only = summary[summary["eval"] != "transfer_det"]
    row = C.check_claims(seg_only, replicates, with_paper=False).set_index("id").loc["transfer_vs_supervised"]
    assert row["verdict"] == V.HOLDS and row["evidence"].endswith("; not run: transfer_det"), row["evidence"]
    assert row["evidence"].startswith("transfer_seg miou +")
    # the random-init claim names no transfer, so it reads whichever were run without a note
    scratch = C.check_claims(seg_only, replicates, with_paper=False).set_index("id").loc["transfer_vs_scratch"]
    assert "not run" not in scratch["evidence"]


def test_claims_without_replicates_are_inconclusive(summary):
    result = C.check_claims(summary, None, with_paper=False)
    assert (result["verdict"] == V.INCONCLUSIVE).all() and result["ci_lo"].isna().all()
    assert result["evidence"].str.contains("no per-image predictions").all()


def _replace(tree: Path, tmp: Path, changes: dict) -> tuple[pd.DataFrame, dict]:
    """A copy of the fixture tree with new per-image predictions for ``{(run, eval_dir): top1 | mIoU | AP}``, the
    same value for every seed of the run (``base`` and ``seed-1``, ``scratch`` and ``scratch_seed-1`` …)."""
    import shutil

    shutil.copytree(tree / "runs", tmp / "runs")
    for (run, folder), value in changes.items():
        for seed in SEEDS:
            name = run if not seed else ("seed-1" if run == "base" else f"{run}_seed-{seed}")
            if folder == "transfer_seg":
                _segmentation(tmp / "runs" / name / folder, value)
            elif folder == "transfer_det":
                _detection(tmp / "runs" / name / folder, value, value)
            else:
                _classification(tmp / "runs" / name / folder, value + 0.2 * seed)
    reps = S.collect_replicates(tmp / "runs")
    return S.add_intervals(S.collect(tmp / "runs", S.load_study(tree / "STUDY.json")), reps), reps


def test_claims_fail_when_numbers_disagree(tree, tmp_path):
    base_lin, base_ft = _accuracy(BASE, "lin"), _accuracy(BASE, "ft")
    frame, reps = _replace(
        tree,
        tmp_path,
        {
            ("mask_ratio-0.5", "linprobe"): base_lin + 3,  # low ratio best
            ("mask_ratio-0.5", "finetune"): base_ft - 10,  # ft far below 75 % at 50 %
            ("decoder_width-64", "finetune"): base_ft - 10,  # ft sensitive to the width
            ("target-pixel", "finetune"): 99.0,  # pixels beat norm
            ("target-pca", "linprobe"): base_lin + 3,  # PCA beats norm
            ("target-token", "finetune"): base_ft + 3,  # tokens fine-tune 3 points better
            ("aug-none", "finetune"): base_ft - 20,  # ft suffers most without aug
            ("sampling-grid", "linprobe"): base_lin + 3,  # grid beats random
            ("mask_token_in_encoder-True", "linprobe"): base_lin + 3,  # [M] better
            ("decoder_depth-1", "linprobe"): base_lin,  # lin insensitive
            ("decoder_depth-1", "finetune"): 10.0,  # ft sensitive
            ("scratch", "finetune"): 99.0,  # scratch wins
            ("scratch", "linprobe"): 99.0,  # random features win
            ("scratch", "transfer_cls-digits"): 99.0,  # scratch transfers better
            ("supervised", "transfer_det"): 90.0,  # supervised transfers better
            ("supervised", "transfer_seg"): 90.0,
            ("base", "partial_ft-1"): base_lin + 0.1,  # 1 block: tiny gain
            ("epochs-16", "linprobe"): base_lin - 3,  # longest not best
        },
    )
    result = C.check_claims(frame, reps, with_paper=False).set_index("id")
    assert (result["verdict"] == V.FAILS).all(), result[["verdict", "margin", "ci_lo", "ci_hi", "evidence"]]
    assert (result["verdict_holm"] == V.FAILS).all()
    assert (result["ci_hi"] < -pd.Series(C.TOLERANCE).reindex(result.index).fillna(0.0)).all()
    assert result.loc["mae_vs_scratch", "margin"] == pytest.approx(base_ft - 99.0, abs=0.03)


def test_one_block_below_the_probe_is_a_protocol_failure_not_a_verdict(tree, tmp_path):
    """Tuning one block starts from the probe's features and head: a result far below K = 0 says the schedule
    did not converge. It is `protocol invalid` (no p-value, left out of the Holm adjustment), never `fails`;
    a little below K = 0, within the noise, the claim is decided as usual."""
    base_lin = _accuracy(BASE, "lin")
    frame, reps = _replace(tree, tmp_path / "far", {("base", "partial_ft-1"): base_lin - 10})
    row = C.check_claims(frame, reps, with_paper=False).set_index("id").loc["one_block"]
    assert row["verdict"] == row["verdict_holm"] == V.PROTOCOL_INVALID, row
    assert math.isnan(row["p_value"]) and row["contrast"] == "1 block − lin" and row["ci_hi"] < 0
    assert row["margin"] == pytest.approx(-10, abs=0.5) and "did not converge" in row["evidence"]
    frame, reps = _replace(tree, tmp_path / "near", {("base", "partial_ft-1"): base_lin - 0.2})
    row = C.check_claims(frame, reps, with_paper=False).set_index("id").loc["one_block"]
    assert row["verdict"] == V.FAILS and row["contrast"] == "1 block − (lin + ft)/2", row


def test_a_claim_that_is_close_to_its_own_noise_is_inconclusive(tree, tmp_path):
    """Two settings with the same per-image predictions: margin 0, an interval around it of the training noise
    -> neither holds nor fails."""
    import shutil

    frame, reps = _replace(tree, tmp_path, {})
    for mae, scratch in (("base", "scratch"), ("seed-1", "scratch_seed-1")):
        for name in ("predictions.npz", "metrics.json"):
            shutil.copy(tmp_path / "runs" / mae / "linprobe" / name, tmp_path / "runs" / scratch / "linprobe" / name)
    reps = S.collect_replicates(tmp_path / "runs")
    frame = S.add_intervals(S.collect(tmp_path / "runs", S.load_study(tree / "STUDY.json")), reps)
    row = C.check_claims(frame, reps, with_paper=False).set_index("id").loc["lin_vs_random"]
    assert row["verdict"] == V.INCONCLUSIVE and row["margin"] == 0.0 and row["ci_lo"] == pytest.approx(-row["ci_hi"])
    assert row["p_value"] == pytest.approx(1.0)


def test_one_seed_decides_nothing(tmp_path):
    """With one seed per setting there is no training-noise estimate anywhere: no claim is decided on val-image
    noise alone; one seed of the base only: a pooled variance for the base setting's evaluations alone."""
    empty = R.normalise(pd.DataFrame(columns=list(R.COLUMNS)))
    assert (C.check_claims(empty, with_paper=False)["verdict"] == V.NOT_RUN).all()
    make_tree(tmp_path, seeds=(0,), transfer=False)
    reps = S.collect_replicates(tmp_path / "runs")
    frame = S.add_intervals(S.collect(tmp_path / "runs", S.load_study(tmp_path / "STUDY.json")), reps)
    result = C.check_claims(frame, reps, with_paper=False).set_index("id")
    run = result.drop(index=["transfer_vs_scratch", "transfer_vs_supervised"])
    assert (run["verdict"] == V.NO_TRAINING_NOISE).all() and run["p_value"].isna().all(), run
    assert (run["seed_var"] == "none").all() and (run["seeds"] == "1").all() and run["ci_lo"].isna().all()
    assert "no training-noise estimate" in run.loc["mask_token", "evidence"]
    assert (result.loc[["transfer_vs_scratch", "transfer_vs_supervised"], "verdict"] == V.NOT_RUN).all()
    assert CR.headline(result.reset_index()).startswith("holds: 0, fails: 0, inconclusive: 14 (14 without")


def test_seeds_enter_every_interval(summary, replicates):
    """The summary carries each setting's seed spread; dropping a seed leaves a setting with one seed, which
    borrows the pooled variance of its evaluation (its interval is the wider for it)."""
    lin = summary[(summary["eval"] == "linprobe") & (summary["init"] == "mae")]
    base = lin[lin["run"].isin(["base", "seed-1"])]
    assert (base["seeds"] == 2).all() and base["top1_seed_sd"].iloc[0] == pytest.approx(0.3 / 2**0.5, abs=0.03)
    both = C.check_claims(summary, replicates, with_paper=False).set_index("id")
    one = summary[~summary["run"].isin(["mask_token_in_encoder-True_seed-1"])]
    fewer = C.check_claims(one, replicates, with_paper=False).set_index("id")
    width = lambda r: r["ci_hi"] - r["ci_lo"]  # noqa: E731
    assert fewer.loc["mask_token", "seeds"] == "1-2" and width(fewer.loc["mask_token"]) > width(both.loc["mask_token"])
    assert "speedup without [M] 3.00×" in both.loc["mask_token", "evidence"]


def test_fragile_verdicts_are_flagged(tree, tmp_path):
    """A verdict that rests on one seed: the masked-token run of seed 0 is 3 points worse for the probe, seed 1
    the same as the base -> holds on the mean, not without seed 0."""
    import shutil

    shutil.copytree(tree / "runs", tmp_path / "runs")
    base_lin = _accuracy(BASE, "lin")
    _classification(tmp_path / "runs" / "mask_token_in_encoder-True" / "linprobe", base_lin - 4)
    _classification(tmp_path / "runs" / "mask_token_in_encoder-True_seed-1" / "linprobe", base_lin + 0.3)
    reps = S.collect_replicates(tmp_path / "runs")
    frame = S.add_intervals(S.collect(tmp_path / "runs", S.load_study(tree / "STUDY.json")), reps)
    result = C.check_claims(frame, reps, with_paper=False).set_index("id")
    row = result.loc["mask_token"]
    assert row["verdict"] == V.HOLDS and row["fragile"].startswith("yes: without seed 0: "), row["fragile"]
    md = CR.write_claims(result.reset_index(), tmp_path / "claims").read_text()
    assert "(fragile)" in md


def test_claims_cli(tree, summary, tmp_path):
    from mae.cli import main

    out = tmp_path / "claims.csv"
    assert main(["claims", "--summary", str(tree / "summary" / "runs.csv"), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == len(C.CLAIMS) and set(frame["verdict"]) == {"holds"}
    for column in ("verdict_holm", "p_value", "p_holm", "seeds", "seed_var", "df", "fragile"):
        assert column in frame, column
    md = (tmp_path / "claims.md").read_text()
    assert f"holds: {(frame['verdict_holm'] == 'holds').sum()}" in md and "95% CI" in md and "Holm" in md
    assert main(["claims", "--summary", str(tree / "summary" / "runs.csv"), "--out", str(tmp_path / "dir")]) == 0
    assert (tmp_path / "dir" / "claims.csv").is_file() and (tmp_path / "dir" / "claims.md").is_file()


def _runs_csv(tree: Path, tmp_path: Path, edit) -> Path:
    frame = pd.read_csv(tree / "summary" / "runs.csv", dtype={"eval_setting": str})
    path = tmp_path / "runs.csv"
    edit(frame).to_csv(path, index=False)
    shutil_copy(tree / "summary" / REPLICATES, tmp_path / REPLICATES)
    return path


def shutil_copy(a: Path, b: Path) -> None:
    import shutil

    shutil.copy(a, b)


def test_a_repeated_row_is_refused_naming_its_key(tree, summary, tmp_path, capsys):
    """A row that appears twice would be read as two seeds of one setting (today: an interval that misses its own
    point); the summary is refused with one line naming the file and the key."""
    from mae.cli import main

    def repeat(frame):
        row = frame[(frame["run"] == "base") & (frame["eval"] == "linprobe")]
        return pd.concat([frame, row.assign(top1=row["top1"] + 5)], ignore_index=True)

    path = _runs_csv(tree, tmp_path, repeat)
    with pytest.raises(
        S.UserError,
        match=r"runs.csv: rows \d+ and \d+ repeat the key \(run='base', "
        r"eval='linprobe', eval_setting='', seed='0'\)",
    ):
        R.read_summary(path)
    assert main(["claims", "--summary", str(path), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0]


@pytest.mark.parametrize("value", ["inf", "-inf"])
def test_a_non_finite_metric_is_refused_naming_its_row_and_column(tree, summary, tmp_path, value):
    """top1=inf would silently drop every claim and table row that reads it; it is refused instead."""

    def poison(frame):
        frame = frame.astype({"top1": object})
        frame.loc[(frame["run"] == "base") & (frame["eval"] == "finetune"), "top1"] = value
        return frame

    path = _runs_csv(tree, tmp_path, poison)
    with pytest.raises(S.UserError, match=rf"runs.csv: row \d+ \(base, finetune\): top1={value} is not finite"):
        R.read_summary(path)


# --------------------------------------------------------------------------------------------- figures
def _tiny_dataset(path: Path, n: int = 6, size: int = 32) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    imgs = np.stack(
        [np.stack([(xx * 8 + i * 20) % 256, (yy * 8) % 256, rng.integers(0, 256, (size, size))], -1) for i in range(n)]
    ).astype("uint8")
    for split in ("train", "val"):
        np.save(path / f"{split}_images.npy", imgs)
        np.save(path / f"{split}_labels.npy", np.arange(n, dtype="int64") % 2)
    _write(
        path / "meta.json",
        {
            "name": "tiny",
            "kind": "shapes",
            "img_size": size,
            "classes": ["a", "b"],
            "num_classes": 2,
            "splits": {"train": n, "val": n},
            "seed": 0,
        },
    )
    return path


def _tiny_checkpoint(run_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("mae.models")
    torch.manual_seed(0)
    model = models.create_mae("mae_vit_micro_patch4", decoder_depth=2, decoder_embed_dim=128, target="norm_pixel")
    (run_dir / "pretrain").mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "epoch": 1}, run_dir / "pretrain" / "checkpoint.pt")


CURVES = ["fig5_masking_ratio", "fig7_schedule", "fig9_partial_ft", "fig_loss_curves"]
IMAGES = ["fig_mask_sampling", "fig_reconstructions"]


@pytest.mark.parametrize("stems", [CURVES, IMAGES], ids=["curves", "images"])
def test_figures_written(tree, summary, replicates, tmp_path, stems):
    from mae.report import figures as F

    assert set(CURVES + IMAGES) == set(F.FIGURES)
    data = _tiny_dataset(tmp_path / "data")
    if "fig_reconstructions" in stems:
        assert F.reconstruction_runs(summary) == ["target-pixel", "base"]
        _tiny_checkpoint(tree / "runs" / "base")  # the twin has none: the base run's are drawn
    report = F.make_figures(summary, tree / "runs", data, tmp_path / "fig", only=stems, replicates=replicates)
    assert report["skipped"] == {}, report["skipped"]
    assert set(report["written"]) == set(stems)
    for stem in stems:
        for ext in ("png", "pdf"):
            assert (tmp_path / "fig" / f"{stem}.{ext}").stat().st_size > 2000
    listed = json.loads((tmp_path / "fig" / "figures.json").read_text())
    assert set(listed["written"]) == set(stems)


def test_figures_cli_skips_reconstructions_without_checkpoint(tree, summary, tmp_path):
    from mae.cli import main

    data = _tiny_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    (runs / "base").mkdir(parents=True)  # a run folder without a checkpoint
    assert (
        main(
            [
                "figures",
                "--summary",
                str(tree / "summary" / "runs.csv"),
                "--runs",
                str(runs),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "fig"),
                "--only",
                "fig_reconstructions",
                "fig_mask_sampling",
            ]
        )
        == 0
    )
    listed = json.loads((tmp_path / "fig" / "figures.json").read_text())
    assert "checkpoint" in listed["skipped"]["fig_reconstructions"]
    assert list(listed["written"]) == ["fig_mask_sampling"]
    assert (
        main(
            [
                "figures",
                "--summary",
                str(tree / "summary" / "runs.csv"),
                "--runs",
                str(runs),
                "--out",
                str(tmp_path / "fig"),
                "--only",
                "fig_nope",
            ]
        )
        == 2
    )


def test_reconstruction_unnormalises_norm_pix(tmp_path):
    """With a model whose decoder predicts each patch's normalised pixels exactly, the un-normalised
    reconstruction equals the original image."""
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("mae.models")
    from mae.report import figures as F

    torch.manual_seed(0)
    model = models.create_mae("mae_vit_micro_patch4", target="norm_pixel").eval()
    x = torch.randn(2, 3, 32, 32)
    target = model.patchify(x)
    norm = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    model.forward_decoder = lambda latent, ids_restore: norm
    masked, recon, pasted, pix = F.reconstruct(model, x, 0.75)
    assert torch.allclose(recon, x, atol=1e-4) and torch.allclose(pasted, x, atol=1e-4)
    assert pix.mean().item() == pytest.approx(0.75) and torch.all(masked[pix.expand_as(x) > 0] == 0)


def test_figures_skip_without_data(tmp_path):
    from mae.report import figures as F

    empty = R.normalise(pd.DataFrame(columns=list(R.COLUMNS)))
    (tmp_path / "runs").mkdir()
    report = F.make_figures(empty, tmp_path / "runs", None, tmp_path / "fig")
    assert report["written"] == {} and set(report["skipped"]) == set(F.FIGURES)
    assert not list((tmp_path / "fig").glob("*.png"))


def test_reconstructions_come_from_the_raw_pixel_twin():
    """A norm-pix base run's reconstructions are drawn from its raw-pixel twin (same settings and seed), where the
    study has one; a twin that differs in another knob or seed, or a raw-pixel base, keeps the base run."""
    from mae.report.figures import reconstruction_runs
    from mae.report.runs_csv import KNOBS

    base = {k: None for k in KNOBS} | {"model": "m", "mask_ratio": 0.75, "target": "norm_pixel", "seed": 0}

    def frame(*runs):
        rows = [
            {"run": name, "eval": "pretrain", "init": "mae", "tables": "1d", **base, **knobs} for name, knobs in runs
        ]
        return pd.DataFrame(rows)

    twin = ("target-pixel", {"target": "pixel"})
    other_seed = ("target-pixel_seed-1", {"target": "pixel", "seed": 1})
    other_ratio = ("pixel-0.9", {"target": "pixel", "mask_ratio": 0.9})
    assert reconstruction_runs(frame(("base", {}), other_seed, twin)) == ["target-pixel", "base"]
    assert reconstruction_runs(frame(("base", {}), other_seed, other_ratio)) == ["base"]
    assert reconstruction_runs(frame(("base", {"target": "pixel"}), ("target-norm_pixel", {}))) == ["base"]
    assert reconstruction_runs(frame(("base", {}), ("target-pca", {"target": "pca"}))) == ["base"]


def test_reconstruction_figure_draws_the_twin_with_a_checkpoint(tree, summary, tmp_path):
    from mae.report import figures as F

    data = _tiny_dataset(tmp_path / "data")
    for run in ("base", "target-pixel"):
        _tiny_checkpoint(tmp_path / "runs" / run)
    fig = F.fig_reconstructions(summary, tmp_path / "runs", data)
    assert "run target-pixel: raw-pixel target" in fig._suptitle.get_text()
