"""DVC versions the study (dvc.yaml, dvc.lock, docs/dvc.md).

The structure test reads dvc.yaml/dvc.lock; the round trip runs DVC in a temporary git repository made of this
checkout's files: push -> fresh clone -> pull -> `dvc repro` has nothing to do, and the tables rebuilt there are
byte-identical. No study runs: the study's datasets/runs are small stand-in files recorded with `dvc commit`.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DVC = [sys.executable, "-m", "dvc"]
STUDY_CACHED = ["results/data", "results/runs", ".snakemake/metadata"]  # DVC cache + remote
SUMMARY = [
    f"results/summary/{name}"
    for name in ("runs.csv", "replicates.npz", "metrics.json", "loss_curves.csv", "study.json")
]
REPORT = {"tables": "results/tables", "claims": "results/claims", "figures": "results/summary_figures"}
# what the DVC stages read or write, copied into the temporary repository
NEEDED = [
    "dvc.yaml",
    "dvc.lock",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvcignore",
    ".gitignore",
    "Snakefile",
    "workflow",
    "config/config.yaml",
    "mae",
    *SUMMARY,
    *REPORT.values(),
]
STALE_HINT = (
    "the committed dvc.lock does not match the committed report: run `dvc repro --single-item tables claims figures` "
    "and commit dvc.lock results/tables results/claims results/summary_figures"
)


def outs(stage: dict) -> dict:
    """{path: options} of a dvc.yaml stage."""
    found = {}
    for out in stage.get("outs", []):
        path, opts = next(iter(out.items())) if isinstance(out, dict) else (out, {})
        found[path] = opts or {}
    return found


def test_dvc_yaml_versions_the_study(repo_root):
    spec = yaml.safe_load((repo_root / "dvc.yaml").read_text())
    lock = yaml.safe_load((repo_root / "dvc.lock").read_text())
    study = spec["stages"]["study"]
    assert study["cmd"].startswith("snakemake ")
    # every key of the config Snakemake reads is a param (`dvc exp run -S config/config.yaml:base.epochs=8`)
    assert study["params"] == [{"config/config.yaml": None}]
    assert {"Snakefile", "workflow"} <= set(study["deps"])
    study_outs = outs(study)
    for path in STUDY_CACHED:  # cached, pushed, and never deleted by DVC before Snakemake runs
        assert study_outs[path].get("persist") is True and study_outs[path].get("cache", True), path
    for path in SUMMARY:  # in git (readable on GitHub), hashed in dvc.lock
        assert study_outs[path] == {"cache": False, "persist": True}, path
    # the only cached outputs of the pipeline are Snakemake's, and DVC never deletes those
    for name, stage in spec["stages"].items():
        for path, opts in outs(stage).items():
            assert opts.get("cache") is False or opts.get("persist") is True, (name, path)
    for name, out in REPORT.items():
        stage = spec["stages"][name]
        assert outs(stage) == {out: {"cache": False}}
        assert {"results/summary/runs.csv", "results/summary/replicates.npz"} <= set(stage["deps"])  # after study
    # committed: every stage recorded with its current command; the study's parameters are in the lock
    assert set(lock["stages"]) == set(spec["stages"])
    for name, stage in spec["stages"].items():
        assert lock["stages"][name]["cmd"] == stage["cmd"], name
    assert "base" in lock["stages"]["study"]["params"]["config/config.yaml"]
    assert spec["metrics"] == ["results/summary/metrics.json"]
    # outputs are not hidden from DVC, and the cache: false ones are not hidden from git
    dvcignore = (repo_root / ".dvcignore").read_text().splitlines()
    assert not {"results/", "results/data/", "results/runs/", ".snakemake/"} & set(dvcignore)
    assert "!.snakemake/metadata" in dvcignore and ".snakemake_timestamp" in dvcignore  # Snakemake's markers
    config = (repo_root / ".dvc/config").read_text()
    assert "remote = local" in config and "url = ~/mae-study-dvc-storage" in config


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def dvc_json(args: list[str], cwd: Path, env: dict):
    return json.loads(run([*DVC, *args, "--json"], cwd, env))


def tree(root: Path) -> dict:
    """{relative path: md5} of every file under root."""
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_origin(repo_root: Path, origin: Path) -> None:
    for rel in NEEDED:
        src, dst = repo_root / rel, origin / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    # stand-ins for the study's artifacts (a real study takes minutes; DVC hashes bytes, whatever they are)
    for rel, text in {
        "results/data/shapes/meta.json": '{"kind": "shapes"}',
        "results/runs/base/pretrain/checkpoint.pt": "weights",
        "results/runs/base/pretrain/metrics.json": '{"loss": 0.5}',
        ".snakemake/metadata/cmVzdWx0cy9kYXRhL3NoYXBlcw==": '{"rule": "prepare_data"}',
    }.items():
        (origin / rel).parent.mkdir(parents=True, exist_ok=True)
        (origin / rel).write_text(text)


@pytest.mark.slow
def test_push_clone_pull_repro_is_a_noop(repo_root, tmp_path):
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    origin, clone, storage = tmp_path / "origin", tmp_path / "clone", tmp_path / "storage"
    make_origin(repo_root, origin)
    run(["git", "init", "-q"], origin, env)
    run(["git", "add", "-A"], origin, env)
    run(["git", "commit", "-qm", "study"], origin, env)

    # the committed lock matches the committed summary and report; only the stand-ins differ from the study's
    status = dvc_json(["status"], origin, env)
    assert set(status) <= {"study"}, f"{STALE_HINT}: {status}"
    run([*DVC, "commit", "-f", "study"], origin, env)
    assert dvc_json(["status"], origin, env) == {}
    run(["git", "commit", "-qam", "dvc commit"], origin, env)
    run([*DVC, "remote", "modify", "--local", "local", "url", str(storage)], origin, env)  # never ~ in a test
    run([*DVC, "push"], origin, env)

    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    run([*DVC, "remote", "modify", "--local", "local", "url", str(storage)], clone, env)
    assert set(dvc_json(["status"], clone, env)) == {"study"}  # datasets, runs, metadata: not pulled yet
    run([*DVC, "pull"], clone, env)
    for rel in STUDY_CACHED:
        assert tree(clone / rel) == tree(origin / rel), rel
    assert dvc_json(["status"], clone, env) == {}
    repro = run([*DVC, "repro"], clone, env)
    assert "Running stage" not in repro and "Data and pipelines are up to date" in repro, repro
    # the report rebuilt from the pulled summary is byte-identical and leaves dvc.lock as it was
    committed = tree(clone / "results/tables")
    run([*DVC, "repro", "--force", "--single-item", "tables"], clone, env)
    assert tree(clone / "results/tables") == committed
    assert dvc_json(["status"], clone, env) == {}
    assert run(["git", "status", "--porcelain"], clone, env) == ""

    metrics = dvc_json(["metrics", "show"], clone, env)
    shown = metrics[""]["data"]["results/summary/metrics.json"]["data"]
    assert shown == json.loads((clone / "results/summary/metrics.json").read_text())
    plots = dvc_json(["plots", "show"], clone, env)
    assert not plots.get("errors"), plots["errors"]
    assert {"pretrain_loss", "results/summary_figures/fig5_masking_ratio.png"} <= set(plots["data"])
    assert dvc_json(["params", "diff"], clone, env) == {}

    # a changed study parameter is a params diff and makes the study stage (and so everything after it) stale
    path = clone / "config/config.yaml"
    config = yaml.safe_load(path.read_text())
    epochs = config["base"]["epochs"]
    config["base"]["epochs"] = epochs + 1
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    diff = dvc_json(["params", "diff"], clone, env)["config/config.yaml"]
    assert set(diff) == {"base.epochs"} and (diff["base.epochs"]["old"], diff["base.epochs"]["new"]) == (
        epochs,
        epochs + 1,
    )
    assert set(dvc_json(["status"], clone, env)) == {"study"}
