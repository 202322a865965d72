import json
from collections import Counter

import pytest
import torch

from mae.tools import roofline
from mae.tools.bench import (
    PRESETS,
    StepRunner,
    Variant,
    add_arguments,
    bench_pretrain,
    cpu_info,
    gemm_rate,
    main,
    step_flops,
    step_gemms,
)


def test_bench_smoke_positive_numbers():
    res = bench_pretrain("cpu-tiny", batch_size=2, windows=5, warmup=1, progress=False, hand_tuned=False)
    for key in ("baseline_img_s", "fast_img_s", "visible_only_img_s", "mask_token_encoder_img_s"):
        assert res[key] > 0
    assert res["model"] == PRESETS["cpu-tiny"]["model"] and res["batch_size"] == 2
    assert res["extra_img_s"] == {} and "hand_tuned" not in res["img_s"]
    # the fast path trains in the precision amp: auto picks here; the baseline in fp32
    from mae.engine.precision import resolve

    assert res["amp"] == {
        "fast": resolve("auto", "cpu").amp,
        "mask_token_encoder": resolve("auto", "cpu").amp,
        "baseline": "none",
    }
    # % of roofline = FLOPs per image x img/s / the matrix-product rate measured in the variant's own precision,
    # and no figure is above 100 % of a limit (a limit measured in another precision would allow that)
    dtype = {"none": "fp32", "bf16": "bf16"}
    assert set(res["gemm_gflop_s"]) == {dtype[a] for a in res["amp"].values()}
    for name, pct in res["roofline_pct"].items():
        rate = res["gemm_gflop_s"][dtype[res["amp"][name]]]
        expected = 100 * res["gflop_per_image"][name] * res["img_s"][name] / rate
        assert pct == pytest.approx(expected) and 0 < pct < 100
    assert res["gflop_per_image"]["mask_token_encoder"] > res["gflop_per_image"]["fast"]
    assert res["gflop_per_image"]["fast"] == pytest.approx(res["gflop_per_image"]["baseline"], rel=1e-6)
    # the ceiling (the step's matrix products alone) is above every visible-only variant's rate
    assert set(res["pct_of_gemm_only"]) == {"fast"} | ({"baseline"} if res["amp"]["fast"] == "none" else set())
    assert res["pct_of_gemm_only"]["fast"] == pytest.approx(100 * res["img_s"]["fast"] / res["gemm_only_img_s"])
    assert 0 < res["pct_of_gemm_only"]["fast"] < 100
    assert res["cpu"] and isinstance(res["flags"], list)
    vis = res["visible_only"]  # visible-only vs mask tokens in the encoder: FLOP ratio beside the measured one
    assert vis["flop_ratio"] == pytest.approx(
        res["gflop_per_image"]["mask_token_encoder"] / res["gflop_per_image"]["fast"]
    )
    assert vis["measured_ratio"] == pytest.approx(res["img_s"]["fast"] / res["img_s"]["mask_token_encoder"])
    assert vis["pct_of_flop_ratio"] == pytest.approx(100 * vis["measured_ratio"] / vis["flop_ratio"])


def test_bench_extra_variants_sequential():
    res = bench_pretrain(
        "cpu-micro", batch_size=2, windows=5, warmup=1, progress=False, extra=True, hand_tuned=False, mode="sequential"
    )
    assert set(res["extra_img_s"]) == {"fp32_math", "bf16_sdpa", "bf16_weights"} and res["mode"] == "sequential"
    assert all(v > 0 for v in res["extra_img_s"].values())


def test_flops_and_gemm_shapes_of_a_step():
    """FLOPs of the tiny step match the count of its own matrix products (they dominate); the rate is finite."""
    runner = StepRunner(
        Variant("fast", amp="auto", attention="auto"), dict(PRESETS["cpu-micro"], batch_size=2), torch.device("cpu")
    )
    gemms = step_gemms(runner)
    shapes = Counter(gemms)
    gemm_flops = sum(c * 2 * (a[0] if len(a) == 3 else 1) * a[-2] * a[-1] * b[-1] for (_, a, b), c in shapes.items())
    assert gemm_flops == sum(roofline.gemm_flops(*g) for g in gemms)
    flops = step_flops(runner) * 2
    assert 0.8 * flops < gemm_flops <= 1.05 * flops
    assert {op for op, _, _ in shapes} <= {"mm", "addmm", "bmm", "baddbmm"}
    # in the step's order: the forward's first product is the first block's qkv projection (the patch embedding
    # is a convolution), of the visible tokens + cls of both images
    visible = int(runner.model.patch_embed.num_patches * (1 - runner.mask_ratio)) + 1
    assert gemms[0] == (
        "addmm",
        (2 * visible, runner.model.blocks[0].attn.qkv.in_features),
        tuple(runner.model.blocks[0].attn.qkv.weight.T.shape),
    )
    assert 1e6 < gemm_rate(shapes, torch.device("cpu"), repeats=2) < 1e15
    # the chain of the whole step takes longer than its longest product alone, and less than a second here
    longest = max(gemms, key=lambda g: roofline.gemm_flops(*g))
    chain = roofline.gemm_chain_seconds(gemms, torch.device("cpu"), repeats=2)
    assert roofline.gemm_chain_seconds([longest], torch.device("cpu"), repeats=2) < chain < 1.0
    assert "cpu" in cpu_info()


def test_bench_cli_json(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["pretrain", "--preset", "cpu-micro", "--batch-size", "2", "--warmup", "1", "--json", "--no-hand-tuned"]
    )
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["fast_img_s"] > 0 and out["windows"] == 5 and out["mode"] == "interleaved"


def test_bench_variant_subset_and_unknown_variant():
    from mae.errors import UserError

    res = bench_pretrain("cpu-micro", batch_size=2, windows=5, warmup=1, progress=False, only=["fast"])
    assert set(res["img_s"]) == {"fast", "mask_token_encoder"} and "baseline_img_s" not in res
    assert "vit-l16-224-cpu" in PRESETS and PRESETS["vit-l16-224-cpu"]["model"] == "mae_vit_large_patch16"
    with pytest.raises(UserError, match="unknown variant 'fastest'"):
        bench_pretrain("cpu-micro", batch_size=2, windows=5, warmup=1, progress=False, only=["fastest"])


@pytest.mark.slow
def test_bench_hand_tuned_variant_compiles():
    res = bench_pretrain("cpu-micro", batch_size=2, windows=5, warmup=1, progress=False)
    assert res["img_s"]["hand_tuned"] > 0 and res["speedup_fast_vs_hand_tuned"] > 0


def test_stage_table_from_a_study(tmp_path, capsys):
    """mae bench stages: step rate, end-to-end rate, shares and overhead from metrics.json + benchmark files."""
    from mae.tools import stage_rates

    def job(run, folder, metrics, wall=None):
        (tmp_path / "runs" / run / folder).mkdir(parents=True)
        (tmp_path / "runs" / run / folder / "metrics.json").write_text(json.dumps(metrics))
        if wall is not None:
            stage, _, setting = folder.partition("-")
            (tmp_path / "b" / stage).mkdir(parents=True, exist_ok=True)
            name = f"{run}-{setting}.tsv" if setting else f"{run}.tsv"
            (tmp_path / "b" / stage / name).write_text(f"s\th:m:s\n{wall}\t0:00:{wall}\n")

    parts = {"data": 1.0, "step": 8.0, "eval": 0.5, "save": 0.5, "other": 0.0, "final_eval": 2.0}
    job("base", "pretrain", {"time_s": parts, "step_img_s": 100.0, "img_s": 80.0, "amp_used": "bf16"}, wall=15)
    job("base", "partial_ft-1", {"time_s": parts, "step_img_s": 100.0, "img_s": 95.0, "amp_used": "bf16"})
    job("base", "partial_ft-0", {"reused_from": "x", "step_img_s": 1.0, "img_s": 1.0})  # a copy: no job
    job(
        "base",
        "linprobe",
        {
            "cached_features": True,
            "feature_step_img_s_train": 200.0,
            "feature_img_s_train": 190.0,
            "feature_s": 3.0,
            "time_s": {"step": 0.5},
            "amp_used": "none",
        },
        wall=5,
    )
    rows = {r["stage"]: r for r in stage_rates.stage_table(tmp_path, tmp_path / "b")}
    assert set(rows) == {"pretrain", "partial_ft", "linprobe"} and rows["partial_ft"]["jobs"] == 1
    pre = rows["pretrain"]
    assert pre["ratio"] == pytest.approx(0.8) and pre["data"] == pytest.approx(0.1) and pre["limit"] == "loader"
    assert pre["overhead_s"] == pytest.approx(15 - 12) and rows["partial_ft"]["overhead_s"] is None
    assert rows["partial_ft"]["limit"] == "the step"
    assert rows["linprobe"]["ratio"] == pytest.approx(0.95) and rows["linprobe"]["overhead_s"] == pytest.approx(1.5)
    assert main(_bench_args(["stages", str(tmp_path), "--benchmarks", str(tmp_path / "b")])) == 0
    assert "| pretrain | 1 | bf16 | 100 | 80 | 80 % | 10 % |" in capsys.readouterr().out


def _bench_args(argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)
