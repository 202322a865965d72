"""The jobs a config plans, as text: one line per job (rule, outputs, log, benchmark, threads, resources, shell
command), sorted, with the results folder written as ``RESULTS``. A refactor of the rules must plan the same jobs:
``tests/test_workflow.py::test_every_config_plans_the_recorded_jobs`` compares these lines with
``tests/fixtures/plans/<config>.txt``. After a change that means to change the plan, rewrite them with
``python -m tests.plans`` and read the diff."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "plans"
CONFIGS = ("smoke", "config", "cpu", "paper")
FIELDS = ("output", "log", "benchmark", "threads", "resources")


def dry_run(config: str, repo: Path = REPO) -> str:
    results = Path(tempfile.mkdtemp()) / "results"
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "2", "--configfile", f"config/{config}.yaml"]
    proc = subprocess.run(
        [*cmd, "--config", f"results={results}"], cwd=repo, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    return proc.stdout.replace(str(results), "RESULTS")


def jobs(text: str) -> list[str]:
    """One line per job of a ``snakemake -n -p`` listing (job ids and reasons left out: they are not the job)."""
    out, job = [], None
    for line in text.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            job = {"rule": m.group(1)}
        elif job is not None and (m := re.match(r"^    (\w+): (.*)$", line)) and m.group(1) in FIELDS:
            value = m.group(2)
            if m.group(1) == "resources":  # tmpdir and disk sizes depend on the machine and the input sizes
                value = ", ".join(r for r in value.split(", ") if not r.startswith(("tmpdir=", "disk")))
            job[m.group(1)] = value
        elif job is not None and line.startswith("Shell command: "):
            job["shell"] = line.removeprefix("Shell command: ")
            out.append(" | ".join(f"{k}={v}" for k, v in job.items()))
            job = None
        elif job is not None and line == "" and job["rule"] == "all":
            out.append("rule=all")
            job = None
    return sorted(out)


def plan(config: str, repo: Path = REPO) -> list[str]:
    return jobs(dry_run(config, repo))


if __name__ == "__main__":
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name in CONFIGS:
        lines = plan(name, repo)
        (FIXTURES / f"{name}.txt").write_text("\n".join(lines) + "\n")
        print(f"{name}: {len(lines)} jobs")
