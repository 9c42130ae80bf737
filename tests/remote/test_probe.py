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


# ----- "ours" is the ssh login user's, even when sudo made the probe root ----------------------
HOLDER = Path(__file__).resolve().parents[1] / "hold_tpu.py"
LOGIN_USER = "tpuc-login"


def _holder_env(place: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TPUCONSOLE_LOCKFILE": str(place / "libtpu_lockfile"),
        "TPUCONSOLE_DEVICES": str(place / "dev" / "accel*"),
    }


def _start_holder(place: Path, *args: str, as_user: str = "") -> subprocess.Popen:
    """A real TPU process (chips held), started as `as_user` through setpriv (no fork)."""
    command = [SYSTEM_PYTHON, str(place / "hold_tpu.py"), *args]
    if as_user:
        command = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--init-groups"]
        command += [SYSTEM_PYTHON, str(place / "hold_tpu.py"), *args]
    proc = subprocess.Popen(
        command, env=_holder_env(place), stdout=subprocess.PIPE, text=True, cwd=place
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def login_user(place: Path) -> Iterator[str]:
    """A real unprivileged user, the TPU VM's ssh login; the probe may run as root for it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second user and run processes as it")
    if not os.path.exists(SYSTEM_PYTHON) or not shutil.which("setpriv"):
        pytest.skip("needs /usr/bin/python3 and setpriv to run processes as another user")
    if not _ensure_user(LOGIN_USER):
        pytest.skip("needs useradd to create a second user")
    shutil.copy(HOLDER, place / "hold_tpu.py")
    (place / "hold_tpu.py").chmod(0o644)
    yield LOGIN_USER


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


@pytest.mark.parametrize("told", ["--login-uid", "SUDO_UID"])
def test_as_root_for_a_login_user_only_that_users_stale_process_is_planned(
    place: Path, login_user: str, told: str
) -> None:
    mine = _start_holder(place, "chips", as_user=login_user)
    roots = _start_holder(place, "chips")
    try:
        uid = str(_uid(login_user))
        args = args_for(place) + (["--login-uid", uid] if told == "--login-uid" else [])
        env = {**os.environ, "SUDO_UID": uid} if told == "SUDO_UID" else None
        out = subprocess.run(
            [SYSTEM_PYTHON, "-", *args],
            input=PROBE.read_bytes(),
            capture_output=True,
            check=True,
            env=env,
        )
        report = ProbeReport.from_json(0, json.loads(out.stdout))
        assert report.root and report.login_user == login_user
        ours = {x.pid: x.ours for x in report.lingering}
        assert ours == {mine.pid: True, roots.pid: False}
        plan = plan_for(report)
        assert [k.pid for k in plan.kills] == [mine.pid]
        assert any(f"pid {roots.pid} belongs to user root: not touched" in n for n in plan.notes)
    finally:
        for proc in (mine, roots):
            proc.kill()
            proc.wait()


@pytest.fixture
def sudoer(login_user: str) -> Iterator[str]:
    """The login user with passwordless sudo, as on a TPU VM; removed again afterwards."""
    if not shutil.which("sudo"):
        pytest.skip("needs sudo (scripts/install-test-deps.sh installs it)")
    rule = Path("/etc/sudoers.d") / f"tpuconsole-test-{login_user}"
    rule.parent.mkdir(mode=0o755, exist_ok=True)
    rule.write_text(f"{login_user} ALL=(ALL) NOPASSWD: ALL\n")
    rule.chmod(0o440)
    try:
        check = subprocess.run(
            ["setpriv", f"--reuid={login_user}", f"--regid={login_user}", "--init-groups",
             "sudo", "-n", "true"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if check.returncode != 0:
            pytest.skip(f"sudo -n does not work here for {login_user}: {check.stderr.strip()}")
        yield login_user
    finally:
        rule.unlink()


def _as_login_user(place: Path, user: str, mode: list[str]) -> dict:
    """The console's own probe command, run as the login user, which sudo makes root."""
    from console.services.probe import probe_command

    out = subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
         "sh", "-c", probe_command(mode)],
        input=PROBE.read_bytes(),
        capture_output=True,
        check=True,
        env={**_holder_env(place), "HOME": str(place)},
        cwd=place,
    )  # fmt: skip
    return json.loads(out.stdout)


def test_through_sudo_clean_stops_the_login_users_stale_process_and_spares_roots(
    place: Path, sudoer: str
) -> None:
    from console.services.probe import _step_json

    mine = _start_holder(place, "chips", as_user=sudoer)
    roots = _start_holder(place, "chips")
    try:
        report = ProbeReport.from_json(0, _as_login_user(place, sudoer, ["probe"]))
        assert report.sudo == "used" and report.root and report.login_user == sudoer
        plan = plan_for(report, grace_s=2)
        assert [k.pid for k in plan.kills] == [mine.pid]
        # Even a plan that names root's process (an old or a tampered one) does not reach it.
        kills = [*plan.kills, *(replace_pid(plan.kills[0], roots.pid, report))]
        doc = {"kills": [_step_json(k) for k in kills], "locks": []}
        raw = _as_login_user(place, sudoer, ["clean", json.dumps(doc)])
        results = [r["result"] for r in raw["results"]]
        assert results[0] == "ended after SIGTERM"
        assert results[1] == f"refused: pid {roots.pid} runs as user root, not as {sudoer}"
        mine.wait(timeout=10)
        assert _alive(roots.pid), "root's process was signalled"
        after = ProbeReport.from_json(0, raw["after"])
        assert [x.pid for x in after.lingering] == [roots.pid]
    finally:
        for proc in (mine, roots):
            proc.kill()
            proc.wait()


def replace_pid(step, pid: int, report: ProbeReport):
    """The same kill step aimed at another holder of the report, with that one's identity."""
    import dataclasses

    holder = next(h for h in report.holders if h.pid == pid)
    return [
        dataclasses.replace(step, pid=pid, start_ticks=holder.start_ticks, cmdline=holder.cmdline)
    ]


def test_the_probe_is_python_3_8_syntax() -> None:
    """It runs on a bare VM's python3: no syntax newer than 3.8 may slip in."""
    import ast

    ast.parse(PROBE.read_text(), feature_version=(3, 8))
    for name in ("removeprefix", "removesuffix", "zip(strict", "| None", "match "):
        assert name not in PROBE.read_text(), name


# ----- a lockfile that is no regular file -------------------------------------------------------
def _bystander_holding(path: Path) -> subprocess.Popen:
    """Someone else's process holding a POSIX lock on a file of its own."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, time\n"
            f"fd = os.open({str(path)!r}, os.O_CREAT | os.O_RDWR, 0o644)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo"])
def test_a_lockfile_that_is_no_regular_file_is_reported_never_followed(
    place: Path, kind: str
) -> None:
    lock = place / "libtpu_lockfile"
    precious = place / "someone-elses.db"
    bystander = _bystander_holding(precious)
    try:
        if kind == "symlink":
            lock.symlink_to(precious)
        elif kind == "directory":
            lock.mkdir()
        else:
            os.mkfifo(lock)
        raw = run_probe(args_for(place))
        report = ProbeReport.from_json(0, raw)
        assert report.odd_lock == kind and not report.stale_lock and not report.clean
        assert report.lock_holders == () and report.lingering == ()
        plan = plan_for(report)
        assert plan.empty and any("not followed" in n for n in plan.notes)
        if kind == "symlink":
            assert report.lock_target == str(precious)
        # A plan made before it was swapped in is not carried out through it either.
        raw = run_probe(args_for(place, ["clean", json.dumps({"locks": [{"path": str(lock)}]})]))
        assert raw["results"][0]["done"] is False
        assert f"is a {kind} now, not a lockfile" in raw["results"][0]["result"]
        assert os.path.lexists(lock) and precious.exists()
        assert bystander.poll() is None, "the bystander was signalled"
    finally:
        bystander.kill()
        bystander.wait()


# ----- what keeps 256 probes at once cheap, finding what they always found ---------------------
def _probe_namespace() -> dict:
    namespace: dict = {"__name__": "probe_under_test"}
    exec(compile(PROBE.read_text(), str(PROBE), "exec"), namespace)
    return namespace


def test_device_patterns_find_what_glob_finds(place: Path) -> None:
    import fnmatch
    import glob

    (place / "dev" / ".accel9").touch()
    (place / "dev" / "vfio").mkdir()
    for name in ("0", "12", "devices"):
        (place / "dev" / "vfio" / name).touch()
    probe = _probe_namespace()
    dev = str(place / "dev")
    for pattern in [f"{dev}/accel*", f"{dev}/.accel*", f"{dev}/vfio/[0-9]*", f"{dev}/vfio/*",
                    f"{place}/*/vfio/*", f"{dev}/accel0", f"{dev}/nothing", f"{dev}/nope/*",
                    f"{dev}/accel[!0]", "/dev/accel*", "/dev/vfio/[0-9]*"]:  # fmt: skip
        assert sorted(probe["glob_paths"](pattern)) == sorted(glob.glob(pattern)), pattern
    names = ["accel0", "accel12", ".accel", "[x]", "a-b", "!", "]", ""]
    patterns = ["accel*", "accel?", "[0-9]*", "[!0-9]*", "[]x]", "[!]x]", "[a-", "*[", "a[-]b",
                "[z-a]", "*", "", "?*?", "[!]", "*]"]  # fmt: skip
    for name in names:
        for pattern in patterns:
            assert probe["name_matches"](name, pattern) == fnmatch.fnmatchcase(name, pattern), (
                name,
                pattern,
            )


def test_the_report_is_written_as_json_dumps_writes_it(place: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-", *args_for(place)], input=PROBE.read_bytes(), capture_output=True
    ).stdout.decode()
    assert out == json.dumps(json.loads(out)) + "\n"
    to_json = _probe_namespace()["to_json"]
    for value in [1.5, -0.0, 10**30, float("nan"), float("inf"), -float("inf"), None, True,
                  "é\"\\\n\x01\udcff", [], {}, {"a": [1, None, False, ("x",)]}]:  # fmt: skip
        assert to_json(value) == json.dumps(value), value


def test_the_probe_loads_nothing_that_pulls_in_re_or_enum(place: Path) -> None:
    """The modules that made a probe's start cost more than its work (`json`, `glob`, `socket`
    and `signal` bring `re` and `enum`) stay out of a probe's run."""
    source = PROBE.read_bytes() + b"\nsys.stderr.write(' '.join(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-S", "-E", "-", *args_for(place)], input=source, capture_output=True
    )
    loaded = set(out.stderr.decode().split())
    assert "os" in loaded and not loaded & {"re", "enum", "json", "glob", "socket", "signal"}


def _hold(place: Path, env: dict[str, str], *what: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(HOLDER), *what],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        stdout=subprocess.PIPE,
        text=True,
        cwd=place,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def test_a_sandbox_worker_looks_only_at_its_own_processes_and_every_lock_holder(
    place: Path,
) -> None:
    """A sandbox worker is a folder on a machine it shares with other workers; the processes
    that are its own carry its HOME (or lockfile), as the sandbox marks them."""
    devices = {"TPUCONSOLE_DEVICES": str(place / "dev" / "accel*")}
    lock = {"TPUCONSOLE_LOCKFILE": str(place / "libtpu_lockfile")}
    sandbox = {"TPUCONSOLE_SANDBOX": "1"}
    procs = [
        _hold(place, {**sandbox, **devices, "HOME": str(place)}, "chips"),  # its own job
        _hold(place, {**sandbox, **devices, **lock, "HOME": "/elsewhere"}, "chips"),  # by lockfile
        _hold(place, {**sandbox, **devices, "HOME": f"{place}-w1"}, "chips"),  # another worker's
        _hold(place, {**lock}, "lock"),  # no worker's, but it holds this worker's lock
    ]
    try:
        scoped = run_probe([*args_for(place), "--sandbox-home", str(place)])
        whole = run_probe(args_for(place))
        assert [h["pid"] for h in scoped["holders"]] == sorted(
            p.pid for p in (procs[0], procs[1], procs[3])
        )
        assert [h["pid"] for h in whole["holders"]] == sorted(p.pid for p in procs)
        assert scoped["lockfile"]["holders"] == whole["lockfile"]["holders"] == [procs[3].pid]
        assert scoped["unreadable_processes"] == whole["unreadable_processes"]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_the_console_keeps_the_probe_compiled_on_the_worker_and_it_finds_the_same(
    place: Path,
) -> None:
    from console.services.probe import probe_command, probe_module

    if not shutil.which("bash"):
        pytest.skip("needs bash, the login shell of a TPU VM")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(place),
           "TPUCONSOLE_LOCKFILE": str(place / "libtpu_lockfile"),
           "TPUCONSOLE_DEVICES": str(place / "dev" / "accel*")}  # fmt: skip
    holder = _hold(place, env, "chips")
    try:
        runs = [
            subprocess.run(
                ["bash", "-c", probe_command(["probe"])],
                input=given,
                env=env,
                capture_output=True,
                check=True,
            )
            for given in (PROBE.read_bytes(), b"")  # the second finds its copy, reads no stdin
        ]
        kept = place / ".tpuconsole" / "probe" / f"{probe_module()}.py"
        assert kept.read_bytes() == PROBE.read_bytes()
        assert list((kept.parent / "__pycache__").glob(f"{probe_module()}.*.pyc"))
        for run in runs:
            assert [h["pid"] for h in json.loads(run.stdout)["holders"]] == [holder.pid]
    finally:
        holder.kill()
        holder.wait()
