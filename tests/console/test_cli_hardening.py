"""The CLI as a careless user meets it: one sentence and exit 2 for each mistake, no traceback.

Each case runs through the real entry point (`main()`, or `python -m console.cli` where a
signal, a pipe or a memory limit is part of the case).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from console.adapters.history_db import HistoryStore
from console.cli import main
from console.models import Job, JobWorker
from console.sandbox.fleet_state import SandboxTiming
from console.sandbox.runtime import Sandbox


def home() -> Path:
    return Path(os.environ["TPUCONSOLE_HOME"])


def one_sentence(err: str) -> str:
    """stderr must end in one `tpuconsole:` sentence, with no traceback; lines before it may
    only be the console's own notes (what it does to reach the VMs)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("tpuconsole: ") for line in lines), err
    return lines[-1]


def cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "console.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
        **kw,
    )


# ----- item 11: an empty command ----------------------------------------------------------------
@pytest.mark.parametrize("command", ["", "   ", "\n\t"])
def test_launch_refuses_an_empty_command_and_records_nothing(
    command: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["launch", "demo-v4-8", "--", command]) == 2
    assert "the command is empty" in one_sentence(capsys.readouterr().err)
    assert main(["jobs"]) == 0
    assert capsys.readouterr().out == ""  # nothing was recorded


def test_exec_refuses_an_empty_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["exec", "demo-v4-8", "--", " "]) == 2
    assert "needs a command" in one_sentence(capsys.readouterr().err)


def test_a_multi_line_command_is_one_line_in_the_list_and_whole_in_show(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["launch", "demo-v4-8", "--", "echo first\necho second\necho third"]) == 0
    job_id = capsys.readouterr().out.split()[1]
    assert main(["jobs"]) == 0
    (row,) = capsys.readouterr().out.splitlines()
    assert row.startswith(job_id) and row.endswith("echo first … (+2 lines)")
    assert main(["jobs", "show", job_id]) == 0
    shown = capsys.readouterr().out.splitlines()
    at = shown.index("  command:")
    assert shown[at + 1 : at + 4] == ["    echo first", "    echo second", "    echo third"]


def test_an_empty_command_recorded_by_an_older_console_still_lists(
    capsys: pytest.CaptureFixture,
) -> None:
    history = HistoryStore(home() / "history.db")
    history.record_launch(
        Job("1-abcdef", "demo-v4-8", "us-central2-b", "", datetime.now(UTC), "custom",
            (JobWorker(0),), status="failed")
    )  # fmt: skip
    history.close()
    assert main(["jobs"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("(empty command)")
    assert main(["jobs", "show", "1"]) == 0
    assert "    (empty)" in capsys.readouterr().out.splitlines()


# ----- item 13 and 20: worker selections ---------------------------------------------------------
def _limit_memory() -> None:
    # 3 GB of address space: plenty for the CLI, far from a billion-element set.
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def test_a_huge_worker_range_is_refused_at_once_without_building_it() -> None:
    done = cli("exec", "demo-v4-8", "--worker", "0-999999999", "--", "true",
               preexec_fn=_limit_memory)  # fmt: skip
    assert done.returncode == 2
    sentence = one_sentence(done.stderr)
    assert "Workers 1-999999999 do not exist: the node has 1 worker (0-0)." in sentence


def test_logs_with_a_bad_worker_says_so_in_one_sentence(capsys: pytest.CaptureFixture) -> None:
    assert main(["launch", "demo-v4-8", "--follow", "--", "echo hi"]) == 0
    job_id = capsys.readouterr().out.split()[1]
    for selection, says in [
        ("5", "Worker 5 does not exist"),
        ("x", "Bad worker selection 'x'"),
        ("0-", "Bad worker selection '0-'"),
    ]:
        assert main(["logs", job_id, "--worker", selection]) == 2
        sentence = one_sentence(capsys.readouterr().err)
        assert says in sentence and f"Job {job_id} ran on w0." in sentence


def test_jobs_json_lists_what_the_history_holds(capsys: pytest.CaptureFixture) -> None:
    assert main(["launch", "demo-v4-8", "--", "echo a\necho b"]) == 0
    capsys.readouterr()
    assert main(["jobs", "--json"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["command"] == "echo a\necho b"


# ----- item 18: a template value that starts with a dash ----------------------------------------
def test_dry_run_shows_a_dash_leading_value_joined_to_its_flag(
    capsys: pytest.CaptureFixture,
) -> None:
    argv = ["launch", "multi-engine", "demo-v4-8", "--preset", "tiny-llama"]
    assert main([*argv, "--set", "prompt=-5+3=?", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "'--prompt=-5+3=?'" in out and "--prompt -5" not in out


# ----- item 20: one sentence, exit 2 -------------------------------------------------------------
@pytest.mark.parametrize("where", ["a-file", "a-file/below", "/dev/null/home"])
def test_a_data_directory_that_cannot_be_made_is_one_sentence(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("TPUCONSOLE_HOME", str(tmp_path / where))
    for argv in (["ls"], ["jobs"], ["launch", "demo-v4-8", "--", "true"], []):
        assert main(argv) == 2
        sentence = one_sentence(capsys.readouterr().err)
        assert "as the data directory" in sentence and "Set TPUCONSOLE_HOME" in sentence


def _a_history_with_one_job(capsys: pytest.CaptureFixture) -> Path:
    assert main(["launch", "demo-v4-8", "--", "echo kept"]) == 0
    capsys.readouterr()
    return home() / "history.db"


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_history_is_said_kept_and_replaced_only_when_asked(
    damage: str, capsys: pytest.CaptureFixture
) -> None:
    path = _a_history_with_one_job(capsys)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"\x00garbage" * 999)
    for extra in ("-wal", "-shm"):
        path.with_name(path.name + extra).unlink(missing_ok=True)
    damaged = path.read_bytes()
    for argv in (["jobs"], ["launch", "demo-v4-8", "--", "true"], ["create", "x", "--zone",
                 "us-central2-b", "--type", "v4-8"]):  # fmt: skip
        assert main(argv) == 2
        sentence = one_sentence(capsys.readouterr().err)
        assert f"The job history {path} is damaged" in sentence and "--fresh-history" in sentence
    (copy,) = path.parent.glob("history.db.damaged-*")
    assert copy.read_bytes() == damaged and path.read_bytes() == damaged  # nothing replaced
    assert main(["jobs", "--fresh-history"]) == 0
    assert f"the damaged one is kept at {copy}" in capsys.readouterr().err
    assert copy.read_bytes() == damaged
    assert main(["launch", "demo-v4-8", "--", "true"]) == 0 and main(["jobs"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # the launch line and one job


def test_a_history_from_a_newer_console_is_refused_untouched(
    capsys: pytest.CaptureFixture,
) -> None:
    import sqlite3

    path = _a_history_with_one_job(capsys)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    assert main(["jobs"]) == 2
    sentence = one_sentence(capsys.readouterr().err)
    assert "written by a newer tpuconsole (schema 99; this one reads up to" in sentence
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 99
    assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    db.close()


def _without_file_permission_override() -> list[str]:
    """Run as root without CAP_DAC_OVERRIDE, so that file modes bind it as they bind a user."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv is missing: a read-only file binds no one")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_a_read_only_history_is_one_sentence(capsys: pytest.CaptureFixture) -> None:
    path = _a_history_with_one_job(capsys)
    path.chmod(0o444)
    done = subprocess.run(
        [*_without_file_permission_override(), sys.executable, "-m", "console.cli", "jobs"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    sentence = one_sentence(done.stderr)
    assert f"The job history {path} cannot be written" in sentence and "chmod u+w" in sentence


def test_piping_into_head_stops_quietly(capsys: pytest.CaptureFixture) -> None:
    assert main(["launch", "demo-v4-8", "--follow", "--", "seq 1 200000"]) == 0
    job_id = capsys.readouterr().out.split()[1]
    for argv in (["logs", job_id], ["logs", job_id, "-f"]):
        reader = subprocess.Popen(
            [sys.executable, "-m", "console.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert reader.stdout is not None and reader.stderr is not None
        assert reader.stdout.readline() == "[w0] 1\n"
        reader.stdout.close()  # what head does after its first line
        err = reader.stderr.read()
        assert reader.wait(timeout=60) == 141  # as `seq 1 1e9 | head -1` ends
        assert err == ""  # no traceback, and nothing beneath head's output


@pytest.mark.parametrize(
    "line", ["zones = 5", 'zones = "us-central2-b"x', "zones = [1, 2]", "zone = true"]
)
def test_a_bad_zones_setting_in_config_toml_is_one_sentence(
    line: str, capsys: pytest.CaptureFixture
) -> None:
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "tpuconsole" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(line + "\n")
    assert main(["ls"]) == 2
    sentence = one_sentence(capsys.readouterr().err)
    assert str(config) in sentence


def test_ls_of_a_zone_the_project_does_not_have_says_so(capsys: pytest.CaptureFixture) -> None:
    assert main(["ls", "--zone", "nowhere-1"]) == 2
    sentence = one_sentence(capsys.readouterr().err)
    assert "nowhere-1 is not a zone of project tpuconsole-sandbox" in sentence
    assert "us-central2-b" in sentence  # the zones it has
    assert main(["ls", "--json", "--zone", "us-central2-b", "--zone", "nowhere-1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "nowhere-1 is not a zone" in one_sentence(captured.err)
    assert main(["ls", "--json", "--zone", "us-central2-b"]) == 0


HOLDER = Path(__file__).resolve().parents[1] / "hold_tpu.py"


def _holder_on(sandbox: Sandbox, *args: str) -> subprocess.Popen:
    """Start tests/hold_tpu.py on demo-v4-8 w0, outside any job; returned once it holds."""
    place = sandbox.worker_place(sandbox.fleet.get("us-central2-b", "demo-v4-8"), 0)
    place.materialise()
    shutil.copy(HOLDER, place.root / "hold_tpu.py")
    env = {**os.environ, **place.environment()}
    proc = subprocess.Popen(
        [sys.executable, "hold_tpu.py", *args],
        cwd=place.root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "holding\n"
    return proc


def test_clean_yes_exits_non_zero_when_the_tpu_is_still_held_after_the_plan(
    capsys: pytest.CaptureFixture,
) -> None:
    with Sandbox.start(home()) as sandbox:
        stale = _holder_on(sandbox, "chips").pid
        assert main(["launch", "demo-v4-8", "--force", "--", "python3 hold_tpu.py chips"]) == 0
        job_id = capsys.readouterr().out.split()[1]
        assert main(["clean", "demo-v4-8", "--yes"]) == 1
        captured = capsys.readouterr()
        assert f"SIGTERM pid {stale}" in captured.out  # the stale holder went, as planned
        sentence = one_sentence(captured.err)
        assert "demo-v4-8 w0: the TPU is still held after the cleanup: pid " in sentence
        assert f"running: job {job_id.split('-')[0]}" in sentence
        assert main(["stop", job_id, "--yes"]) == 0


# ----- item 19: Ctrl-C says what goes on ---------------------------------------------------------
def _wait_for(condition, what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def _interrupt(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_ctrl_c_during_create_wait_says_the_create_goes_on_and_how_to_follow_it() -> None:
    slow = SandboxTiming(create_s=120.0)
    with Sandbox.start(home(), timing=slow) as sandbox:
        create = subprocess.Popen(
            [sys.executable, "-m", "console.cli", "create", "sig-node", "--zone",
             "us-central2-b", "--type", "v4-8", "--wait"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert create.stdout is not None
        said = create.stdout.readline()  # the runtime the type's generation takes comes first
        assert said.startswith("create sig-node: RUNTIME") and "(default for v4)" in said
        assert create.stdout.readline().startswith("create sig-node (on-demand): CREATING")
        rc, err = _interrupt(create)
        assert rc == 130
        assert one_sentence(err) == (
            "tpuconsole: interrupted. The create of sig-node goes on in the sandbox; follow it "
            "with `tpuconsole ls --zone us-central2-b`, or delete the node with "
            "`tpuconsole delete sig-node --zone us-central2-b`."
        )
        assert sandbox.fleet.get("us-central2-b", "sig-node").state == "CREATING"
        sandbox.fleet.advance(now=time.time() + 121)  # the create went on without the CLI
        assert sandbox.fleet.get("us-central2-b", "sig-node").state == "READY"


def _remote_cleanup_of(pid: int) -> bool:
    """Whether the worker runs remote/probe.py's cleanup with a step for this pid right now."""
    step = f'"pid": {pid},'.encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"clean" in argv and any(step in a for a in argv):
            return True
    return False


def test_ctrl_c_during_clean_says_the_cleanup_goes_on_on_the_workers() -> None:
    with Sandbox.start(home()) as sandbox:
        stubborn = _holder_on(sandbox, "chips", "ignore-term")  # SIGKILL after the 10 s grace
        clean = subprocess.Popen(
            [sys.executable, "-m", "console.cli", "clean", "demo-v4-8", "--yes"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert clean.stdout is not None
        assert any(line.startswith("carrying out the plan") for line in clean.stdout)
        _wait_for(lambda: _remote_cleanup_of(stubborn.pid), "the cleanup running on the worker")
        rc, err = _interrupt(clean)
        assert rc == 130
        assert one_sentence(err) == (
            "tpuconsole: interrupted. The cleanup of demo-v4-8 may go on on the workers (a "
            "process is signalled and waited for there); `tpuconsole probe demo-v4-8` shows "
            "what is left."
        )
        _wait_for(lambda: stubborn.poll() is not None, "the stubborn holder killed", 30)
        assert stubborn.returncode == -signal.SIGKILL  # by the cleanup that went on
