"""Warm start (mae/tools/warmstart.py): `mae` commands run in a server that imported torch once — same results, exit
codes, signals and output as a process of their own, and a plain run wherever the server does not apply."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mae.errors import PREEMPTED_EXIT
from mae.tools import warmstart

pytestmark = pytest.mark.skipif(not warmstart.supported(), reason="warm start needs Linux (fork, pidfds)")

TINY = [
    "epochs=2",
    "warmup_epochs=1",
    "batch_size=16",
    "amp=auto",
    "eval_images=32",
    "log_every=1",
    "model=mae_vit_micro_patch4",
    "decoder_depth=1",
    "decoder_width=64",
    "decoder_heads=2",
    "seed=3",
]
TIMING = {"img_s", "wall_s", "setup_s", "time_s", "step_img_s", "data_img_s", "finished_at", "started_at"}


def job_env(socket=None, **extra):
    """A job's environment: this one (``socket``: with the server's socket)."""
    env = {k: v for k, v in os.environ.items() if k != warmstart.ENV}
    return {**env, **({warmstart.ENV: socket} if socket else {}), **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("warm") / "warm_start.log"
    saved = os.environ.get(warmstart.ENV)
    proc = warmstart.start(log)
    assert proc is not None, log.read_text()
    path = os.environ[warmstart.ENV]
    if saved is None:  # the variable is this test's, not the session's
        os.environ.pop(warmstart.ENV)
    yield path, log
    warmstart.stop(proc)
    assert not os.path.exists(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mae.data.prepare import prepare_builtin

    out = tmp_path_factory.mktemp("data") / "shapes"
    prepare_builtin(out, "shapes", img_size=32, n_train=64, n_val=32, seed=0)
    return out


def mae(args, socket=None, env=None, **kwargs):
    """`mae ARGS` as a job starts it: the console script, in a process of its own (``socket``: in the server)."""
    env = job_env(socket, **(env or {}))
    cmd = [os.path.join(os.path.dirname(sys.executable), "mae"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, **kwargs)


def workers(log):
    return log.read_text().count("warm start: worker")


def pretrain_args(data, out, *sets):
    args = ["pretrain", "--data", str(data), "--out", str(out), "--device", "cpu"]
    for s in (*TINY, *sets):
        args += ["--set", s]
    return args


def test_pretraining_in_the_server_equals_its_own_process(server, data, tmp_path):
    socket, log = server
    before = workers(log)
    warm = mae(pretrain_args(data, tmp_path / "warm"), socket)
    cold = mae(pretrain_args(data, tmp_path / "cold"))
    assert warm.returncode == cold.returncode == 0, warm.stderr[-2000:] + cold.stderr[-2000:]
    assert "warm start" not in warm.stderr and workers(log) == before + 1, warm.stderr[:300]  # ran in the server
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("warm", "cold")]
    for m in metrics:
        for key in TIMING:
            m.pop(key, None)
    assert metrics[0] == metrics[1]
    logs = [(tmp_path / d / "log.jsonl").read_text().splitlines() for d in ("warm", "cold")]
    losses = [[(r["kind"], r.get("loss")) for r in map(json.loads, log)] for log in logs]
    assert losses[0] == losses[1] and len(losses[0]) > 8


def test_worker_takes_the_jobs_code_threads_environment_and_folder(server, tmp_path):
    """The worker imports `mae` from the job's sys.path as it is now (here a stand-in `mae.cli` that reports
    what it sees), with the job's thread count, variables, temp folder and working directory."""
    socket, _ = server
    fake = tmp_path / "fake"
    (fake / "mae").mkdir(parents=True)
    (fake / "mae" / "__init__.py").write_text("")
    (fake / "mae" / "cli.py").write_text(
        "import json, os, tempfile, torch\n"
        "def main(argv):\n"
        "    umask = os.umask(0); print(json.dumps([torch.get_num_threads(), os.getcwd(), os.environ.get('PROBE'),"
        " tempfile.gettempdir(), 'TORCHINDUCTOR_CACHE_DIR' in os.environ, argv, umask,"
        " sorted(os.sched_getaffinity(0))]))\n"
        "    return 7\n"
    )
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    client = (
        "import os, sys; from mae.tools import warmstart; sys.path.insert(0, sys.argv[1]); os.umask(0o027); "
        "os.sched_setaffinity(0, {0}); sys.exit(warmstart.delegate(['mae', 'probe', '--x'], 'mae.cli:main'))"
    )
    env = job_env(socket, OMP_NUM_THREADS="2", PROBE="p", TMPDIR=str(tmp_path / "tmp"))
    out = subprocess.run(
        [sys.executable, "-c", client, str(fake)],
        env=env,
        cwd=tmp_path / "cwd",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 7, out.stderr
    assert json.loads(out.stdout) == [
        2,
        str(tmp_path / "cwd"),
        "p",
        str(tmp_path / "tmp"),
        True,
        ["probe", "--x"],
        0o027,
        [0],
    ]


def test_exit_codes_and_error_lines_are_the_commands(server, tmp_path):
    socket, _ = server
    args = ["pretrain", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--device", "cpu"]
    warm, cold = mae(args, socket), mae(args)
    assert warm.returncode == cold.returncode == 2
    assert warm.stderr == cold.stderr and cold.stderr.startswith("error: ")
    assert mae(["no-such-command"], socket).returncode == mae(["no-such-command"]).returncode == 2


def test_sigterm_reaches_the_worker_and_ignored_signals_stay_ignored(server, data, tmp_path):
    """SLURM's and Snakemake's stop signal goes to the job's process; the worker stops as a plain run does:
    checkpoint, exit code PREEMPTED_EXIT. A signal the job was started ignoring (SIGHUP under nohup) stays
    ignored."""
    socket, _ = server
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mae"), *pretrain_args(data, out, "epochs=200")],
        env=job_env(socket),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )
    deadline = time.monotonic() + 120
    while not (out / "log.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT, err[-2000:]
    assert "preempted" in err


def test_command_that_crashes_reports_like_a_process(server, tmp_path):
    socket, _ = server
    fake = tmp_path / "fake" / "mae"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "cli.py").write_text("raise RuntimeError('broken on import')\n")
    client = (
        "import sys; from mae.tools import warmstart; sys.path.insert(0, sys.argv[1]); "
        "sys.exit(warmstart.delegate(['mae', 'x'], 'mae.cli:main'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", client, str(fake.parent)],
        env=job_env(socket),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "RuntimeError: broken on import" in out.stderr


def test_killed_job_ends_its_worker(server, data, tmp_path):
    socket, log = server
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mae"), *pretrain_args(data, out, "epochs=200")],
        env=job_env(socket),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (out / "log.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    worker = int(log.read_text().rsplit("warm start: worker ", 1)[1].split(":")[0])
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{worker}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{worker}")


@pytest.mark.parametrize(
    "env, reason",
    [({"TORCH_LOGS": "+dynamo"}, "TORCH_LOGS differs"), ({"PYTHONHASHSEED": "1"}, "PYTHONHASHSEED differs")],
)
def test_other_environment_runs_by_itself(server, env, reason):
    socket, log = server
    before = workers(log)
    out = mae(["--version"], socket, env=env)
    assert out.returncode == 0 and out.stdout.startswith("mae ")
    assert reason in out.stderr and "not used" in out.stderr and workers(log) == before
    again = mae(["--version"], socket)  # the server serves on after a refusal
    assert again.returncode == 0 and again.stderr == "" and workers(log) == before + 1


def test_no_server_runs_by_itself(tmp_path):
    out = mae(["--version"], str(tmp_path / "gone.socket"))
    assert out.returncode == 0 and out.stdout.startswith("mae ") and out.stderr == ""


def test_refusal_rules():
    env, origins = {"PATH": "/bin", "HOME": "/root"}, warmstart._origins()
    added = {"TORCHINDUCTOR_CACHE_DIR": "/tmp/ti"}  # what the server's imports set
    ok = {
        "interpreter": warmstart._interpreter(),
        "origins": origins,
        "env": {**env, "OMP_NUM_THREADS": "1", "MAE_MALLOC_TUNING": "0", "PS1": "$ "},
    }
    assert warmstart.refusal(ok, env, added, origins) is None  # what a shell or Snakemake sets per job
    same = {**ok, "env": {**ok["env"], "TORCHINDUCTOR_CACHE_DIR": "/tmp/ti"}}  # as the import sets it
    assert warmstart.refusal(same, env, added, origins) is None
    other = {**ok, "env": {**ok["env"], "TORCHINDUCTOR_CACHE_DIR": "/elsewhere"}}
    assert "TORCHINDUCTOR_CACHE_DIR" in warmstart.refusal(other, env, added, origins)
    assert "interpreter" in warmstart.refusal({**ok, "interpreter": ["/other/python"]}, env, added, origins)
    assert "libraries" in warmstart.refusal({**ok, "origins": {"torch": "/elsewhere"}}, env, added, origins)
    assert "HOME" in warmstart.refusal({**ok, "env": {"PATH": "/bin"}}, env, added, origins)
    assert "LD_PRELOAD" in warmstart.refusal({**ok, "env": {**ok["env"], "LD_PRELOAD": "x.so"}}, env, added, origins)
    assert "OMP_NUM_THREADS" in warmstart.refusal({**ok, "env": env}, {**env, "OMP_NUM_THREADS": "2"}, added, origins)
    nested = {**ok, "env": {**ok["env"], "OMP_NUM_THREADS": "4,2"}}  # OpenMP's nested syntax: runs by itself
    assert "not a plain thread count" in warmstart.refusal(nested, env, added, origins)
    # inductor's default cache folder (set by the import when unset) follows the job's temp folder
    elsewhere = {**ok, "env": {**ok["env"], "TMPDIR": "/var/tmp"}}
    assert warmstart.refusal(elsewhere, {**env, "TMPDIR": "/tmp"}, added, origins).startswith("TORCHINDUCTOR")
    assert warmstart.refusal({**ok, "env": {**ok["env"], "TMPDIR": "/tmp"}}, env, added, origins) is None


def test_idle_server_exits(tmp_path):
    saved = os.environ.get(warmstart.ENV)
    proc = warmstart.start(tmp_path / "log", idle=1)
    try:
        assert proc is not None
        assert proc.wait(timeout=30) == 0
        assert "server stopped" in (tmp_path / "log").read_text()
    finally:
        warmstart.stop(proc)
        if saved is None:
            os.environ.pop(warmstart.ENV, None)
        else:
            os.environ[warmstart.ENV] = saved
