"""The issue's error cases, each one sentence of what happened and what to do, and exit 2.

Through the real entry point (`main()`), on the sandbox the test session provides.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from console.cli import main
from tests.console.test_cli_hardening import one_sentence


def test_logs_of_a_worker_the_job_did_not_run_on_is_one_sentence(
    capsys: pytest.CaptureFixture,
) -> None:
    """`logs 1 --worker 7` used to end in a bare ValueError's traceback."""
    assert main(["launch", "demo-v4-8", "--", "echo hi"]) == 0
    job_id = capsys.readouterr().out.split()[1]
    assert main(["logs", job_id.split("-")[0], "--worker", "7"]) == 2
    sentence = one_sentence(capsys.readouterr().err)
    assert "Worker 7 does not exist" in sentence and f"Job {job_id} ran on w0." in sentence


def test_a_history_from_a_newer_version_is_exit_2_not_1(capsys: pytest.CaptureFixture) -> None:
    assert main(["launch", "demo-v4-8", "--", "true"]) == 0
    capsys.readouterr()
    db = sqlite3.connect(Path(os.environ["TPUCONSOLE_HOME"]) / "history.db")
    db.execute("PRAGMA user_version = 99")
    db.close()
    for argv in (["jobs"], ["logs", "1"], ["launch", "demo-v4-8", "--", "true"]):
        assert main(argv) == 2, argv
        assert "written by a newer tpuconsole" in one_sentence(capsys.readouterr().err)


def test_a_typo_in_config_toml_is_refused_not_the_sandbox(capsys: pytest.CaptureFixture) -> None:
    """`projcet = "p"` used to be ignored: the console opened on the sandbox as if unset."""
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "tpuconsole" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('projcet = "p"\n')
    assert main(["ls"]) == 2
    captured = capsys.readouterr()
    assert "SANDBOX" not in captured.out
    sentence = one_sentence(captured.err)
    assert f"Unknown key 'projcet' in {config}." in sentence and "Did you mean project?" in sentence
