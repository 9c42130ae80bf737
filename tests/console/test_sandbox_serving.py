"""Serving the sandbox as users meet it: killed and served again, quit under its followers,
nodes deleted under a job, and any number of commands at once on a sandbox nobody serves.

Every process here is a real `tpuconsole` process; the servers are killed as a user kills them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from console.adapters.history_db import HistoryStore
from console.sandbox.runtime import Sandbox, home_claimed, read_served_endpoint
from console.services.jobs import JobService
from console.services.session import Services
from console.services.settings import resolve_settings
from console.ui.app import TpuConsoleApp
from console.ui.confirm_screen import ConfirmScreen
from console.wiring import open_fleet_source
from tests.conftest import FAST, until

LIMIT_S = 120.0  # turns a hang into a failure; none of these waits is a measurement


def _home() -> Path:
    return Path(os.environ["TPUCONSOLE_HOME"])


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "console.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _run(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "console.cli", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=LIMIT_S,
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


class Reader:
    """A process's stdout lines as they arrive, read on a thread so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, text: str) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: text in self.lines or not self._thread.is_alive(), LIMIT_S
            )
        assert ok and text in self.lines, f"never printed {text!r}: {self.lines[-5:]}"

    def finish(self) -> tuple[int, list[str], str]:
        rc = self.proc.wait(timeout=LIMIT_S)
        self._thread.join(LIMIT_S)
        assert self.proc.stderr is not None
        return rc, self.lines, self.proc.stderr.read()


def _serve() -> Reader:
    served = Reader(_cli("sandbox", "serve"))
    served.wait_for("serving; Ctrl-C to stop")
    return served


def _launch(command: str, node: str = "demo-v4-8") -> str:
    out = _run("launch", node, "--", command).stdout
    return out.split()[1]  # "job 1-ab12cd running on ..."


# A job whose first half is written before the test disturbs the sandbox and whose second half
# waits for the test's go (a file it names), so the disturbance always falls mid-job.
def _gated(gate: Path) -> str:
    return (
        "for i in $(seq 1 100); do echo line $i; done; "
        f"while [ ! -e {gate} ]; do sleep 0.05; done; "
        "for i in $(seq 101 200); do echo line $i; done"
    )


ALL_LINES = [f"[w0] line {i}" for i in range(1, 201)]


def _copies_match(job: str) -> None:
    """The local copy is byte for byte the worker's log (in the worker's folder, README)."""
    [remote] = _home().glob(f"sandbox/workers/*/w0/.tpuconsole/jobs/{job}/log")
    assert (_home() / "logs" / job / "w0.log").read_bytes() == remote.read_bytes()


def _stop(reader: Reader, sig: int = signal.SIGTERM) -> None:
    if reader.proc.poll() is None:
        reader.proc.send_signal(sig)
        reader.proc.wait(timeout=LIMIT_S)


def test_logs_follow_resumes_when_the_sandbox_is_killed_and_served_again(tmp_path: Path) -> None:
    first = _serve()
    second = None
    try:
        job = _launch(_gated(tmp_path / "go"))
        follower = Reader(_cli("logs", job, "-f"))
        follower.wait_for("[w0] line 100")
        first.proc.kill()  # as `kill -9` does: no goodbye, a stale serve.json left behind
        first.proc.wait(timeout=LIMIT_S)
        second = _serve()
        (tmp_path / "go").touch()
        rc, lines, err = follower.finish()
        assert (rc, lines) == (0, ALL_LINES), err
        served = read_served_endpoint(_home())
        assert served is not None and served.pid == second.proc.pid
        assert f"going on with the one pid {second.proc.pid} serves" in err.splitlines()[-2]
        assert err.splitlines()[-1] == "tpuconsole: w0 rc=0"
        _copies_match(job)
    finally:
        _stop(first)
        if second is not None:
            _stop(second)


def test_a_joined_follower_takes_over_when_the_server_quits_and_the_others_follow(
    tmp_path: Path,
) -> None:
    server = _serve()
    try:
        gate = _gated(tmp_path / "go")
        jobs = [_launch(gate), _launch(gate, "demo-v4-16")]
        _run("create", "made-before", "--zone", "us-central1-a", "--type", "v3-8")
        followers = [Reader(_cli("logs", job, "-f", "--worker", "0")) for job in jobs]
        for follower in followers:
            follower.wait_for("[w0] line 100")
        _stop(server)  # the console that served quits
        (tmp_path / "go").touch()
        for job, follower in zip(jobs, followers, strict=True):
            rc, lines, err = follower.finish()
            assert (rc, lines) == (0, ALL_LINES), err
            _copies_match(job)
        taken = json.loads((_home() / "sandbox" / "serve.json").read_text())
        assert taken["background"] and taken["pid"] not in {server.proc.pid}
        rows = map(json.loads, _run("ls", "--json").stdout.splitlines())
        listed = [r["name"] for r in rows if "name" in r]  # requests follow, without `name`
        assert "made-before" in listed  # served again from the saved state
    finally:
        _stop(server)


@pytest.mark.parametrize(
    ("fate", "said"),
    [("delete", ("is being deleted", "was deleted")), ("preempt", ("was preempted",))],
)
def test_logs_follow_ends_at_once_with_the_fate_of_a_node_gone_mid_job(
    fate: str, said: tuple[str, ...]
) -> None:
    zone, name = "us-central1-a", "short-lived"  # europe-west4-a has no spot v5e capacity
    with Sandbox.start(_home(), timing=FAST) as sandbox:
        # v3: spot v5e has no capacity in this zone (SPOT_STOCKOUTS), spot v3 has.
        sandbox.fleet.create(zone, name, "v3-8", "tpu-ubuntu2204-base", spot=True)
        for _ in range(int(LIMIT_S / 0.05)):
            if sandbox.worker_address(zone, name, 0) is not None:
                break
            time.sleep(0.05)
        job = _launch("echo started; exec sleep 600", name)
        pid = int(json.loads(_run("jobs", "show", job, "--json").stdout)["workers"][0]["pid"])
        follower = Reader(_cli("logs", job, "-f"))
        follower.wait_for("[w0] started")
        if fate == "delete":
            sandbox.fleet.delete(zone, name)
        else:
            sandbox.fleet.preempt(zone, name)
        # Once the API says so, not after ssh's outage budget (it was 5 minutes).
        rc, lines, err = follower.finish()
        assert (rc, lines) == (1, ["[w0] started"])
        [sentence] = err.strip().splitlines()
        assert any(
            sentence.startswith(f"tpuconsole: {name} {s} while job {job} ran;") for s in said
        )
        assert sentence.endswith(
            f"its processes went with it, and `tpuconsole logs {job.split('-')[0]}` shows every "
            "line it wrote."
        )
        record = json.loads(_run("jobs", "show", job, "--json").stdout)
        assert record["status"] == "lost" and name in record["note"]
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_any_number_of_commands_at_once_on_a_sandbox_nobody_serves() -> None:
    with Sandbox.start(_home(), timing=FAST):
        job = _launch("echo up; exec sleep 600")
        pid = int(json.loads(_run("jobs", "show", job, "--json").stdout)["workers"][0]["pid"])
    assert not home_claimed(_home())  # nobody serves it now
    commands = [
        ("ls",),
        ("ls", "--json"),
        ("exec", "demo-v4-8", "--", "echo", "a"),
        ("exec", "demo-v4-16", "--", "echo", "b"),
        ("launch", "demo-v4-8", "--", "echo", "c"),
        ("launch", "demo-v4-16", "--", "echo", "d"),
        ("stop", job, "--yes"),
        ("jobs",),
    ]
    running = [_cli(*c) for c in commands]
    done = {}
    for command, proc in zip(commands, running, strict=True):
        out, err = proc.communicate(timeout=LIMIT_S)
        done[command] = (proc.returncode, out, err)
    for command, (rc, out, err) in done.items():
        assert rc == 0, (command, out, err)
    assert done[commands[2]][1] == "[w0] a\n"
    assert sorted(done[commands[3]][1].splitlines()) == ["[w0] b", "[w1] b"]
    assert done[commands[6]][1].startswith("w0: stopped")
    record = json.loads(_run("jobs", "show", job, "--json").stdout)
    assert record["status"] == "killed"
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    listed = _run("jobs", "--json").stdout.splitlines()
    numbers = [json.loads(line)["job_id"].split("-")[0] for line in listed]
    assert len(numbers) == len(set(numbers)) == 3  # concurrent launches get numbers of their own


def test_a_commands_background_server_gives_way_to_one_a_user_starts_and_then_stops() -> None:
    _run("ls")  # nobody served: it started a background server and joined it
    background = read_served_endpoint(_home())
    assert background is not None and background.background
    with Sandbox.start(_home(), ssh=False) as mine:  # as `tpuconsole sandbox serve` does
        assert mine.replaced == background
        assert read_served_endpoint(_home()) == mine.endpoint
        _run("ls")  # joins this one; starts nothing
        assert read_served_endpoint(_home()) == mine.endpoint
    _run("ls")
    again = read_served_endpoint(_home())
    assert again is not None and again.background
    for _ in range(int(LIMIT_S / 0.05)):  # nobody uses it now: it stops by itself
        if not home_claimed(_home()):
            break
        time.sleep(0.05)
    assert not home_claimed(_home())
    assert "stopping: no process used it for 5 s" in (_home() / "sandbox" / "serve.log").read_text()


async def test_the_tui_asks_before_quitting_under_the_processes_it_serves() -> None:
    settings = resolve_settings(project="", zones=[], sandbox=True, home=str(_home()))
    source = open_fleet_source(settings, serve_here=True)
    other = _cli("exec", "demo-v4-8", "--", "sleep", "600")
    try:
        assert source.sandbox is not None  # this console serves it
        for _ in range(int(LIMIT_S / 0.05)):
            if source.stranded_by_quit():
                break
            time.sleep(0.05)
        [named] = source.stranded_by_quit()
        assert named.startswith(f"pid {other.pid}: ") and "exec demo-v4-8 -- sleep 600" in named
        jobs = JobService(
            source.remote(), HistoryStore(settings.home / "history.db"), settings.home
        )
        app = TpuConsoleApp(
            Services.build(jobs),
            mode="SANDBOX",
            probe_interval_s=None,
            others_using=source.stranded_by_quit,
        )
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            shown = " ".join(app.screen.lines) + app.screen.title_text
            assert "1 other process uses it" in shown and named in shown
            await pilot.press("n")
            await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
            assert app.is_running
            other.kill()
            other.wait(timeout=LIMIT_S)
            await pilot.press("q")  # nobody left to strand: it quits without asking
            await until(pilot, lambda: not app.is_running)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        source.close()


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    """A background server a test started stops with the test's home, not minutes later."""
    yield
    from console.sandbox.serving import stop_background

    stop_background(_home())
