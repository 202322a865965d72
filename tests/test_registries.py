"""The registry (mae/registry/): knobs, choice tables, ablations and evaluations, declared once and read
everywhere; a toy sampler added through it reaches the study plan, the model and the tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from mae.config import PretrainConfig, load_config
from mae.errors import UserError
from mae.models import masking
from mae.registry import choices, evaluations, knobs
from mae.registry.ablations import ABLATIONS, STUDY_TABLES
from mae.report import paper as P
from mae.report.evidence import Evidence
from mae.report.runs_csv import COLUMNS, normalise
from mae.report.tables import TABLE1, ablation_table
from mae.study import plan_runs

BASE = {
    "model": "mae_vit_micro_patch4",
    "mask_ratio": 0.75,
    "decoder_depth": 2,
    "decoder_width": 128,
    "mask_token_in_encoder": False,
    "target": "norm_pixel",
    "aug": "crop_rand",
    "sampling": "random",
    "epochs": 4,
    "seed": 0,
}


def test_every_choice_loads_to_its_kind():
    """Each name of a choice table loads to the object its kind needs, and the knobs take their choices from the
    tables (no second list to drift)."""
    from mae.models.targets import Target

    kinds = {"sampling": masking.MaskSampler, "target": Target}
    for kind in choices.KINDS:
        assert knobs.KNOBS[kind].options() == choices.names(kind)
        for name in choices.names(kind):
            obj = choices.load(kind, name)
            if kind in kinds:
                assert issubclass(obj, kinds[kind]), (kind, name)
            elif kind == "aug":
                assert callable(obj) and obj(8)(torch.zeros(3, 8, 8, dtype=torch.uint8)).shape == (3, 8, 8)
            else:
                assert {"patch_size", "embed_dim", "depth", "num_heads"} <= set(obj), name
    with pytest.raises(UserError, match=r"unknown sampler 'x' \(valid: random, block, grid\)"):
        choices.load("sampling", "x")


def test_listing_the_choices_imports_no_torch():
    code = (
        "import sys; from mae.registry import choices, knobs, evaluations, ablations; "
        "print(choices.names('model')); assert 'torch' not in sys.modules and 'pandas' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_schema_names_no_stage_the_registry_lacks(monkeypatch):
    """The schema's stage sections are registry stages. One it leaves out (a plug-in's, or a new one inside the
    package) passes the schema and is checked by its settings class (``schema_view``), so adding an evaluation
    does not mean editing the schema."""
    toy = evaluations.Evaluation("toy", "toy_stage", "a toy", "mae.stage_configs:KnnConfig")
    monkeypatch.setitem(evaluations.EVALUATIONS, "toy", toy)
    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"]
    listed = {k for k, v in props.items() if v.get("$ref") == "#/definitions/section" or k in evaluations.EVALUATIONS}
    known = {"pretrain", "fit_pca", "train_tokenizer", *evaluations.OVERLAYS, *evaluations.EVALUATIONS}
    assert listed and listed <= known, listed - known
    view = evaluations.schema_view({"knn": {}, "toy": {}, "bogus": 1}, "workflow/schemas/config.schema.yaml")
    assert view == {"knn": {}, "bogus": 1}  # the schema still rejects what no registry declares


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, float("nan")])
def test_one_range_for_mask_ratio(value):
    """The study planner and `mae pretrain` reject the same values with the same message."""
    message = f"bad value {value!r} for 'mask_ratio' (must be in (0, 1))"
    with pytest.raises(UserError, match=r"base: " + message.replace("(", r"\(").replace(")", r"\)")):
        plan_runs({"base": {**BASE, "mask_ratio": value}})
    with pytest.raises(UserError) as err:
        load_config(PretrainConfig, overrides=[f"mask_ratio={value}"])
    assert str(err.value) == f"pretrain: {message}"


def test_labels_round_trip_through_the_paper():
    """Every paper setting of an ablation parses to knob values that format back to the same label."""
    paper = P.load_paper()
    for spec in ABLATIONS.values():
        labels = paper.loc[paper["table"] == spec.paper_table, "setting"].unique()
        parsed = [(label, spec.from_paper(label)) for label in labels]
        assert sum(v is not None for _, v in parsed) >= 2, spec.id
        for label, values in parsed:
            if values is not None:
                assert spec.to_paper(*values.values()) == label
    assert ABLATIONS["1f"].from_paper("block 50") == {"sampling": "block", "mask_ratio": 0.5}
    assert ABLATIONS["1c"].to_paper(True) == "encoder w/ [M]"
    assert ABLATIONS["7"].from_paper("target=delta = dVAE token - pixel (w/ norm)") is None
    runs = P.paper_as_runs()
    assert set(runs["tables"].dropna()) >= set(STUDY_TABLES)


def test_unknown_table_is_named():
    with pytest.raises(UserError, match=r"ablations: unknown table '1z' \(valid: 1a, 1b"):
        plan_runs({"base": BASE, "ablations": {"1z": {"decoder_depth": [1]}}})


class ToySampler(masking.MaskSampler):
    """Keeps the first patches of every image (a deterministic toy)."""

    def __call__(self, batch_size, grid_size, mask_ratio, device=None):
        n = grid_size[0] * grid_size[1]
        mask = torch.ones(batch_size, n, dtype=torch.bool, device=device)
        mask[:, : masking.num_kept(n, mask_ratio)] = False
        return masking.sample_from_mask(mask)


@pytest.fixture
def toy_sampler():
    masking.register_sampler("toy", ToySampler)
    yield "toy"
    choices.unregister("sampling", "toy")


def test_toy_sampler_reaches_plan_model_and_tables(toy_sampler):
    # study plan: the knob accepts it and names the run after it
    runs = plan_runs(
        {
            "base": BASE,
            "ablations": {"1f": [{"sampling": "random", "mask_ratio": 0.75}, {"sampling": "toy", "mask_ratio": 0.75}]},
        }
    )
    assert runs["sampling-toy"].settings["sampling"] == "toy" and runs["sampling-toy"].tables == ["1f"]
    # stage config and model
    cfg = load_config(PretrainConfig, overrides=["sampling=toy"])
    from mae.models import create_mae

    model = create_mae(cfg.model, **knobs.model_kwargs(cfg))
    _, _, mask = model(torch.randn(2, 3, 32, 32), 0.75)
    assert mask[:, :16].sum() == 0 and mask[:, 16:].all()
    # tables: the toy setting is a row of Table 1f ("not in paper"), beside the paper's rows
    rows = []
    for name, run in runs.items():
        for ev, acc in (("finetune", 50.0), ("linprobe", 20.0 if name == "base" else 15.0)):
            rows.append(
                {
                    "run": name,
                    "eval": ev,
                    "eval_setting": "",
                    "init": "mae",
                    "dataset": "shapes",
                    "img_size": 32,
                    "patch_size": 4,
                    **{knobs.KNOBS[k].column: v for k, v in run.settings.items()},
                    "tables": ";".join(run.tables),
                    "top1": acc,
                }
            )
    frame = normalise(pd.DataFrame(rows).reindex(columns=[c for c in COLUMNS if c in rows[0]]))
    table = ablation_table(
        Evidence(frame), ABLATIONS["1f"], P.DEFAULT_PAPER_MODEL, {"model": "m", "dataset": "d", "epochs": 4, "seeds": 1}
    )
    data = table.data
    toy = data[data["sampling"] == "toy"]
    assert len(toy) == 1 and toy["note"].iloc[0] == "not in paper" and toy["lin top-1 ours"].iloc[0] == 15.0
    assert (data["paper setting"] == "random 75").sum() == 1
    assert [t.id for t in TABLE1] == ["1a", "1b", "1c", "1d", "1e", "1f"]


def test_evaluation_registry_feeds_cli_summary_and_study_checks():
    from mae.cli import COMMANDS
    from mae.registry.evaluations import EVALUATIONS, check_study_evaluations, folders
    from mae.report.summary import EVALS, parse_eval_dir

    for ev in EVALUATIONS.values():
        assert COMMANDS[ev.command][0] == ev.module and ev.name in EVALS
    assert parse_eval_dir("transfer_cls-digits") == ("transfer_cls", "digits")
    config = {"partial_ft": {"blocks": [0, 4]}, "transfer_cls": {"datasets": ["digits"]}}
    assert folders("partial_ft", config) == ["partial_ft-0", "partial_ft-4"] and folders("knn", config) == ["knn"]
    check_study_evaluations({**config, "evaluations": {"every_run": ["linprobe"], "base_run": ["partial_ft"]}})
    with pytest.raises(UserError, match=r"evaluations.every_run: unknown evaluation 'linprob' \(valid: finetune"):
        check_study_evaluations({"evaluations": {"every_run": ["linprob"]}})
    with pytest.raises(
        UserError,
        match=r"evaluations.per_table.1d: evaluation 'partial_ft' needs a non-empty list "
        r"partial_ft.blocks",
    ):
        check_study_evaluations({"evaluations": {"per_table": {"1d": ["partial_ft"]}}})
