"""The `mae` command line (--version, settings in --help, `mae bench`) and the packaging metadata."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import subprocess
import sys

import pytest

import mae
from mae import cli
from mae.config import PretrainConfig
from mae.registry.evaluations import EVALUATIONS
from tests.conftest import REPO


def _run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    return stop.value.code, capsys.readouterr().out


def test_version(capsys):
    code, out = _run(["--version"], capsys)
    try:
        expected = importlib.metadata.version("mae-study")
    except importlib.metadata.PackageNotFoundError:
        expected = mae.__version__
    assert code == 0 and out.strip() == f"mae {expected}" == f"mae {cli.version()}"


def test_version_falls_back_to_the_package(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert cli.version() == mae.__version__


def _settings_rows(help_text: str) -> dict[str, tuple[str, str]]:
    """key -> (default, type) from the settings block of a command's --help."""
    block = help_text.split("settings (", 1)[1].splitlines()[1:]
    rows = {}
    for line in block:
        if line.startswith("  "):  # columns: two or more spaces apart
            key, default, kind = re.split(r" {2,}", line.strip())
            rows[key] = (default, kind)
    return rows


@pytest.mark.parametrize("command", list(cli.SETTINGS))
def test_help_lists_every_setting_with_its_default(command, capsys):
    code, out = _run([command, "--help"], capsys)
    assert code == 0 and "--set KEY=VALUE" in out
    spec = cli.SETTINGS[command]
    cls = (
        PretrainConfig
        if command == "pretrain"
        else next(ev for ev in EVALUATIONS.values() if ev.command == command).config_class()
    )
    assert f"settings ({cls.__name__})" in out
    rows = _settings_rows(out)
    assert list(rows) == [f.name for f in dataclasses.fields(cls)], spec
    defaults = cls()
    for key, (default, _) in rows.items():
        assert default == cli._yaml_value(getattr(defaults, key))


def test_help_defaults_and_types_read_as_yaml(capsys):
    _, out = _run(["pretrain", "--help"], capsys)
    rows = _settings_rows(out)
    assert rows["mask_ratio"] == ("0.75", "float")
    assert rows["betas"] == ("[0.9, 0.95]", "[float, float]")
    assert rows["lr"] == ("null", "float or null") and rows["compile"] == ("false", "bool")
    assert rows["amp"] == ("auto", "auto|bf16|fp16|none")
    _, out = _run(["summarize", "--help"], capsys)  # a command without settings has no block
    assert "settings (" not in out


def test_bench_is_a_subcommand(capsys):
    code, out = _run(["--help"], capsys)
    assert code == 0 and "bench" in out and "visualize" in out
    code, out = _run(["bench", "pretrain", "--help"], capsys)
    assert code == 0 and "--preset" in out and "cpu-tiny" in out
    assert cli.main(["bench", "pretrain", "--windows", "2"]) == 2  # the bench's own checks, one line
    assert "error: --windows must be >= 5, got 2" in capsys.readouterr().err
    run = subprocess.run(
        [sys.executable, "-m", "mae.tools.bench", "pretrain", "--windows", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and run.stderr.strip() == "error: --windows must be >= 5, got 2"


# --------------------------------------------------------------------------------------------- packaging
def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_license_file_matches_pyproject():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_dependency_floors_admit_the_tested_versions():
    """Every dependency's installed (tested) version satisfies pyproject's specifier; the SLURM plugin and the
    build backend floors are the versions that bring what we use (plugin 2.x; PEP 639 licence strings)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    data = _pyproject()
    for dep in data["project"]["dependencies"] + data["build-system"]["requires"]:
        req = Requirement(dep)
        try:
            installed = Version(importlib.metadata.version(req.name))
        except importlib.metadata.PackageNotFoundError:
            continue
        assert req.specifier.contains(Version(installed.base_version), prereleases=True), (dep, installed)
    deps = [Requirement(d) for d in data["project"]["dependencies"]]
    slurm = next(r for r in deps if r.name == "snakemake-executor-plugin-slurm")
    assert not slurm.specifier.contains("1.9") and slurm.specifier.contains("2.0")
    setuptools = Requirement(data["build-system"]["requires"][0])
    assert setuptools.name == "setuptools" and not setuptools.specifier.contains("76.1")
    assert setuptools.specifier.contains("77.0.3")


def test_metadata_build_carries_the_licence(tmp_path):
    """setuptools turns pyproject into core metadata with the SPDX expression and the licence file."""
    import shutil

    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "mae", src / "mae", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "out").mkdir()
    code = "from setuptools import build_meta; print(build_meta.prepare_metadata_for_build_wheel('../out'))"
    run = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    dist_info = tmp_path / "out" / run.stdout.strip().splitlines()[-1]
    metadata = (dist_info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert (dist_info / "licenses" / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
