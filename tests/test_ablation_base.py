"""A study whose ablations vary another base than the final run (config `ablation_base`, the paper's Table 1 on
raw pixels vs its norm-pix final models): the planner, the summary, the tables and the claims keep the two
apart, so every row of a table is one paper setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mae.registry.ablations import ABLATIONS
from mae.report import claims as C
from mae.report import runs_csv as R
from mae.report import summary as S
from mae.report import tables as T
from mae.report.evidence import Evidence
from mae.study import plan_runs, write_plan

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
CONFIG = {
    "base": BASE,
    "ablation_base": {"target": "pixel"},
    "pretrain_dataset": "shapes",
    "ablations": {
        "1a": {"decoder_depth": [1, 2]},
        "1c": {"mask_token_in_encoder": [False, True]},
        "1d": {"target": ["pixel", "norm_pixel"]},
    },
}


def _top1(settings: dict, ev: str) -> float:
    """Raw pixels 20 points below normalised pixels: a table mixing the two bases would show it."""
    value = (50.0 if settings["target"] == "norm_pixel" else 30.0) + settings["decoder_depth"]
    value -= 5.0 if settings["mask_token_in_encoder"] else 0.0
    return value + (10.0 if ev == "finetune" else 0.0)


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    write_plan(CONFIG, root / "study.json")
    for name, run in plan_runs(CONFIG).items():
        speed = 100.0 if run.settings["mask_token_in_encoder"] else 300.0
        _write(root / "runs" / name / "pretrain" / "metrics.json", {"img_s": speed, "wall_s": 1000.0 / speed})
        for ev in ("finetune", "linprobe"):
            _write(root / "runs" / name / ev / "metrics.json", {"top1": _top1(run.settings, ev), "n_val": 100})
    for ev, top1 in (("finetune", 40.0), ("linprobe", 10.0)):
        _write(root / "runs" / "scratch" / ev / "metrics.json", {"top1": top1, "n_val": 100})
    S.write_csv(S.collect(root / "runs", S.load_study(root / "study.json")), root / "runs.csv")
    return R.read_summary(root / "runs.csv")


def test_tables_show_the_ablation_base_rows(frame):
    evidence = Evidence(frame)
    scale = T.our_scale(frame)
    table = T.ablation_table(evidence, ABLATIONS["1a"], "ViT-L/16", scale).data
    ours = table[table["note"] != "paper only"]
    assert list(ours["decoder depth"]) == [1, 2]
    assert list(ours["ft top-1 ours"]) == [41.0, 42.0] and list(ours["lin top-1 ours"]) == [31.0, 32.0]  # pixels
    target = T.ablation_table(evidence, ABLATIONS["1d"], "ViT-L/16", scale).data.set_index("paper setting")
    assert target.loc["pixel (w/o norm)", "lin top-1 ours"] == 32.0
    assert target.loc["pixel (w/ norm)", "lin top-1 ours"] == 52.0  # the base run itself
    wall = T.table2(frame, "ViT-L/16", scale).data.set_index("case")
    assert wall.loc["w/ [M], decoder depth 2", "ft top-1 ours"] == 37.0
    assert wall.loc["w/o [M], decoder depth 2", "ft top-1 ours"] == 42.0
    assert wall.loc["w/o [M], decoder depth 1", "ft top-1 ours"] == 41.0


def test_claims_compare_within_a_table_and_the_base_run_with_scratch(frame):
    evidence = Evidence(frame)
    depth = {c.key: c.point for c in evidence.cells(["decoder_depth"], "lin")}
    assert depth == {(1,): 31.0, (2,): 32.0}
    assert {c.key: c.point for c in evidence.cells(["mask_token_in_encoder"], "lin")} == {(False,): 32.0, (True,): 27.0}
    assert [c.point for c in evidence.cells([], "ft")] == [62.0]  # the final (norm-pix) run
    outcome = C.mae_beats_scratch(evidence)
    assert outcome.point_margin == pytest.approx(22.0)
    assert C.norm_pixels_at_least_pixels(evidence).point_margin == pytest.approx(20.0)
