"""The documentation site: `mkdocs build --strict` succeeds (no broken link, missing anchor, page outside the nav
or stale API reference), the CLI reference holds every command's help, and the command and stage tables of
docs/ARCHITECTURE.md are those of the code (mae.cli.build_parser, mae.cli.SETTINGS, mae.registry.evaluations)."""

from __future__ import annotations

import argparse
import html
import importlib.util
import os
import subprocess
import sys

import pytest

from mae import cli
from mae.registry.evaluations import EVALUATIONS
from tests.conftest import REPO

ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"


def _table(text: str, header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header line starts with ``header``, cells without backticks."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert len(starts) == 1, f"{len(starts)} tables start with {header!r}"
    rows = []
    for line in lines[starts[0] + 2 :]:  # past the header and the |---| line
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split(" | ")]
        rows.append(cells)
    return rows


def _parser_commands() -> list[str]:
    """The sub-commands of the real top-level parser, in its order."""
    actions = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return list(actions[0].choices)


def command_table_problems(text: str) -> list[str]:
    rows = _table(text, "| command | module |")
    names = [row[0] for row in rows]
    problems = [f"listed twice: {n}" for n in sorted({n for n in names if names.count(n) > 1})]
    real = _parser_commands()
    problems += [f"missing from the table: {n}" for n in real if n not in names]
    problems += [f"not a command: {n}" for n in names if n not in real]
    problems += [
        f"{name}: module {module}, the code says {cli.COMMANDS[name][0]}"
        for name, module, *_ in rows
        if name in cli.COMMANDS and module != cli.COMMANDS[name][0]
    ]
    return problems


def stage_table_problems(text: str) -> list[str]:
    rows = _table(text, "| stage | command |")
    expected = ["pretrain", *EVALUATIONS]
    names = [row[0] for row in rows]
    if names != expected:
        return [f"stages {names}, the code knows {expected}"]
    assert set(cli.SETTINGS) == {n.replace("_", "-") for n in expected}  # the stages are the commands with settings
    problems = []
    for name, command, module, settings, folder in rows:
        cmd = name.replace("_", "-")
        per = EVALUATIONS[name].per if name in EVALUATIONS else ""
        want = {
            "command": f"mae {cmd}",
            "module": cli.COMMANDS[cmd][0],
            "settings class": cli.SETTINGS[cmd],
            "folder": f"{name}-<{per}>" if per else name,
        }
        got = {"command": command, "module": module, "settings class": settings, "folder": folder}
        problems += [
            f"{name}: {key} {got[key]!r}, the code says {value!r}" for key, value in want.items() if got[key] != value
        ]
    return problems


def test_architecture_command_table_is_the_cli():
    assert command_table_problems(ARCHITECTURE.read_text()) == []


def test_architecture_stage_table_is_the_registry():
    assert stage_table_problems(ARCHITECTURE.read_text()) == []


def test_table_checks_catch_drift():
    """The checks fail on a table that has lost a row, gained one, or names a wrong module or folder."""
    text = ARCHITECTURE.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `visualize` |"))
    assert command_table_problems(text.replace(row + "\n", "")) == ["missing from the table: visualize"]
    extra = row.replace("`visualize`", "`render`")
    assert command_table_problems(text.replace(row, row + "\n" + extra)) == ["not a command: render"]
    wrong = text.replace("| `bench` | `mae.tools.bench` |", "| `bench` | `mae.benchmark` |")
    assert command_table_problems(wrong) == ["bench: module mae.benchmark, the code says mae.tools.bench"]
    knn = next(line for line in text.splitlines() if line.startswith("| `knn` | `mae knn` |"))
    assert stage_table_problems(text.replace(knn + "\n", ""))[0].startswith("stages ")
    moved = text.replace("| `partial_ft-<blocks>` |", "| `partial_ft` |")
    assert stage_table_problems(moved) == ["partial_ft: folder 'partial_ft', the code says 'partial_ft-<blocks>'"]


def test_mkdocs_build_strict(tmp_path):
    """The whole site builds with --strict (warnings are errors), and the generated CLI page holds every command."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]' installs it)")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "NO_MKDOCS_2_WARNING": "1",
    }
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(site)]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    page = html.unescape((site / "cli" / "index.html").read_text())
    for name in _parser_commands():
        assert f"usage: mae {name}" in page, name
    assert "usage: mae bench pretrain" in page and "usage: mae bench stages" in page
    assert "<!-- mae-cli-reference -->" not in page
    assert (site / "api" / "stats" / "index.html").read_text().count("bootstrap_indices") > 0
