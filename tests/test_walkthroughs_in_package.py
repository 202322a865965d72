"""The two walkthroughs of docs/ARCHITECTURE.md done inside the package, in a copy of the repository: the toy
plug-in's `checker` sampler and `ncm` evaluation (tests/fixtures/plugin) moved into `mae/`, touching exactly the
files the walkthroughs list, reach the CLI, the planner and the `mae` processes a study starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "fixtures" / "plugin" / "toy_mae_plugin"
MAE = [sys.executable, "-m", "mae"]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: the walkthrough's anchor {old!r} is not there once"
    path.write_text(text.replace(old, new))


def add_sampler(root: Path) -> None:
    """Walkthrough "Add a mask sampler", inside the package: the class in masking.py, its name in choices.py."""
    source = (PLUGIN / "samplers.py").read_text()
    body = source[source.index("class CheckerSampler") :]
    with open(root / "mae/models/masking.py", "a") as fh:
        fh.write("\n\n" + body)
    edit(
        root / "mae/registry/choices.py",
        '"grid": M + "GridSampler"}',
        '"grid": M + "GridSampler", "checker": M + "CheckerSampler"}',
    )


def add_evaluation(root: Path) -> None:
    """Walkthrough "Add an evaluation", inside the package: settings, stage, registry entry (and its docs row)."""
    declared = (PLUGIN / "__init__.py").read_text()
    settings = declared[declared.index("@dataclass") : declared.index("EVALUATION =")]
    with open(root / "mae/stage_configs.py", "a") as fh:
        fh.write("\n\n" + settings.rstrip() + "\n")
    stage = (PLUGIN / "ncm.py").read_text().replace("from toy_mae_plugin import", "from mae.stage_configs import")
    (root / "mae/stages/ncm.py").write_text(stage)
    entry = '    Evaluation("ncm", "mae.stages.ncm", "nearest class mean", SC + "NcmConfig", runtime=10),\n'
    edit(root / "mae/registry/evaluations.py", "\n)\n#: entry-point group", "\n" + entry + ")\n#: entry-point group")


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("in_package") / "repo"
    for name in ("mae", "workflow", "config", "docs", "Snakefile", "pyproject.toml"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(
            REPO / name,
            root / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    add_sampler(root)
    add_evaluation(root)
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy, not the checkout installed in the environment
    return root, env


def changed_files(root: Path) -> set[str]:
    return {
        str(path.relative_to(root))
        for path in (root / "mae").rglob("*.py")
        if not (REPO / path.relative_to(root)).is_file()
        or (REPO / path.relative_to(root)).read_bytes() != path.read_bytes()
    }


def run(args, env, cwd, **kw):
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_the_walkthroughs_touch_the_files_they_list(repo_copy):
    root, _ = repo_copy
    assert changed_files(root) == {
        "mae/models/masking.py",
        "mae/registry/choices.py",
        "mae/stage_configs.py",
        "mae/stages/ncm.py",
        "mae/registry/evaluations.py",
    }
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    for name in ("mae/models/masking.py", "mae/registry/choices.py", "mae/stage_configs.py", "mae/stages/mine.py"):
        assert f"`{name}`" in text, name


def test_in_package_sampler_and_evaluation_train_and_plan(repo_copy, tmp_path):
    root, env = repo_copy
    where = run([sys.executable, "-c", "import mae; print(mae.__file__)"], env, root).stdout
    assert where.strip() == str(root / "mae" / "__init__.py")
    assert "ncm" in run([*MAE, "--help"], env, root).stdout
    data, out = tmp_path / "data", tmp_path / "run"
    run([*MAE, "prepare-data", "--kind", "shapes", "--out", str(data), "--n-train", "64", "--n-val", "32"], env, root)
    sets = ["model=mae_vit_micro_patch4", "sampling=checker", "epochs=1", "batch_size=32", "mask_ratio=0.5"]
    pretrain = [*MAE, "pretrain", "--data", str(data), "--out", str(out / "pretrain"), "--device", "cpu"]
    run(pretrain + [a for s in sets for a in ("--set", s)], env, root)
    assert json.loads((out / "settings.json").read_text())["sampling"] == "checker"
    init = str(out / "pretrain" / "checkpoint.pt")
    run([*MAE, "ncm", "--data", str(data), "--out", str(out / "ncm"), "--init", init, "--device", "cpu"], env, root)
    assert json.loads((out / "ncm" / "metrics.json").read_text())["n_val"] == 32

    study = {
        "ablations": {"1f": [{"sampling": "random", "mask_ratio": 0.75}, {"sampling": "checker", "mask_ratio": 0.5}]},
        "evaluations": {"every_run": ["linprobe"], "base_run": ["ncm"], "scratch": []},
        "ncm": {"global_pool": "token"},
    }
    configfile = tmp_path / "study.yaml"
    configfile.write_text(yaml.safe_dump(study))
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "2", "--configfile", "config/smoke.yaml"]
    plan = run([*cmd, str(configfile), "--config", f"results={tmp_path / 'results'}"], env, root).stdout
    assert any(" mae ncm " in line and "--set global_pool=" in line for line in plan.splitlines())
    assert "sampling-checker/pretrain" in plan


def test_the_architecture_page_must_gain_the_new_stage(repo_copy):
    """The walkthrough's last step is enforced: the docs' table checks name the new command and stage."""
    root, env = repo_copy
    code = (
        "import sys, mae; sys.path.insert(1, sys.argv[1]); from tests import test_docs_site as T; "
        "text = open(sys.argv[2]).read(); print(T.command_table_problems(text)); print(T.stage_table_problems(text))"
    )
    out = run([sys.executable, "-c", code, str(REPO), str(root / "docs/ARCHITECTURE.md")], env, root).stdout
    commands, stages = out.splitlines()
    assert commands == "['missing from the table: ncm']"
    assert stages.startswith('["stages [') and stages.endswith("'transfer_cls', 'ncm']\"]")
