"""Reliability: one study per results folder (mae/utils/lock.py) and study-config sections checked at plan time
(mae.registry.evaluations.check_study_sections, called by the Snakefile)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mae.errors import UserError
from mae.registry.evaluations import check_study_sections
from mae.utils import lock

ROOT = Path(__file__).resolve().parents[1]


def _holder(path: Path, **fields) -> None:
    path.write_text(json.dumps({"host": socket.gethostname(), "checkout": "/elsewhere", "started": "t", **fields}))


def test_lock_taken_released_and_refused_while_held(tmp_path):
    path = lock.acquire(tmp_path, {"scale": "toy"})
    holder = json.loads(path.read_text())
    assert holder["pid"] == os.getpid() and holder["scale"] == "toy"
    assert lock.acquire(tmp_path) == path  # the same process again: fine
    lock.release(tmp_path)
    assert not path.exists()
    _holder(path, pid=os.getppid())  # a live process of this host
    with pytest.raises(UserError, match=rf"in use by another study run: pid {os.getppid()} on .* delete {path}"):
        lock.acquire(tmp_path)
    lock.release(tmp_path)  # never removes another run's lock
    assert json.loads(path.read_text())["pid"] == os.getppid()


def test_stale_lock_is_reported_and_replaced(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _holder(tmp_path / lock.LOCK, pid=dead.pid)
    path = lock.acquire(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"removing the stale lock of pid {dead.pid}" in capsys.readouterr().err


def test_lock_of_another_host_is_refused_with_how_to_clear(tmp_path):
    _holder(tmp_path / lock.LOCK, pid=1, host="node-17")
    with pytest.raises(UserError, match=r"pid 1 on node-17 from /elsewhere .* delete .*\.study\.lock"):
        lock.acquire(tmp_path)


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"pretrain": {"epochz": 3}}, "study config 'pretrain:': unknown key 'epochz' for pretrain (valid: epochs,"),
        (
            {"finetune": {"layer_decay": 2.0}},
            "study config 'finetune:': layer_decay=2.0 for finetune must be in (0, 1]",
        ),
        ({"linprobe": {"optimizer": "adam"}}, "study config 'linprobe:': bad value optimizer='adam' for linprobe"),
        ({"knn": {"k": 0}}, "study config 'knn:': k=0 for knn must be >= 1"),
        ({"transfer_det": {"dataset": "coco", "out_channel": 8}}, "'transfer_det:': unknown key 'out_channel'"),
        (
            {"partial_ft": {"blocks": [0, 1], "epoch": 1}},
            "study config 'partial_ft:': unknown key 'epoch' for finetune",
        ),
        ({"scratch_finetune": {"layer_decay": 0}}, "study config 'scratch_finetune:': layer_decay=0.0 for finetune"),
        ({"transfer_cls": "fast"}, "study config 'transfer_cls:' must be a mapping"),
    ],
)
def test_study_sections_are_checked_at_plan_time(sections, message):
    with pytest.raises(UserError) as err:
        check_study_sections(sections)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_shipped_study_configs_pass_the_section_check():
    import yaml
    from snakemake.utils import update_config

    names = sorted(p.stem for p in (ROOT / "config").glob("*.yaml"))
    assert {"config", "smoke", "cpu", "paper"} <= set(names)
    for name in names:  # every shipped config, merged as --configfile does
        config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
        update_config(config, yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()))
        check_study_sections(config)


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"partial_ft": {"blocks": [0, 1], "head": "old"}}, "'partial_ft: head': must be one of probe, new, got 'old'"),
        (
            {
                "partial_ft": {"blocks": [0, 1]},
                "evaluations": {"base_run": ["partial_ft"]},
                "linprobe": {"global_pool": "token"},
            },
            "pools with global_pool='token' and fine-tuning with 'avg'",
        ),
    ],
)
def test_partial_ft_head_is_checked_at_plan_time(sections, message):
    with pytest.raises(UserError) as err:
        check_study_sections(sections)
    assert message in str(err.value) and "\n" not in str(err.value)
    check_study_sections({**sections, "partial_ft": {"blocks": [0, 1], "head": "new"}})


def test_dry_run_names_a_typo_in_a_stage_section(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("pretrain: {epochz: 3}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "config/smoke.yaml", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "study config 'pretrain:': unknown key 'epochz' for pretrain" in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------- pretrain
@pytest.fixture(scope="module")
def data48(tmp_path_factory):
    from mae.data.prepare import prepare_builtin

    out = tmp_path_factory.mktemp("data") / "shapes48"
    prepare_builtin(out, "shapes", img_size=48, n_train=32, n_val=16, seed=0)
    return out


def _pretrain(data, out, *sets):
    from tests.test_pretrain import run_cli

    return run_cli(data, out, "epochs=1", "warmup_epochs=0", "eval_images=16", *sets)


def test_pretrain_trains_at_the_datasets_size_and_cleans_up(data48, tmp_path, capsys):
    import torch

    out = tmp_path / "run" / "pretrain"
    out.mkdir(parents=True)
    stale = out / ".checkpoint.pt.ab12cd34.tmp"  # left by a write that a kill interrupted
    stale.write_bytes(b"half a checkpoint")
    (out / "log.jsonl").write_text('{"kind": "step", "epoch": 0.5, "step": 1, "loss": 9.0}\n')  # killed run
    assert _pretrain(data48, out) == 0
    assert not stale.exists()
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all(r.get("loss") != 9.0 for r in log)  # started from zero: a new log, no duplicate epochs
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["model"]["pos_embed"].shape[1] == 1 + (48 // 4) ** 2  # img_size None: the dataset's 48 px
    settings_path = out.parent / "settings.json"
    before = settings_path.read_bytes()
    assert json.loads(before)["img_size"] == 48
    # a changed knob is refused and the run's settings stay as they were
    assert _pretrain(data48, out, "mask_ratio=0.5") == 2
    assert "mask_ratio" in capsys.readouterr().err and settings_path.read_bytes() == before


@pytest.mark.parametrize("kind, extra", [("shapes", []), ("imagefolder", ["--root", "."])])
@pytest.mark.parametrize("size", ["0", "-32"])
def test_prepare_data_refuses_a_non_positive_image_size(tmp_path, capsys, kind, extra, size):
    from mae.cli import main as cli_main

    assert cli_main(["prepare-data", "--kind", kind, "--out", str(tmp_path / "d"), "--img-size", size, *extra]) == 2
    assert f"--img-size must be >= 8, got {size}" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "the top level must be an object, not a list"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "images[0] has no 'file_name'"),
        (
            '{"images": [], "annotations": [{"id": 1, "image_id": 1}], "categories": []}',
            "annotations[0] has no 'category_id'",
        ),
        ('{"images": [], "annotations": [], "categories": [{"id": 1}]}', "categories[0] has no 'name'"),
        ('{"images": [], "annotations": []}', "has no 'categories' list"),
    ],
)
def test_bad_coco_json_is_a_named_error(tmp_path, capsys, content, message):
    from mae.cli import main as cli_main

    root = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    for split in ("train2017", "val2017"):
        (root / "annotations" / f"instances_{split}.json").write_text(content)
    assert cli_main(["prepare-data", "--kind", "coco", "--root", str(root), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "instances_train2017.json" in err and "\n" not in err
    assert not (tmp_path / "m").exists()


def with_probe_cell(text: str, column: str, value: str) -> bytes:
    """The committed CPU study's runs.csv with one cell of the base run's linear-probe row replaced."""
    header = text.splitlines()[0].split(",")
    row = next(line for line in text.splitlines() if line.startswith("base,linprobe,"))
    cells = row.split(",")
    cells[header.index(column)] = value
    return text.replace(row, ",".join(cells), 1).encode()


@pytest.mark.parametrize("command", ["tables", "claims"])
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda text: b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 50, "not a runs.csv"),
        (lambda text: with_probe_cell(text, "top1", '"abc"'), "top1='abc' is not a number"),
        (lambda text: with_probe_cell(text, "mask_ratio", ""), "the knob mask_ratio is empty"),
    ],
)
def test_damaged_summary_is_a_named_error(tmp_path, capsys, command, damage, message):
    from mae.cli import main as cli_main

    text = (ROOT / "results" / "cpu_study" / "summary" / "runs.csv").read_text()
    bad = tmp_path / "runs.csv"
    bad.write_bytes(damage(text))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.md").write_text("earlier")
    assert cli_main([command, "--summary", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(bad) in err and "\n" not in err
    assert [p.name for p in out.iterdir()] == ["keep.md"] and (out / "keep.md").read_text() == "earlier"


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
    from mae.data.prepare import prepare_builtin

    out = tmp_path_factory.mktemp("data") / "shapes"
    prepare_builtin(out, "shapes", img_size=32, n_train=32, n_val=16, seed=0)
    return out


@pytest.mark.parametrize(
    "argv, message",
    [
        ("pretrain --data {D} --out {O} --set img_size=30", "img_size=30 for pretrain is not a multiple of"),
        ("pretrain --data {D} --out {O} --set target=pca", "target=pca needs target_path"),
        ("pretrain --data {D} --out {O} --set mask_ratio=0.0", "bad value 0.0 for 'mask_ratio' (must be in (0, 1))"),
        ("pretrain --data {D} --out {O} --set sampling=ring", "bad value 'ring' for 'sampling' (choose from random"),
        ("pretrain --data {D} --out {O} --set batch_size=100000", "the training loader gives 0 batches"),
        ("pretrain --data {D}/missing --out {O}", "missing"),
        ("finetune --data {D} --out {O} --init {D}/meta.json", "cannot read checkpoint"),
        ("linprobe --data {D}/missing --out {O} --scratch", "is not a prepared dataset"),
        ("knn --data {D} --out {O} --scratch --set k=0", "k=0 for knn must be >= 1"),
        ("partial-ft --data {D} --out {O} --scratch --blocks -1", "--blocks: must be >= 0, got -1"),
        (
            "transfer-det --data {D} --out {O} --scratch --set out_channel=3",
            "unknown key 'out_channel' for transfer_det",
        ),
        ("transfer-seg --data {D} --out {O} --scratch --set layer_decay=0", "layer_decay=0.0 for transfer_seg"),
        ("transfer-cls --data {D} --out {O} --init {D}/none.pt", "checkpoint file '{D}/none.pt' does not exist"),
        ("train-tokenizer --data {D}/missing --out {O}/t.pt", "not a directory"),
        ("summarize --runs {D}/missing --out {O}/runs.csv", "runs folder not found"),
        ("tables --summary {D}/none.csv --out {O}", "summary not found"),
        ("figures --summary {D}/none.csv --runs {D} --out {O}", "summary not found"),
        ("claims --summary {D}/meta.json --out {O}", "meta.json: not a runs.csv"),
        ("fit-pca --data {D} --out {O}/pca.pt --components 100000", "--components must be in [1, 48]"),
        (
            "fit-pca --data {D} --out {O}/pca.pt --components 0",
            "--components must be in [1, 48] for patch size 4, got 0",
        ),
        ("bench pretrain --batch-size -4", "--batch-size must be >= 1, got -4"),
        ("bench pretrain --batch-size 0", "--batch-size must be >= 1, got 0"),
        ("prepare-data --kind shapes --out {O}/d --n-train 0", "--n-train and --n-val must be >= 1, got 0"),
    ],
)
def test_cli_bad_inputs_are_one_named_line(data32, tmp_path, capsys, argv, message):
    from mae.cli import main as cli_main

    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"earlier": 1}')  # an earlier artifact: must survive byte-identical
    args = argv.format(D=data32, O=out).split()
    if args[0] in ("pretrain", "finetune", "linprobe", "knn", "partial-ft") or args[0].startswith("transfer-"):
        args += ["--device", "cpu"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message.format(D=data32) in err, err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert (out / "metrics.json").read_text() == '{"earlier": 1}'


def _variant(data32: Path, tmp_path: Path, name: str, labels=None, meta=None, n_train=None) -> Path:
    """A copy of ``data32`` with other labels / meta keys / a shorter train split."""
    import shutil

    import numpy as np

    out = tmp_path / name
    shutil.copytree(data32, out)
    for split, values in (labels or {}).items():
        array = np.load(out / f"{split}_labels.npy")
        array[: len(values)] = values
        np.save(out / f"{split}_labels.npy", array)
    if n_train is not None:
        for part in ("images", "labels"):
            np.save(out / f"train_{part}.npy", np.load(out / f"train_{part}.npy")[:n_train])
        info = json.loads((out / "meta.json").read_text())
        info["splits"]["train"] = n_train
        (out / "meta.json").write_text(json.dumps(info))
    if meta:
        (out / "meta.json").write_text(json.dumps({**json.loads((out / "meta.json").read_text()), **meta}))
    return out


@pytest.mark.parametrize("command", ["linprobe", "finetune", "knn"])
@pytest.mark.parametrize(
    "case, message",
    [
        (
            {"labels": {"train": [50]}},
            "train_labels.npy: label 50 is not a class index of this dataset (meta.json: num_classes 10",
        ),
        ({"labels": {"val": [-1]}}, "val_labels.npy: label -1 is not a class index"),
        ({"meta": {"num_classes": 1, "classes": ["only"]}}, "has 1 class(es); classification needs at least 2"),
    ],
)
def test_labels_that_are_not_class_indices_are_named(data32, tmp_path, capsys, command, case, message):
    from mae.cli import main as cli_main

    data = _variant(data32, tmp_path, "bad", **case)
    argv = [command, "--data", str(data), "--out", str(tmp_path / "o"), "--scratch", "--device", "cpu"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (finetune may print a note on RandAugment first)
    assert err.startswith("error: ") and message in err, err


def test_one_training_image_and_nan_weights_are_refused(data32, tmp_path, capsys):
    import torch

    from mae.cli import main as cli_main
    from mae.models import create_mae

    one = _variant(data32, tmp_path, "one", n_train=1)
    assert cli_main(["linprobe", "--data", str(one), "--out", str(tmp_path / "o"), "--scratch", "--device", "cpu"]) == 2
    assert "the training split has 1 image; training needs at least 2" in capsys.readouterr().err
    model = create_mae("mae_vit_micro_patch4")
    state = model.state_dict()
    state["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save({"model": state, "config": {"model": "mae_vit_micro_patch4"}}, bad)
    assert cli_main(["knn", "--data", str(data32), "--out", str(tmp_path / "k"), "--init", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "weight 'blocks.0.attn.qkv.weight' holds NaN or inf values" in err and str(bad) in err


def test_16_bit_images_keep_their_grey_levels(tmp_path):
    import numpy as np
    from PIL import Image

    from mae.data.adapters import load_image

    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    rgb = np.asarray(load_image(tmp_path / "g16.png"))
    assert rgb.dtype == np.uint8 and np.array_equal(rgb[..., 0], (ramp >> 8).astype(np.uint8))
    assert (rgb == 255).mean() < 0.01  # not clipped white


@pytest.mark.parametrize(
    "failure",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 12845376 vs 12845270"),
    ],
)
def test_a_failed_write_is_named_and_keeps_the_earlier_file(tmp_path, monkeypatch, failure):
    import torch

    from mae.utils.io import atomic_torch_save

    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the earlier checkpoint")

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"cannot write .*checkpoint\.pt: .*(No space left|failed writing|pos)") as err:
        atomic_torch_save({"model": {}}, target)
    assert "\n" not in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert target.read_bytes() == b"the earlier checkpoint"


def test_prepare_data_removes_the_temp_folder_of_a_run_that_died(tmp_path):
    from mae.data.prepare import prepare_builtin

    stale = tmp_path / ".shapes.k3j4h5g6.tmp"  # what a SIGBUS (full disk) or a kill leaves
    stale.mkdir()
    (stale / "train_images.npy").write_bytes(b"\0" * 1000)
    prepare_builtin(tmp_path / "shapes", "shapes", img_size=16, n_train=8, n_val=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def _prepared_copy(data32: Path, tmp_path: Path, change) -> Path:
    import shutil

    import numpy as np

    copy = tmp_path / "copy"
    shutil.copytree(data32, copy)
    change(copy, np)
    return copy


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d, np: np.save(d / "train_images.npy", np.load(d / "train_images.npy").astype("float32")),
            "train_images.npy: expected uint8 (N, H, W, 3), got float32",
        ),
        (
            lambda d, np: np.save(d / "train_labels.npy", np.load(d / "train_labels.npy")[:10]),
            "train has 32 images but 10 labels",
        ),
        (
            lambda d, np: np.save(d / "train_labels.npy", np.load(d / "train_labels.npy").astype("float64")),
            "train_labels.npy: expected integer (N,), got float64",
        ),
        (lambda d, np: (d / "train_images.npy").write_bytes(b"not an array"), "cannot read"),
    ],
)
def test_damaged_prepared_dataset_is_named(data32, tmp_path, capsys, change, message):
    from mae.cli import main as cli_main

    data = _prepared_copy(data32, tmp_path, change)
    out = tmp_path / "out"
    assert cli_main(["linprobe", "--data", str(data), "--out", str(out), "--scratch", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not out.exists()


def test_symlink_loop_as_dataset_root(tmp_path, capsys):
    from mae.cli import main as cli_main

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert (
        cli_main(["prepare-data", "--kind", "imagefolder", "--root", str(tmp_path / "a"), "--out", str(tmp_path / "m")])
        == 2
    )
    assert f"dataset root is a symlink loop: {tmp_path / 'a'}" in capsys.readouterr().err


def test_prepare_data_on_a_disk_that_fills_up_is_a_named_error(tmp_path, monkeypatch, capsys):
    """Another process fills the disk after the free-space check: an error line (no SIGBUS from a memory map),
    the earlier dataset intact and no temp folder left."""
    from mae.cli import main as cli_main
    from mae.data import prepare

    argv = [
        "prepare-data",
        "--kind",
        "shapes",
        "--out",
        str(tmp_path / "d"),
        "--img-size",
        "16",
        "--n-train",
        "1200",
        "--n-val",
        "8",
    ]
    assert cli_main(argv) == 0
    before = (tmp_path / "d" / "train_images.npy").read_bytes()
    enter = prepare._NpyWriter.__enter__

    class FillingFile:  # the second write finds the disk full
        def __init__(self, fh):
            self.fh, self.writes = fh, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 2:
                raise OSError(28, "No space left on device")
            return self.fh.write(data)

        def close(self):
            self.fh.close()

    def entered(self):
        enter(self)
        self.fh = FillingFile(self.fh)
        return self

    monkeypatch.setattr(prepare._NpyWriter, "__enter__", entered)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot write ") and "train_images.npy: No space left on device" in err, err
    assert (tmp_path / "d" / "train_images.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_prepare_data_refuses_when_the_disk_is_too_full(tmp_path, monkeypatch, capsys):
    import shutil

    from mae.cli import main as cli_main

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    assert cli_main(["prepare-data", "--kind", "shapes", "--out", str(tmp_path / "d"), "--n-train", "5000"]) == 2
    assert "not enough free space for" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_location_is_named(tmp_path, capsys):
    from mae.cli import main as cli_main

    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder is needed")
    assert (
        cli_main(["prepare-data", "--kind", "shapes", "--out", str(blocker / "d"), "--n-train", "8", "--n-val", "4"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(blocker) in err and "\n" not in err


@pytest.mark.parametrize("init", ["pca", "tokenizer", "settings"])
def test_init_from_a_file_that_is_no_encoder_checkpoint(data32, tmp_path, capsys, init):
    import torch

    from mae.cli import main as cli_main

    path = tmp_path / f"{init}.pt"
    if init == "settings":
        path.write_text('{"not": "a checkpoint"}')
    else:  # a torch file of another kind (a fitted target)
        torch.save({"kind": init, "components": torch.zeros(4, 48)}, path)
    assert (
        cli_main(
            ["finetune", "--data", str(data32), "--out", str(tmp_path / "o"), "--init", str(path), "--device", "cpu"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(path) in err and "\n" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            "pretrain_dataset: imagenet\n",
            "study config 'pretrain_dataset': dataset 'imagenet' is not under 'datasets:'",
        ),
        ("transfer_cls: {datasets: [cifar]}\n", "study config 'transfer_cls.datasets': dataset 'cifar' is not under"),
        ("base:\n  epochs: 1\n  epochs: 2\n", "key 'epochs' appears twice in one mapping (line 3)"),
    ],
)
def test_dry_run_names_a_missing_dataset_or_a_repeated_key(tmp_path, extra, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(extra)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "config/smoke.yaml", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert "KeyError" not in proc.stdout + proc.stderr
