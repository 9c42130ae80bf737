"""remote/probe.py on its own: real files, locks and processes, as a bare VM would run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.models import ProbeReport
from console.services.probe import plan_for

PROBE = Path(__file__).resolve().parents[2] / "remote" / "probe.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def run_probe(args: list[str], *, user: str = "", python: str = sys.executable) -> dict:
    command = [python, "-", *args]
    if user:
        command = ["runuser", "-u", user, "--", *command]
    out = subprocess.run(command, input=PROBE.read_bytes(), capture_output=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture
def place() -> Iterator[Path]:
    """A world-traversable folder (pytest's tmp_path is private to its owner)."""
    root = Path(tempfile.mkdtemp(prefix="tpuprobe-"))
    root.chmod(0o755)
    (root / "dev").mkdir()
    (root / "dev").chmod(0o755)
    for i in range(4):
        (root / "dev" / f"accel{i}").touch()
    (root / "jobs").mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root)


def args_for(place: Path, mode: list[str] | None = None) -> list[str]:
    return [
        *(mode or ["probe"]),
        "--lockfile",
        str(place / "libtpu_lockfile"),
        "--devices",
        str(place / "dev" / "accel*"),
        "--jobs-dir",
        str(place / "jobs"),
    ]


def test_a_quiet_worker_is_clean(place: Path) -> None:
    report = ProbeReport.from_json(0, run_probe(args_for(place)))
    assert report.clean and not report.lock_exists and report.holders == ()
    assert plan_for(report).empty


def test_the_probe_runs_on_the_systems_own_python(place: Path) -> None:
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("no system python3 at /usr/bin/python3")
    (place / "libtpu_lockfile").touch()
    raw = run_probe(args_for(place), python=SYSTEM_PYTHON)
    assert raw["verdicts"]["stale_lock"] is True


def _ensure_user(name: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        return False
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--no-create-home", "--shell", "/bin/sh", name],
            check=True,
            capture_output=True,
        )
    return True


def test_a_lockfile_owned_by_another_user_is_foreign_with_the_sudo_remedy(place: Path) -> None:
    if not (_ensure_user("tpuc-owner") and _ensure_user("tpuc-other")):
        pytest.skip("needs root with useradd/runuser to create two users")
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("no system python3 the other user may run")
    lock = place / "libtpu_lockfile"
    lock.touch()
    lock.chmod(0o644)
    shutil.chown(lock, "tpuc-owner")
    raw = run_probe(args_for(place), user="tpuc-other", python=SYSTEM_PYTHON)
    report = ProbeReport.from_json(0, raw)
    assert report.foreign_lock and not report.stale_lock and report.lock_owner == "tpuc-owner"
    plan = plan_for(report)
    assert plan.empty  # nothing we may do ourselves...
    assert any(f"sudo rm {lock}" in note for note in plan.notes)  # ...but we say what would


def test_clean_refuses_pid_1_and_its_own_ancestors(place: Path) -> None:
    me = os.getpid()  # the test process is an ancestor of the probe it starts
    plan = {
        "kills": [
            {"pid": 1, "start_ticks": 0, "cmdline": "", "grace_s": 0.1},
            {"pid": me, "start_ticks": 0, "cmdline": "", "grace_s": 0.1},
        ],
        "locks": [],
    }
    raw = run_probe(args_for(place, ["clean", json.dumps(plan)]))
    assert [r["result"] for r in raw["results"]] == ["refused: protected process"] * 2


def test_a_held_lock_is_never_removed(place: Path) -> None:
    lock = place / "libtpu_lockfile"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_CREAT | os.O_RDWR, 0o644)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        plan = {"kills": [], "locks": [{"path": str(lock)}]}
        raw = run_probe(args_for(place, ["clean", json.dumps(plan)]))
        assert raw["results"][0]["result"] == "not removed: a process holds its lock now"
        assert lock.exists()
        assert raw["after"]["lockfile"]["holders"] == [holder.pid]
    finally:
        holder.kill()
        holder.wait()
