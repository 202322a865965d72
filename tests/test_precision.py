"""``amp: auto`` (mae/engine/precision.py): bf16 only where the CPU computes it fast, fp32 otherwise; the probe is
cached per machine; explicit choices are obeyed (with a warning where bf16 is slow); resumes agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mae.engine import precision
from mae.errors import UserError


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """Each test: an empty cache folder, no resolved precision, no warning printed yet."""
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    precision._resolve.cache_clear()
    precision._WARNED.clear()
    yield
    precision._resolve.cache_clear()


def fake_cpu(monkeypatch, flags, speedup=None):
    """A CPU with ``flags`` whose probe says bf16 runs ``speedup`` x fp32; returns the list of probe calls."""
    calls = []
    monkeypatch.setattr(precision, "cpu_info", lambda: {"cpu": "Test CPU", "flags": list(flags)})

    def probe(threads=None):
        calls.append(threads)
        return speedup

    monkeypatch.setattr(precision, "probe", probe)
    return calls


def test_no_bf16_instructions_means_fp32_without_a_probe(monkeypatch):
    calls = fake_cpu(monkeypatch, ["avx2"])
    p = precision.resolve("auto", "cpu")
    assert p.amp == "none" and p.dtype == torch.float32 and "no bf16 instructions" in p.reason
    assert calls == [] and p.record() == {"amp_used": "none", "amp_reason": p.reason}
    assert isinstance(p.autocast(torch.device("cpu")), type(precision.contextlib.nullcontext()))


@pytest.mark.parametrize("speedup, amp", [(3.5, "bf16"), (1.05, "none"), (0.03, "none")])
def test_bf16_flags_decided_by_the_probe(monkeypatch, speedup, amp):
    calls = fake_cpu(monkeypatch, ["avx2", "avx512f", "avx512_bf16"], speedup)
    p = precision.resolve("auto", "cpu")
    assert p.amp == amp and calls == [1]
    assert ("emulated" in p.reason) == (amp == "none") and "avx512_bf16" in p.reason


def test_probe_is_cached_per_machine_and_kernel_environment(monkeypatch, tmp_path):
    calls = fake_cpu(monkeypatch, ["amx_bf16"], 6.0)
    assert precision.resolve("auto", "cpu").amp == "bf16"
    precision._resolve.cache_clear()  # a new process on the same machine reads the cache
    p = precision.resolve("auto", "cpu")
    assert calls == [1] and p.reason == "auto: bf16, amx_bf16, bf16 matmul 6.0x fp32 (probe)"
    cache = json.loads((tmp_path / "cache" / precision.CACHE_FILE).read_text())
    assert [entry["bf16_speedup"] for entry in cache.values()] == [6.0]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")  # other kernels: measured again, kept beside the first
    precision._resolve.cache_clear()
    precision.resolve("auto", "cpu")
    assert calls == [1, 1] and len(json.loads((tmp_path / "cache" / precision.CACHE_FILE).read_text())) == 2


def test_unusable_cache_is_skipped(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "file"))
    fake_cpu(monkeypatch, ["avx512_bf16"], 3.0)
    assert precision.resolve("auto", "cpu").amp == "bf16"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / precision.CACHE_FILE).write_text("[1, 2")  # damaged: measured again, rewritten
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    precision._resolve.cache_clear()
    assert precision.resolve("auto", "cpu").amp == "bf16"
    assert json.loads((tmp_path / "cache" / precision.CACHE_FILE).read_text())


def test_explicit_choices(monkeypatch, capsys):
    fake_cpu(monkeypatch, ["avx2"])
    assert precision.resolve("none", "cpu").amp == "none"
    assert precision.resolve(None, "cpu").amp == "none"
    for _ in range(3):  # obeyed, with one warning per process
        p = precision.resolve("bf16", "cpu")
        precision._resolve.cache_clear()
    assert p.amp == "bf16" and "slow here" in p.reason
    assert capsys.readouterr().err.count("warning: amp=bf16 will be slow on this CPU") == 1
    with pytest.raises(UserError, match="amp=fp16 needs a CUDA device"):
        precision.resolve("fp16", "cpu")
    with pytest.raises(UserError, match="amp: invalid value 'fp8'"):
        precision.resolve("fp8", "cpu")


def test_fast_explicit_bf16_does_not_warn(monkeypatch, capsys):
    fake_cpu(monkeypatch, ["avx512_bf16"], 3.0)
    assert precision.resolve("bf16", "cpu") == precision.Precision("bf16", "set: amp=bf16")
    assert "warning" not in capsys.readouterr().err


def test_old_bf16_checkpoint_resumes_where_auto_picks_bf16(monkeypatch, tmp_path):
    from mae.config import PretrainConfig, config_to_dict
    from mae.engine import changed_setting

    cfg = PretrainConfig(device="cpu")
    ckpt = {"config": {**config_to_dict(cfg), "amp": "bf16"}}
    fake_cpu(monkeypatch, ["avx512_bf16"], 3.0)
    assert changed_setting(ckpt, cfg, tmp_path) is None
    precision._resolve.cache_clear()
    fake_cpu(monkeypatch, ["avx2"])  # here auto means fp32: the old bf16 run is another setting
    assert "amp='bf16', now amp='auto'" in changed_setting(ckpt, cfg, tmp_path)


def test_probe_measures_something():
    assert 0 < precision.probe(threads=1) < 1000
    info = precision.cpu_info()
    assert info["cpu"] and set(info["flags"]) <= set(precision.CPU_FLAGS)


def test_emulated_avx2_machine_trains_in_fp32(tmp_path):
    """With the matrix kernels limited to AVX2 (what an AVX2-only CPU runs), auto is fp32 on any x86 machine."""
    env = {
        **os.environ,
        "MAE_CACHE": str(tmp_path),
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    }
    code = "from mae.engine.precision import resolve; print(resolve('auto', 'cpu').amp)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = "none" if os.uname().machine in ("x86_64", "AMD64") else out.stdout.strip()
    assert out.stdout.strip() == expected
