"""remote/stacks.py and remote/stack_dumps.py on their own: real processes, signals and logs."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.services.stacks import parse_faulthandler, worker_stacks

ROOT = Path(__file__).resolve().parents[2]
STACKS = ROOT / "remote" / "stacks.py"

# A job's program: asks for stack dumps as our runners do, then waits in a function of its own.
RUNNER = """
import sys, threading, time
sys.path.insert(0, {root!r})
from remote import stack_dumps
stack_dumps.enable()
def helper():
    time.sleep(600)
threading.Thread(target=helper, daemon=True).start()
def waiting_for_peers():
    print("ready", flush=True)
    time.sleep(600)
waiting_for_peers()
"""
# A Python program with a SIGUSR1 handler of its own, and no marker: it must not be signalled.
OWN_HANDLER = """
import signal, time
signal.signal(signal.SIGUSR1, lambda *a: open("usr1-ran", "w").close())
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def job(tmp_path: Path) -> Iterator:
    """A job folder and a session of processes in it, as the launch makes them."""
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    procs = []

    def start(*programs: str) -> list[int]:
        lines = [f"{sys.executable} -u -c {shlex.quote(p)} &" for p in programs]
        script = "\n".join([*lines, "sleep 600 & wait"])
        env = {"PATH": "/usr/bin:/bin", "TPUCONSOLE_JOB_DIR": str(job_dir)}
        leader = subprocess.Popen(
            ["bash", "-c", script],
            stdout=open(job_dir / "log", "wb"),  # noqa: SIM115 - the job's log, as the launch's
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
            start_new_session=True,
        )
        procs.append(leader)
        (job_dir / "pid").write_text(f"{leader.pid}\n")
        deadline = time.monotonic() + 60
        while (job_dir / "log").read_text().count("ready\n") < len(programs):
            assert time.monotonic() < deadline, (job_dir / "log").read_text()
            time.sleep(0.02)
        return [leader.pid]

    try:
        yield job_dir, start
    finally:
        for p in procs:
            os.killpg(p.pid, 9)
            p.wait()


def collect(job_dir: Path, path: str = "/usr/bin:/bin") -> dict:
    out = subprocess.run(
        [sys.executable, "-S", "-E", "-", "--job-dir", str(job_dir), "--wait-s", "10"],
        input=STACKS.read_bytes(),
        capture_output=True,
        check=True,
        env={"PATH": path, "HOME": str(job_dir.parent)},
    )
    return json.loads(out.stdout)


def test_a_runner_that_asked_for_dumps_is_signalled_and_its_dump_cut_from_the_log(job) -> None:
    job_dir, start = job
    start(RUNNER.format(root=str(ROOT)))
    raw = collect(job_dir)
    assert sum(p["python"] for p in raw["processes"]) == 1, raw
    (runner,) = [p for p in raw["processes"] if p["python"]]
    assert runner["method"] == "faulthandler" and runner["note"] == ""
    threads = parse_faulthandler(runner["text"])
    main = [t for t in threads if t.main]
    assert [t.frames[0].function for t in main] == ["waiting_for_peers"]
    assert {t.frames[0].function for t in threads if not t.main} == {"helper"}
    log = (job_dir / "log").read_text()
    assert log.startswith("ready\n") and runner["text"].splitlines()[0] in log  # stays in the log
    assert all(line in log for line in runner["text"].splitlines())
    others = [p for p in raw["processes"] if not p["python"]]
    assert others and all(p["note"] == "not a Python process" for p in others)
    assert len(raw["processes"]) == 3  # bash, the runner, sleep: every one still alive
    assert all(Path(f"/proc/{p['pid']}").exists() for p in raw["processes"])


def test_a_program_with_its_own_handler_is_not_signalled_and_py_spy_missing_is_said(
    job, tmp_path: Path
) -> None:
    job_dir, start = job
    start(OWN_HANDLER)
    raw = collect(job_dir, path="/usr/bin:/bin")  # no py-spy there
    (program,) = [p for p in raw["processes"] if p["python"]]
    assert program["method"] == "none" and program["text"] == ""
    assert "py-spy is not installed on the worker: `pip install py-spy` there" in program["note"]
    assert not (tmp_path / "usr1-ran").exists()


def test_a_worker_with_no_job_process_says_so(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    raw = collect(job_dir)
    assert raw["note"] == "the job never started on this worker (no pid file)"
    (job_dir / "pid").write_text("999999999\n")
    raw = collect(job_dir)
    assert raw["note"] == "no process of the job is running on this worker"
    assert worker_stacks(3, raw).main_stack is None


def test_stack_dumps_leave_no_marker_outside_a_job() -> None:
    script = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from remote import stack_dumps\nprint(stack_dumps.enable(), stack_dumps.marker_path())"
    )
    env = {k: v for k, v in os.environ.items() if k != "TPUCONSOLE_JOB_DIR"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["False"]
