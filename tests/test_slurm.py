"""The SLURM profile against a real single-node SLURM cluster started on this machine.

Run with ``pytest -m slurm tests/test_slurm.py`` as root on Debian/Ubuntu (CI: a root container). The module
fixture runs ``tests/slurm/start_cluster.sh`` (installs slurm-wlm, munge, slurmdbd and mariadb-server with
apt-get if missing, starts the daemons, waits for the node to be idle) and stops the cluster afterwards.
Every Snakemake run is wrapped in ``timeout -k`` because the executor plugin can wait forever (and ignores
SIGTERM) when status queries fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "tests" / "slurm"
STATE_DIR = Path(os.environ.get("SLURM_STATE_DIR", "/tmp/mae-slurm"))
TOY_TIMEOUT_S = int(os.environ.get("MAE_SLURM_TOY_TIMEOUT", "300"))
SMOKE_TIMEOUT_S = int(os.environ.get("MAE_SLURM_SMOKE_TIMEOUT", "1500"))


def _snakemake_bin() -> str:
    exe = Path(sys.executable).with_name("snakemake")
    return str(exe) if exe.exists() else (shutil.which("snakemake") or "snakemake")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["SLURM_CONF"] = str(STATE_DIR / "etc" / "slurm.conf")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}{os.pathsep}/usr/sbin:/sbin"
    return env


def _run(cmd: list[str], cwd: Path, timeout_s: int) -> subprocess.CompletedProcess:
    """Run cmd under `timeout -k 15 <timeout_s>`; return the completed process (stdout+stderr merged)."""
    return subprocess.run(
        ["timeout", "-k", "15", str(timeout_s), *cmd],
        cwd=cwd,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _sacct_jobs(since: str) -> list[tuple[str, str, str]]:
    """(job id, job name, state) of the allocations sacct recorded since `since` (YYYY-MM-DDTHH:MM:SS)."""
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-a", "-S", since, "-o", "JobID,JobName,State"],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [tuple(line.split("|")[:3]) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def slurm_cluster():
    if sys.platform != "linux":
        pytest.skip("the local SLURM test cluster needs Linux")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM test cluster must be started as root (tests/slurm/start_cluster.sh)")
    have_daemons = all(shutil.which(b, path="/usr/sbin:/usr/bin:/sbin:/bin") for b in ("slurmctld", "slurmdbd"))
    if not have_daemons and shutil.which("apt-get") is None:
        pytest.skip("slurm-wlm/slurmdbd are not installed and apt-get is not available to install them")
    if shutil.which("timeout") is None:
        pytest.skip("coreutils `timeout` is needed to bound the Snakemake runs")
    t0 = time.monotonic()
    start = subprocess.run(
        ["bash", str(SLURM_DIR / "start_cluster.sh")],
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    if start.returncode != 0:
        # A machine where apt cannot reach a mirror cannot host the cluster; everything else is a failure.
        if "apt-get install" in start.stdout and "failed" in start.stdout:
            pytest.skip(f"could not install the SLURM packages:\n{start.stdout[-2000:]}")
        pytest.fail(f"start_cluster.sh failed (rc={start.returncode}):\n{start.stdout[-4000:]}")
    print(f"\n[slurm] cluster started in {time.monotonic() - t0:.1f} s\n{start.stdout.strip()}")
    started_here = "already running" not in start.stdout
    try:
        yield STATE_DIR
    finally:
        if started_here:  # leave a cluster that the user had started alone
            subprocess.run(["bash", str(SLURM_DIR / "stop_cluster.sh")], env=_env(), stdin=subprocess.DEVNULL)


def _copy_profiles(dst: Path) -> None:
    shutil.copytree(REPO / "profiles", dst / "profiles")


def test_toy_workflow_runs_on_slurm(slurm_cluster, tmp_path):
    """Two dependent jobs go through sbatch, run on the node and are reported done via sacct."""
    shutil.copy(SLURM_DIR / "Snakefile.toy", tmp_path / "Snakefile")
    _copy_profiles(tmp_path)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    t0 = time.monotonic()
    proc = _run([_snakemake_bin(), "--workflow-profile", "profiles/slurm-test"], tmp_path, TOY_TIMEOUT_S)
    elapsed = time.monotonic() - t0
    print(f"[slurm] toy workflow (2 SLURM jobs) took {elapsed:.1f} s")
    assert proc.returncode == 0, f"snakemake rc={proc.returncode} after {elapsed:.0f}s:\n{proc.stdout[-5000:]}"

    hello = (tmp_path / "toy" / "hello.txt").read_text()
    combined = (tmp_path / "toy" / "combined.txt").read_text().splitlines()
    assert hello.startswith("job=") and "job=none" not in hello, hello  # ran inside a SLURM allocation
    assert len(combined) == 2 and combined[1].startswith("job=") and combined[1] != "job=none", combined
    assert "has been submitted with SLURM jobid" in proc.stdout

    jobs = _sacct_jobs(since)
    completed = [j for j in jobs if j[2] == "COMPLETED"]
    assert len(completed) >= 2, f"sacct should have recorded 2 completed jobs, saw {jobs}"
    job_ids = {line.split()[0].split("=", 1)[1] for line in (hello.strip(), combined[1])}
    assert job_ids <= {j[0] for j in jobs}, (job_ids, jobs)


def test_failing_job_is_reported(slurm_cluster, tmp_path):
    """A job that exits non-zero on the cluster makes snakemake fail (it must not hang)."""
    (tmp_path / "Snakefile").write_text(
        'rule fail:\n    output: "never.txt"\n    resources: mem_mb=300, runtime=2\n    shell: "exit 3"\n'
    )
    _copy_profiles(tmp_path)
    proc = _run([_snakemake_bin(), "--workflow-profile", "profiles/slurm-test"], tmp_path, TOY_TIMEOUT_S)
    assert proc.returncode not in (0, 124, 137), (
        f"expected a reported failure, rc={proc.returncode}:\n{proc.stdout[-3000:]}"
    )
    assert "Error in rule fail" in proc.stdout, proc.stdout[-3000:]
    assert not (tmp_path / "never.txt").exists()


# Every kind of cluster job of the study (data, pretraining, each evaluation and transfer) but not every setting:
# the whole smoke DAG runs locally in tests/test_workflow.py, and each SLURM job costs ~14 s of submission and
# start-up on the test cluster whatever it computes (the 51-job smoke study took 816 s here, these 20 jobs ~1/3).
SLURM_PARTS = ("part_fig9", "part_transfer")


def test_smoke_study_runs_on_slurm(slurm_cluster, tmp_path):
    """The real smoke study's parts (Fig. 9 and the transfers), every job a SLURM job, then its report from what
    exists (`partial=true`), in a copy of the repository."""
    if not (REPO / "config" / "smoke.yaml").exists() or not (REPO / "Snakefile").exists():
        pytest.skip("config/smoke.yaml or Snakefile does not exist yet")
    work = tmp_path / "repo"
    shutil.copytree(
        REPO,
        work,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            ".snakemake",
            "results",
            "logs",
            "benchmarks",
            ".dvc",
            "__pycache__",
            "*.egg-info",
            ".pytest_cache",
        ),
    )
    smk = [_snakemake_bin(), "--workflow-profile", "profiles/slurm-test"]
    t0 = time.monotonic()
    proc = _run([*smk, *SLURM_PARTS, "--configfile", "config/smoke.yaml"], work, SMOKE_TIMEOUT_S)
    elapsed = time.monotonic() - t0
    print(f"[slurm] smoke study parts {SLURM_PARTS} on SLURM took {elapsed:.1f} s")
    assert proc.returncode == 0, f"snakemake rc={proc.returncode} after {elapsed:.0f}s:\n{proc.stdout[-6000:]}"
    submitted = proc.stdout.count("has been submitted with SLURM jobid")
    for rule in ("prepare_data", "pretrain", "finetune", "linprobe", "partial_ft", "transfer_det", "transfer_seg"):
        assert f"rule {rule}:" in proc.stdout, f"no {rule} job ran:\n{proc.stdout[-3000:]}"
    assert submitted >= 15, f"{submitted} SLURM submissions:\n{proc.stdout[-3000:]}"
    for run in ("base", "scratch"):  # the parts' runs finished on the cluster
        assert list((work / "results" / "runs").glob(f"{run}*/transfer_det/metrics.json")), run
    report_cmd = [*smk, "claims", "--configfile", "config/smoke.yaml", "--config", "partial=true"]
    report = _run(report_cmd, work, TOY_TIMEOUT_S)
    assert report.returncode == 0, report.stdout[-4000:]
    assert (work / "results" / "summary" / "runs.csv").exists()
    assert "rule pretrain:" not in report.stdout  # the report reads what the cluster made; it trains nothing
