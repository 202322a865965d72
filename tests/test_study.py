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


def test_cli_renderers_quote_values():
    from mae.study import cli_flags, cli_overrides

    assert cli_flags({"kind": "shapes", "img_size": 32, "verify": True, "skip_bad": False}) == (
        "--kind shapes --img-size 32 --verify"
    )
    assert cli_overrides({"blocks": [0, 1], "name": "a b"}) == "--set blocks='[0, 1]' --set name='\"a b\"'"
