"""Config loading: defaults ← YAML ← --set overrides, with one-line errors naming the bad key/value."""

from __future__ import annotations

import argparse

import pytest

from mae.config import PretrainConfig, TrainConfig, add_common_arguments, config_from_args, load_config
from mae.errors import UserError


def test_defaults_file_and_overrides(tmp_path):
    cfg = load_config(PretrainConfig)
    assert (cfg.base_lr, cfg.weight_decay, cfg.betas, cfg.mask_ratio, cfg.amp) == (
        1.5e-4,
        0.05,
        (0.9, 0.95),
        0.75,
        "auto",
    )
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\nmask_ratio: 0.5\nbetas: [0.8, 0.9]\nbase_lr: 1e-3\n")
    cfg = load_config(PretrainConfig, f, ["mask_ratio=0.9", "clip_grad=null", "lr=0.01", "decoder_depth=1"])
    assert cfg.epochs == 3 and cfg.mask_ratio == 0.9 and cfg.betas == (0.8, 0.9) and cfg.base_lr == 1e-3
    assert cfg.clip_grad is None and cfg.lr == 0.01 and cfg.decoder_depth == 1
    assert load_config(PretrainConfig, overrides=["warmup_epochs=2"]).warmup_epochs == 2.0  # int -> float


@pytest.mark.parametrize(
    "override, message",
    [
        ("epochz=3", "unknown key 'epochz' for pretrain (valid: epochs, batch_size"),
        ("epochs=three", "bad value epochs='three' for pretrain (expected an integer)"),
        ("epochs=2.5", "epochs=2.5"),
        ("amp=fp32", "bad value amp='fp32' for pretrain (choices: 'auto', 'bf16', 'fp16', 'none')"),
        ("compile=yes please", "compile"),
        ("betas=[0.9]", "betas"),
        ("batch_size=0", "batch_size=0 for pretrain must be >= 1"),
        ("mask_ratio=1.0", "bad value 1.0 for 'mask_ratio' (must be in (0, 1))"),
        ("mask_ratio=0.0", "bad value 0.0 for 'mask_ratio' (must be in (0, 1))"),
        ("sampling=ring", "bad value 'ring' for 'sampling' (choose from random, block, grid)"),
        ("target=pca", "target_path"),
        ("novalue", "key=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(UserError) as err:
        load_config(PretrainConfig, overrides=[override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_files(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("- just\n- a list\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(TrainConfig, f)
    f.write_text("epochs: 2\nmask_ratio: 0.5\n")
    with pytest.raises(UserError, match=r"unknown key 'mask_ratio' for train \(in .*bad.yaml\)"):
        load_config(TrainConfig, f)
    with pytest.raises(UserError, match="cannot read config file"):
        load_config(TrainConfig, tmp_path / "missing.yaml")


def test_common_arguments():
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    args = parser.parse_args(["--data", "d", "--out", "o", "--set", "epochs=4", "--set", "seed=3", "--device", "cpu"])
    cfg = config_from_args(PretrainConfig, args)
    assert (cfg.epochs, cfg.seed, cfg.device) == (4, 3, "cpu")
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "o"])  # --data is required


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("epochs: 3\nbatch_size: 8\nepochs: 5\n")
    with pytest.raises(UserError, match=r"dup\.yaml: key 'epochs' appears twice in one mapping \(line 3\)"):
        load_config(PretrainConfig, path)
    from mae.config import load_yaml_strict

    with pytest.raises(UserError, match="key 'k' appears twice"):
        load_yaml_strict("a: {k: 1, k: 2}\n")
    assert load_yaml_strict("a: {k: 1}\nb: [1, 2]\n") == {"a": {"k": 1}, "b": [1, 2]}
