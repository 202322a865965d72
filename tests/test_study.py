"""The run planner: expansion of the ablation grid, deduplication and stable names."""

import pytest
import yaml

from mae.errors import UserError
from mae.study import plan_runs, run_name

BASE = {
    "model": "mae_vit_micro_patch4",
    "mask_ratio": 0.75,
    "decoder_depth": 2,
    "decoder_width": 128,
    "mask_token_in_encoder": False,
    "target": "norm_pixel",
    "aug": "crop_rand",
    "sampling": "random",
    "epochs": 8,
    "seed": 0,
}


def test_base_setting_trains_once_and_serves_every_table():
    config = {
        "base": BASE,
        "ablations": {
            "1a": {"decoder_depth": [1, 2, 4]},
            "1c": {"mask_token_in_encoder": [False, True]},
            "1f": [{"sampling": "random", "mask_ratio": 0.75}, {"sampling": "grid", "mask_ratio": 0.75}],
        },
    }
    runs = plan_runs(config)
    assert list(runs) == [
        "base",
        "decoder_depth-1",
        "decoder_depth-4",
        "mask_token_in_encoder-true",
        "sampling-grid",
    ]
    assert runs["base"].tables == ["1a", "1c", "1f"]
    assert runs["decoder_depth-4"].settings["decoder_depth"] == 4
    assert runs["decoder_depth-4"].tables == ["1a"]


def test_names_are_readable_and_stable():
    assert run_name(BASE, BASE) == "base"
    assert run_name({**BASE, "sampling": "block", "mask_ratio": 0.5}, BASE) == "mask_ratio-0.5_sampling-block"
    assert run_name({**BASE, "epochs": 16, "seed": 1}, BASE) == "epochs-16_seed-1"


def test_seeds_multiply_every_setting_and_null_tables_are_skipped():
    runs = plan_runs({"base": BASE, "seeds": [0, 1], "ablations": {"fig5": {"mask_ratio": [0.5]}, "1b": None}})
    assert sorted(runs) == ["base", "mask_ratio-0.5", "mask_ratio-0.5_seed-1", "seed-1"]


@pytest.mark.parametrize(
    "ablations, message",
    [
        ({"1a": {"decoder_dept": [1]}}, "unknown knob 'decoder_dept'"),
        ({"1a": {"decoder_depth": [1.5]}}, "bad value 1.5 for 'decoder_depth'"),
        ({"1d": {"target": ["hog"]}}, "bad value 'hog' for 'target'"),
        ({"fig5": {"mask_ratio": [1.2]}}, "bad value 1.2 for 'mask_ratio'"),
        ({"1a": {"decoder_depth": [1], "decoder_width": [64]}}, "exactly one knob"),
    ],
)
def test_bad_ablations_name_the_key(ablations, message):
    with pytest.raises(UserError, match=message):
        plan_runs({"base": BASE, "ablations": ablations})


def test_shipped_configs_plan(repo_root):
    for name in ("config.yaml", "paper.yaml"):
        config = yaml.safe_load((repo_root / "config" / name).read_text())
        if name == "paper.yaml":
            default = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
            config = {**default, **config}
        runs = plan_runs(config)
        assert "base" in runs and len(runs) >= 10


def test_ablation_base_is_what_the_tables_vary():
    """The paper's ablations use raw pixels, its final runs normalised pixels: `ablation_base` sets the knobs the
    tables start from; `base` stays the final run; every table gets its own base row."""
    config = {
        "base": BASE,
        "ablation_base": {"target": "pixel"},
        "ablations": {
            "1a": {"decoder_depth": [1, 2]},
            "1c": {"mask_token_in_encoder": [True]},
            "1d": {"target": ["pixel", "norm_pixel"]},
        },
    }
    runs = plan_runs(config)
    assert list(runs) == [
        "base",
        "target-pixel",
        "decoder_depth-1_target-pixel",
        "mask_token_in_encoder-true_target-pixel",
    ]
    assert runs["base"].settings == BASE and runs["base"].tables == ["1d"]
    assert runs["target-pixel"].tables == ["1a", "1c", "1d"]  # 1c lists only `true`: its base row is added
    assert all(r.settings["target"] == "pixel" for name, r in runs.items() if name != "base")
    for bad, message in (
        ({"seed": 1}, "'seed' cannot differ"),
        ({"target": "hog"}, "ablation_base: bad value 'hog'"),
        ({"decoder_dept": 1}, "ablation_base: unknown knob 'decoder_dept'"),
        ("pixel", "mapping"),
    ):
        with pytest.raises(UserError, match=message):
            plan_runs({**config, "ablation_base": bad})


def test_paper_config_ablations_use_raw_pixels(repo_root):
    from snakemake.utils import update_config

    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((repo_root / "config" / "paper.yaml").read_text()))
    runs = plan_runs(config)
    assert runs["base"].settings["target"] == "norm_pixel" and runs["base"].tables == ["1d"]
    for name, run in runs.items():
        if name != "base" and name not in ("target-pca", "target-token"):
            assert run.settings["target"] == "pixel", name
    default = runs["target-pixel"]
    assert default.tables == ["1a", "1b", "1c", "1d", "1e", "1f", "fig5", "fig7"]
    assert {k: v for k, v in default.settings.items() if k != "target"} == {
        k: v for k, v in config["base"].items() if k != "target"
    }


def test_cli_renderers_quote_values():
    from mae.study import cli_flags, cli_overrides

    assert cli_flags({"kind": "shapes", "img_size": 32, "verify": True, "skip_bad": False}) == (
        "--kind shapes --img-size 32 --verify"
    )
    assert cli_overrides({"blocks": [0, 1], "name": "a b"}) == "--set blocks='[0, 1]' --set name='\"a b\"'"


def test_every_compared_setting_has_seeds():
    """`seeds` reach the baselines and the base run's evaluations too; `seeds_per` sets other seeds for a table,
    the base-run evaluations or the baselines; a stage section cannot set a seed of its own."""
    from mae.registry.evaluations import check_study_sections
    from mae.study import base_run_names, baseline_runs, parse_baseline_name, seeds_of

    config = {"base": BASE, "seeds": [0, 1], "ablations": {"fig5": {"mask_ratio": [0.5]}, "1a": None}}
    assert base_run_names(config) == ["base", "seed-1"]
    assert baseline_runs(config) == ["scratch", "scratch_seed-1"]
    assert baseline_runs(config, "supervised") == ["supervised", "supervised_seed-1"]
    more = {**config, "seeds_per": {"fig5": [0, 1, 2], "scratch": [0, 1, 2, 3], "base_run": [0]}}
    runs = plan_runs(more)
    assert sorted(runs) == [
        "base",
        "mask_ratio-0.5",
        "mask_ratio-0.5_seed-1",
        "mask_ratio-0.5_seed-2",
        "seed-1",
        "seed-2",
    ]  # fig5's base row gets seed 2 as well
    assert runs["seed-2"].tables == ["fig5"] and base_run_names(more) == ["base"]
    assert baseline_runs(more) == ["scratch", "scratch_seed-1", "scratch_seed-2", "scratch_seed-3"]
    assert seeds_of(more, "1b") == [0, 1]
    assert parse_baseline_name("scratch_seed-3") == ("scratch", 3) and parse_baseline_name("supervised") == (
        "supervised",
        None,
    )
    assert parse_baseline_name("seed-1") is None and parse_baseline_name("scratchy") is None
    for bad, message in (
        ({"seeds_per": {"1z": [0]}}, "seeds_per: unknown part '1z'"),
        ({"seeds_per": {"1a": [0]}}, "unknown part '1a'"),  # switched off
        ({"seeds_per": {"scratch": []}}, "seeds_per.scratch: expected a non-empty list"),
        ({"seeds_per": {"scratch": [-1]}}, "bad value -1 for 'seed'"),
    ):
        with pytest.raises(UserError, match=message):
            plan_runs({**config, **bad}) and baseline_runs({**config, **bad})
    with pytest.raises(UserError, match="'finetune:' sets 'seed'"):
        check_study_sections({"finetune": {"epochs": 1, "seed": 3}})
