import json

from mae.bench import PRESETS, add_arguments, bench_pretrain, main


def test_bench_smoke_positive_numbers():
    res = bench_pretrain("cpu-tiny", batch_size=2, windows=5, warmup=1, progress=False)
    for key in ("baseline_img_s", "fast_img_s", "visible_only_img_s", "mask_token_encoder_img_s"):
        assert res[key] > 0
    assert res["model"] == PRESETS["cpu-tiny"]["model"] and res["batch_size"] == 2
    assert res["extra_img_s"] == {}


def test_bench_extra_variants():
    res = bench_pretrain("cpu-micro", batch_size=2, windows=5, warmup=1, progress=False, extra=True)
    assert set(res["extra_img_s"]) == {"fp32_math", "bf16_sdpa", "bf16_weights"}
    assert all(v > 0 for v in res["extra_img_s"].values())


def test_bench_cli_json(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["pretrain", "--preset", "cpu-micro", "--batch-size", "2", "--warmup", "1", "--json"])
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["fast_img_s"] > 0 and out["windows"] == 5
