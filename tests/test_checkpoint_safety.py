"""No file a user hands us runs code: every checkpoint load is ``weights_only=True`` with an explicit allow-list
(mae.models.checkpoint.read_checkpoint). A crafted pickle is refused, with one line naming the file and the object
it needs, on every command that takes a checkpoint; checkpoints of the landed release still resume."""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mae.cli import main as cli
from mae.models.checkpoint import read_checkpoint
from tests.test_eval import MODEL

FIXTURE = Path(__file__).parent / "fixtures" / "fit_checkpoint_408f98b.pt"


class _Payload:
    """Unpickling this runs ``touch MARKER``: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil(path: Path, marker: Path, **extra) -> Path:
    torch.save({"model": {"x": torch.zeros(1)}, "config": {"model": MODEL}, "payload": _Payload(marker), **extra}, path)
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from mae.data.prepare import prepare_builtin

    out = tmp_path_factory.mktemp("data") / "shapes"
    prepare_builtin(out, "shapes", img_size=32, n_train=16, n_val=8, seed=0)
    return out


def _refused(capsys, argv, evil: Path, marker: Path) -> None:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(evil) in err[0], err
    assert "refused" in err[0] and "system" in err[0], err[0]  # names the object the file asks for (posix.system)
    assert not marker.exists(), f"the payload ran for {argv[0]}"


@pytest.mark.parametrize(
    "command", ["finetune", "linprobe", "knn", "partial-ft", "transfer-det", "transfer-seg", "transfer-cls"]
)
def test_init_of_a_crafted_file_is_refused(tmp_path, capsys, shapes, command):
    marker = tmp_path / "PWNED"
    evil = _evil(tmp_path / "evil.pth", marker)
    extra = ["--blocks", "1"] if command == "partial-ft" else []
    _refused(
        capsys,
        [
            command,
            "--data",
            str(shapes),
            "--out",
            str(tmp_path / "out"),
            "--init",
            str(evil),
            "--device",
            "cpu",
            *extra,
        ],
        evil,
        marker,
    )
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_visualize_resume_and_fitted_targets_refuse_crafted_files(tmp_path, capsys, shapes):
    marker = tmp_path / "PWNED"
    evil = _evil(tmp_path / "evil.pth", marker)
    _refused(
        capsys, ["visualize", "--init", str(evil), "--data", str(shapes), "--out", str(tmp_path / "fig")], evil, marker
    )
    run = tmp_path / "run" / "pretrain"  # a run folder's checkpoint.pt is read on resume
    run.mkdir(parents=True)
    resume = _evil(run / "checkpoint.pt", marker)
    tiny = ["--set", "epochs=1", "--set", "batch_size=8", "--set", "model=" + MODEL]
    _refused(capsys, ["pretrain", "--data", str(shapes), "--out", str(run), "--device", "cpu", *tiny], resume, marker)
    for target in ("pca", "token"):  # --set target_path=FILE: the PCA file, the tokenizer
        fitted = _evil(tmp_path / f"{target}.pt", marker, kind="pca" if target == "pca" else "vq_tokenizer")
        _refused(
            capsys,
            [
                "pretrain",
                "--data",
                str(shapes),
                "--out",
                str(tmp_path / target),
                "--device",
                "cpu",
                *tiny,
                "--set",
                f"target={target}",
                "--set",
                f"target_path={fitted}",
            ],
            fitted,
            marker,
        )


def test_url_download_is_checked_before_it_is_cached(tmp_path, capsys, shapes, monkeypatch):
    from mae.utils import io

    monkeypatch.setenv(io.CACHE_ENV, str(tmp_path / "cache"))
    marker = tmp_path / "PWNED"
    root = tmp_path / "www"
    root.mkdir()
    _evil(root / "evil.pth", marker)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0),
        functools.partial(
            type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
            directory=str(root),
        ),
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/evil.pth"
        assert cli(["linprobe", "--data", str(shapes), "--out", str(tmp_path / "lp"), "--init", url]) == 2
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert "refused" in err and url in err and not marker.exists()
    assert not any((tmp_path / "cache").rglob("*evil*"))  # nothing of it stays in the cache


def test_allowed_objects_load(tmp_path):
    """The official MAE training files keep their arguments as an argparse.Namespace: loaded, and its model name
    read; our new checkpoints need no allow-list at all."""
    from mae.stages.classification import checkpoint_model_name

    official = tmp_path / "checkpoint-799.pth"
    torch.save(
        {
            "model": {"cls_token": torch.zeros(1, 1, 4)},
            "epoch": 799,
            "args": argparse.Namespace(model=MODEL, mask_ratio=0.75),
        },
        official,
    )
    assert read_checkpoint(official)["args"].mask_ratio == 0.75
    assert checkpoint_model_name(official) == MODEL
    legacy = tmp_path / "legacy.pth"  # torch's pre-zip format: read whole (no memory map)
    torch.save({"model": {"w": torch.ones(2)}}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(legacy, mmap=True)["model"]["w"], torch.ones(2))
    with pytest.raises(Exception, match="cannot read checkpoint"):
        (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
        read_checkpoint(tmp_path / "junk.pt")


def test_release_checkpoint_resumes_to_the_same_weights(tmp_path):
    """A checkpoint written by the landed release (commit 408f98b: numpy RNG states inside) resumes with today's
    code, and the result equals an uninterrupted run; today's checkpoints hold tensors and plain values only.
    Equal up to fp32 rounding: the fixture's first epoch was computed on another CPU, whose kernels round
    differently (bit-identical on the AMD EPYC that wrote it, 1 ulp apart on an Intel Xeon with AMX); a wrong data
    order, lr or optimizer state after the resume moves the weights by orders of magnitude more."""
    from mae.engine import fit
    from tests.test_engine import RegressionTask, cfg_for, weights

    cfg = cfg_for(epochs=2, amp="none", save_every=1)  # the settings the fixture was written with
    straight = RegressionTask(cfg)
    fit(straight, cfg, tmp_path / "straight")
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copy(FIXTURE, run / "checkpoint.pt")
    assert not read_checkpoint(run / "checkpoint.pt")["finished"]
    resumed = RegressionTask(cfg)
    fit(resumed, cfg, run)
    assert resumed.calls == 6  # the second epoch only
    a, b = weights(straight), weights(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    new = torch.load(run / "checkpoint.pt", weights_only=True)  # no allow-list needed any more
    assert new["finished"] and isinstance(new["rng"]["numpy"]["keys"], torch.Tensor)
    fit(RegressionTask(cfg), replace(cfg, epochs=2), tmp_path / "again")  # and they resume as well
