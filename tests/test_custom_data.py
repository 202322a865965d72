"""Your own images (config/custom.yaml, docs/own-data.md): a folder with class folders runs the study with every
evaluation on a seeded split; a folder without them runs pretraining and reconstructions, and the summary and
tables say `not run (no labels)`; a bad folder is one line naming it. The images are real JPEG and PNG files of
mixed sizes and modes, written here with PIL."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mae.cli import main as cli
from mae.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
STUDY = ["--configfile", "config/smoke.yaml", "config/custom.yaml"]
#: PIL mode -> the formats it is written in (JPEG has no alpha or palette, PNG no CMYK)
MODES = {
    "RGB": (".jpg", ".png"),
    "L": (".jpeg", ".png"),
    "RGBA": (".png",),
    "P": (".PNG",),
    "CMYK": (".JPG",),
    "LA": (".png",),
}
CLASSES = ("ant", "bee", "cat", "dog")
PER_CLASS = 25  # 100 images: 80 to train on, one batch of the smoke study's 64


def write_images(folder: Path, n: int, seed: int, colour=None) -> list[Path]:
    """``n`` decodable images, each of its own size (11-90 px a side), mode and format in turn; a class has its
    own colour (a gradient with noise), so that its images have something in common."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    colour = rng.integers(40, 256, 3) if colour is None else np.asarray(colour)
    written = []
    for k in range(n):
        w, h = (int(v) for v in rng.integers(11, 91, 2))
        ramp = np.linspace(0.3, 1.0, w)[None, :, None] * np.linspace(0.6, 1.0, h)[:, None, None]
        pixels = np.clip(colour * ramp + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        mode = list(MODES)[k % len(MODES)]
        image = Image.fromarray(pixels, "RGB")
        image = image.quantize(32) if mode == "P" else image.convert(mode)
        formats = MODES[mode]
        path = folder / f"{seed:02d}_{k:03d}{formats[(k // len(MODES)) % len(formats)]}"
        image.save(path)
        written.append(path)
    return written


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """DIR/<class>/*: four classes of 25 images, plus files that are never read (hidden, not images)."""
    root = tmp_path_factory.mktemp("own") / "labelled photos"  # a space in the path
    for i, name in enumerate(CLASSES):
        write_images(root / name, PER_CLASS, seed=i, colour=np.roll([250, 120, 40], i) if i < 3 else None)
    (root / ".DS_Store").write_bytes(b"\0\1 not an image")
    (root / CLASSES[0] / "._00_000.jpg").write_bytes(b"AppleDouble, not an image")  # macOS leaves these
    (root / CLASSES[1] / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    """A folder of 100 images without class folders (10 of them one folder down)."""
    root = tmp_path_factory.mktemp("own") / "unlabelled"
    write_images(root, 90, seed=7)
    write_images(root / "more", 10, seed=8)
    return root


def prepare(root: Path, out: Path, *flags: str) -> dict:
    assert (
        cli(
            [
                "prepare-data",
                "--kind",
                "imagefolder",
                "--root",
                str(root),
                "--out",
                str(out),
                "--img-size",
                "32",
                *flags,
            ]
        )
        == 0
    )
    return json.loads((out / "meta.json").read_text())


def val_files(out: Path) -> set[str]:
    from mae.data.adapters import imagefolder_samples

    meta = json.loads((out / "meta.json").read_text())
    return {p for p, _ in imagefolder_samples(Path(meta["root"]), "val", meta["classes"], meta["val_split"])}


# ------------------------------------------------------------------------------------------------- data
def test_class_folders_get_a_seeded_split_of_each_class(labelled, tmp_path):
    from mae.data import build_dataset
    from mae.data.transforms import eval_transform

    meta = prepare(labelled, tmp_path / "a", "--verify")
    assert meta["labelled"] and meta["classes"] == list(CLASSES) and meta["num_classes"] == 4
    assert meta["splits"] == {"train": 80, "val": 20} and meta["val_split"] == {"fraction": 0.2, "seed": 0}
    train = build_dataset(tmp_path / "a", "train", eval_transform(32))
    val = build_dataset(tmp_path / "a", "val", eval_transform(32))
    assert np.bincount(train.targets).tolist() == [20] * 4 and np.bincount(val.targets).tolist() == [5] * 4
    paths = [p for p, _ in train.samples + val.samples]
    assert len(set(paths)) == 100 and not [p for p in paths if Path(p).name.startswith(".") or p.endswith(".txt")]
    for path, label in train.samples:  # the class is the folder
        assert Path(path).parent.name == CLASSES[label]
    # every file decodes, whatever its mode and size, into the same normalised RGB tensor shape
    images = [val[i][0] for i in range(len(val))]
    assert all(x.shape == (3, 32, 32) and x.dtype.is_floating_point for x in images)
    assert {Path(p).suffix for p in paths} == {".jpg", ".png", ".jpeg", ".PNG", ".JPG"}
    # the split depends on the files and the seed only: the same again, another one for another seed
    assert prepare(labelled, tmp_path / "b")["splits"] == meta["splits"]
    assert val_files(tmp_path / "b") == val_files(tmp_path / "a")
    prepare(labelled, tmp_path / "c", "--seed", "1", "--val-fraction", "0.4")
    other = val_files(tmp_path / "c")
    assert len(other) == 40 and other != val_files(tmp_path / "a")


def test_a_folder_without_class_folders_has_no_labels(unlabelled, tmp_path, capsys):
    from mae.data import build_dataset

    meta = prepare(unlabelled, tmp_path / "u")
    assert not meta["labelled"] and meta["classes"] == [] and meta["num_classes"] == 0
    assert meta["splits"] == {"train": 80, "val": 20}  # the images one folder down too
    assert "no labels" in capsys.readouterr().out
    train = build_dataset(tmp_path / "u", "train")
    assert set(train.targets.tolist()) == {-1} and train[0][0].shape[0] == 3
    # an evaluation that needs labels refuses the dataset in one line
    assert (
        cli(
            [
                "linprobe",
                "--data",
                str(tmp_path / "u"),
                "--out",
                str(tmp_path / "lp"),
                "--scratch",
                "--set",
                "model=mae_vit_micro_patch4",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "0 class(es)" in err and "\n" not in err


def test_layouts_a_given_split_unlabelled_splits_and_class_folders_read_as_images(tmp_path):
    from mae.data import build_dataset

    given = tmp_path / "given"
    for split, n in (("train", 4), ("val", 2)):
        for i, name in enumerate(("x", "y")):
            write_images(given / split / name, n, seed=10 * i + n)
    meta = prepare(given, tmp_path / "g")
    assert meta["val_split"] is None and meta["splits"] == {"train": 8, "val": 4} and meta["classes"] == ["x", "y"]
    flat_given = tmp_path / "flat_given"
    write_images(flat_given / "train", 5, seed=1)
    write_images(flat_given / "val", 3, seed=2)
    meta = prepare(flat_given, tmp_path / "fg")
    assert not meta["labelled"] and meta["val_split"] is None and meta["splits"] == {"train": 5, "val": 3}
    meta = prepare(given / "train", tmp_path / "asis", "--unlabelled")  # class folders read as plain images
    assert not meta["labelled"] and sum(meta["splits"].values()) == 8
    assert set(build_dataset(tmp_path / "asis", "val").targets.tolist()) == {-1}


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "error: no images (.jpg, .jpeg, .png"),
        ("half split", "has a train/ folder but no val/ folder"),
        ("images beside class folders", "and images beside them"),
        ("empty class folder", "error: empty class folder (no images)"),
        ("one image", "too few images"),
        ("truncated", "cannot decode image"),
        ("missing", "not found"),
    ],
)
def test_a_bad_folder_is_one_line_naming_it(tmp_path, capsys, case, message):
    root = tmp_path / "photos"
    root.mkdir()
    named = root
    if case == "half split":
        write_images(root / "train" / "a", 2, seed=0)
    elif case in ("images beside class folders", "empty class folder"):
        write_images(root / "a", 3, seed=0)
        write_images(root / "b", 3, seed=1)
        if case == "empty class folder":
            (root / "c").mkdir()
            named = root / "c"
        else:
            named = write_images(root, 1, seed=2)[0]
    elif case == "one image":
        write_images(root, 1, seed=0)
    elif case == "truncated":
        files = write_images(root, 6, seed=0)
        named = files[2]
        named.write_bytes(named.read_bytes()[: len(named.read_bytes()) // 2])
    elif case == "missing":
        named = root / "nothing here"
    out = tmp_path / "prepared"
    assert (
        cli(
            [
                "prepare-data",
                "--kind",
                "imagefolder",
                "--root",
                str(named if case == "missing" else root),
                "--out",
                str(out),
                "--verify",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().split("\r")[-1]  # after the cleared progress bar of --verify
    assert err.startswith("error: ") and message in err and str(named) in err and "\n" not in err, err
    assert not out.exists()  # nothing half-written


def test_an_unreadable_image_that_was_not_verified_is_named_when_it_is_read(tmp_path):
    from mae.data import build_dataset

    files = write_images(tmp_path / "photos", 10, seed=0)
    files[0].write_bytes(b"\xff\xd8 a JPEG that ends here")
    prepare(tmp_path / "photos", tmp_path / "p")  # no --verify: the file is read when training reads it
    broken = str(files[0].resolve())
    datasets = [build_dataset(tmp_path / "p", split) for split in ("train", "val")]
    ds = next(d for d in datasets if broken in [p for p, _ in d.samples])
    with pytest.raises(UserError, match=f"cannot decode image {broken}") as err:
        ds[[p for p, _ in ds.samples].index(broken)]
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------- plan
def study_config(data_root: Path, *overlays: str) -> dict:
    """The config Snakemake runs with `--configfile overlays... --config data_root=...`."""
    from snakemake.utils import update_config

    from mae.study import use_data_root

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for overlay in overlays:
        update_config(config, yaml.safe_load((ROOT / "config" / overlay).read_text()))
    config["data_root"] = str(data_root)
    use_data_root(config)
    return config


def test_the_plan_of_a_folder_without_labels(labelled, unlabelled):
    from mae.study import baseline_runs, evaluation_folders, not_run, study_plan, unrunnable_evaluations

    config = study_config(unlabelled, "custom.yaml")
    assert config["datasets"]["custom"]["root"] == str(unlabelled)
    skip = unrunnable_evaluations(config)
    assert skip == {ev: "no labels" for ev in ("linprobe", "finetune", "knn", "partial_ft")}
    assert evaluation_folders(config, skip) == []  # every evaluation of config/custom.yaml needs labels
    missing = not_run(config)
    assert ("base", "knn", "no labels") in missing and ("base", "partial_ft-0", "no labels") in missing
    assert ("scratch", "finetune", "no labels") in missing
    assert {run for run, _, _ in missing} == {*study_plan(config)["runs"], *baseline_runs(config)}
    assert study_plan(config)["not_run"][0] == {"run": "base", "folder": "linprobe", "why": "no labels"}
    # with the smoke study's transfers: they run (on their own data), but not the supervised baseline's, which
    # transfers a fine-tune on the pretraining data's labels
    smoke = study_config(unlabelled, "smoke.yaml", "custom.yaml")
    smoke["evaluations"] = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["evaluations"]
    smoke["transfer_det"] = {**smoke["transfer_det"], "dataset": "shapes"}
    planned = evaluation_folders(smoke, unrunnable_evaluations(smoke))
    assert {("base", "transfer_det", "transfer_det"), ("scratch", "transfer_det", "transfer_det")} <= set(planned)
    assert ("supervised", "transfer_det", "no labels") in not_run(smoke)
    # with labels: nothing is left out, and the plan is what it was before this feature
    labelled_config = study_config(labelled, "custom.yaml")
    assert unrunnable_evaluations(labelled_config) == {} and not_run(labelled_config) == []
    assert "not_run" not in study_plan(labelled_config)
    labelled_config["datasets"]["custom"]["unlabelled"] = True  # class folders read as plain images
    assert set(unrunnable_evaluations(labelled_config)) == set(skip)
    from mae.study import cli_flags

    assert "--unlabelled" in cli_flags(labelled_config["datasets"]["custom"])  # what prepare_data is given


def dry_run(*args: str, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, "-n", "--quiet", "rules", "--cores", "2", *STUDY, "--config", f"results={results}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def jobs(output: str) -> dict[str, int]:
    lines = (line.split() for line in output.splitlines())
    return {w[0]: int(w[1]) for w in lines if len(w) == 2 and w[1].isdigit()}


def test_dry_runs_plan_every_evaluation_with_labels_and_pretraining_only_without(labelled, unlabelled, tmp_path):
    with_labels = dry_run(f"data_root={labelled}", results=tmp_path / "a")
    assert with_labels.returncode == 0, with_labels.stderr
    counts = jobs(with_labels.stdout + with_labels.stderr)
    assert counts["pretrain"] == 9 and counts["linprobe"] == counts["finetune"] == 10  # + random init
    assert counts["knn"] == counts["partial_ft"] == counts["partial_ft_linear"] == 1 and "transfer_det" not in counts
    without = dry_run(f"data_root={unlabelled}", results=tmp_path / "b")
    assert without.returncode == 0, without.stderr
    counts = jobs(without.stdout + without.stderr)
    assert counts["pretrain"] == 9 and counts["prepare_data"] == 1 and counts["figures"] == 1
    assert not {"linprobe", "finetune", "knn", "partial_ft", "partial_ft_linear"} & set(counts)


@pytest.mark.parametrize(
    "config, message",
    [
        (
            (),
            "study config 'pretrain_dataset': dataset 'custom' (kind imagefolder) has no folder: give --config "
            "data_root=/path/to/images",
        ),
        (("data_root=/no/such/folder",), "data_root: folder not found: /no/such/folder"),
        (("data_root={empty}",), "no images (.jpg, .jpeg, .png"),
        (
            ("data_root={empty}", "pretrain_dataset=shapes"),
            "data_root: the pretraining dataset 'shapes' is of kind shapes",
        ),
    ],
)
def test_a_bad_data_root_fails_the_dry_run_in_one_line(tmp_path, config, message):
    (tmp_path / "empty").mkdir()
    proc = dry_run(*(c.format(empty=tmp_path / "empty") for c in config), results=tmp_path / "r")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in out, out[-2000:]
    line = next(line for line in out.splitlines() if message in line)
    assert "Traceback" not in out and "KeyError" not in out and len(line) < 300


# --------------------------------------------------------------------------------------- summary, tables
def test_summary_and_tables_say_not_run_no_labels(unlabelled, tmp_path):
    """The report of a study without labels, from its plan and pretraining metrics alone (no training here)."""
    from mae.study import write_plan

    config = study_config(unlabelled, "smoke.yaml", "custom.yaml")
    write_plan(config, tmp_path / "study.json")
    plan = json.loads((tmp_path / "study.json").read_text())
    for i, (run, entry) in enumerate(plan["runs"].items()):
        (tmp_path / "runs" / run / "pretrain").mkdir(parents=True)
        (tmp_path / "runs" / run / "settings.json").write_text(json.dumps(entry["settings"]))
        (tmp_path / "runs" / run / "pretrain" / "metrics.json").write_text(
            json.dumps({"train_loss": 1.0 + i / 10, "img_s": 100.0 + i, "wall_s": 5.0, "epochs": 1})
        )
    summary = tmp_path / "summary" / "runs.csv"
    assert (
        cli(
            [
                "summarize",
                "--runs",
                str(tmp_path / "runs"),
                "--study",
                str(tmp_path / "study.json"),
                "--out",
                str(summary),
            ]
        )
        == 0
    )
    import pandas as pd

    rows = pd.read_csv(summary)
    assert list(rows.columns).index("status") == list(rows.columns).index("tables") + 1
    status = rows[rows["status"].notna()]
    assert len(status) == len(plan["not_run"]) and set(status["status"]) == {"not run (no labels)"}
    assert status["top1"].isna().all() and status["seeds"].isna().all()
    assert set(status["eval"]) == {"linprobe", "finetune", "knn", "partial_ft"}
    assert (
        len(rows[rows["eval"] == "pretrain"]) == len(plan["runs"])
        and rows.loc[rows["eval"] == "pretrain", "status"].isna().all()
    )
    assert cli(["tables", "--summary", str(summary), "--out", str(tmp_path / "tables")]) == 0
    t1a = pd.read_csv(tmp_path / "tables" / "table1a_decoder_depth.csv")
    ours = t1a[t1a["decoder depth"].notna()]
    assert len(ours) == 2 and set(ours["note"]) == {"not run (no labels)"}  # depths 1 and 2 were pretrained
    assert ours["ft top-1 ours"].isna().all()
    t3 = pd.read_csv(tmp_path / "tables" / "table3_scratch_vs_mae.csv")
    assert set(t3.loc[t3["init"].notna(), "note"]) == {"not run (no labels)"}
    md = (tmp_path / "tables" / "table1a_decoder_depth.md").read_text()
    assert "Not run (no labels): ft top-1 (finetune), lin top-1 (linprobe)." in md and "No results of ours" not in md
    assert cli(["claims", "--summary", str(summary), "--out", str(tmp_path / "claims")]) == 0


# ------------------------------------------------------------------------------------------------- study
def run_study(tmp_path: Path, data_root: Path) -> Path:
    work = tmp_path / "study"
    shutil.copytree(
        ROOT,
        work,
        ignore=shutil.ignore_patterns(".venv", ".git", "results", ".snakemake", "logs", "benchmarks", "__pycache__"),
    )
    proc = subprocess.run(
        [*SNAKEMAKE, "--cores", "2", *STUDY, "--config", f"data_root={data_root}"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work / "results" / "custom"  # config/custom.yaml: beside the default study's results


@pytest.mark.slow
def test_the_smoke_study_on_a_folder_with_class_folders(labelled, tmp_path):
    results = run_study(tmp_path, labelled)
    meta = json.loads((results / "data/custom/meta.json").read_text())
    assert meta["root"] == str(labelled) and meta["splits"] == {"train": 80, "val": 20}
    rows = (results / "summary/runs.csv").read_text()
    assert "not run" not in rows and "status" not in rows.splitlines()[0]
    for folder in (
        "base/linprobe",
        "base/finetune",
        "base/knn",
        "base/partial_ft-1",
        "scratch/finetune",
        "scratch/linprobe",
        "decoder_depth-2/linprobe",
    ):
        metrics = json.loads((results / "runs" / folder / "metrics.json").read_text())
        assert 0 <= metrics["top1"] <= 100 and metrics["n_val"] == 20, folder
    table = (results / "tables/table1a_decoder_depth.md").read_text()
    assert "not run (no labels)" not in table and "No results of ours" not in table
    for figure in ("fig_reconstructions", "fig9_partial_ft", "fig5_masking_ratio"):
        assert (results / f"figures/{figure}.png").is_file(), figure


@pytest.mark.slow
def test_the_smoke_study_on_a_folder_without_labels(unlabelled, tmp_path):
    results = run_study(tmp_path, unlabelled)
    plan = json.loads((results / "summary/study.json").read_text())
    runs = sorted(p.name for p in (results / "runs").iterdir())
    assert runs == sorted(plan["runs"])  # pretraining runs only: no scratch baseline
    assert {p.name for p in (results / "runs").glob("*/*") if p.is_dir()} == {"pretrain"}
    import pandas as pd

    rows = pd.read_csv(results / "summary/runs.csv")
    assert set(rows.loc[rows["status"].isna(), "eval"]) == {"pretrain"}
    assert (rows["status"] == "not run (no labels)").sum() == len(plan["not_run"]) > 0
    tables = (results / "tables/tables.md").read_text()
    assert tables.count("| not run (no labels) |") >= 2 + 2  # Table 1a's two depths, Table 3's two inits, ...
    figures = json.loads((results / "figures/figures.json").read_text())
    assert {"fig_reconstructions", "fig_mask_sampling", "fig_loss_curves"} <= set(figures["written"])
    assert (results / "figures/fig_reconstructions.png").stat().st_size > 10_000
