"""The CLI as a careless user meets it: one sentence and exit 2 for each mistake, no traceback.

Each case runs through the real entry point (`main()`, or `python -m console.cli` where a
signal, a pipe or a memory limit is part of the case).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from console.adapters.history_db import HistoryStore
from console.cli import main
from console.models import Job, JobWorker

HOME = Path(os.environ.get("TPUCONSOLE_HOME", "."))


def home() -> Path:
    return Path(os.environ["TPUCONSOLE_HOME"])


def one_sentence(err: str) -> str:
    """stderr must be one `tpuconsole:` line, with no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tpuconsole: "), err
    return lines[0]


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


@pytest.mark.parametrize(
    ("selection", "says"),
    [("5", "Worker 5 does not exist"), ("x", "Bad worker selection 'x'"), ("0-", "Bad worker")],
)
def test_logs_with_a_bad_worker_says_so_in_one_sentence(
    selection: str, says: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["launch", "demo-v4-8", "--follow", "--", "echo hi"]) == 0
    job_id = capsys.readouterr().out.split()[1]
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
