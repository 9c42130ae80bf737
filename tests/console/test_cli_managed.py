"""`launch --managed` and `tpuconsole watch` as a user runs them: recovery with no TUI open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from console.cli import main
from console.sandbox.runtime import Sandbox
from tests.conftest import FAST

ZONE = "us-central2-b"
# The first attempt waits to be preempted; the recovered one ends at once.
RUN = (
    'echo "attempt $TPUCONSOLE_RECOVERY of $TPUCONSOLE_JOB"; '
    '[ "$TPUCONSOLE_RECOVERY" = 1 ] || sleep 600'
)


def write_config(tmp_path: Path, hook_log: Path) -> Path:
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "tpuconsole" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    hook = f'echo "$TPUCONSOLE_EVENT $TPUCONSOLE_JOB $TPUCONSOLE_STATUS" >> {hook_log}'
    bucket = tmp_path / "bucket-stand-in"  # the sandbox's stand-in for gs://
    config.write_text(
        f"[notify]\ncommand = {json.dumps(hook)}\n[jobs]\nlog_bucket = {json.dumps(str(bucket))}\n"
    )
    return bucket


def test_two_watch_processes_recover_a_preempted_managed_job_once(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    hook_log = tmp_path / "hook.log"
    bucket = write_config(tmp_path, hook_log)
    home = Path(os.environ["TPUCONSOLE_HOME"])
    with Sandbox.start(home, timing=FAST) as sandbox:
        assert main(["delete", "demo-spot-v4-8", "--yes"]) == 0  # its spot chips freed
        launch = ["launch", "--managed", "--spot", "--type", "v4-8", "--zone", ZONE]
        assert main([*launch, "--max-recoveries", "2", "managed-spot", "--", RUN]) == 0
        out = capsys.readouterr().out
        assert "started managed job" in out
        job_id = out.split("started managed job ")[1].split()[0]
        # No console follows it: what it writes reaches the bucket from the worker itself.
        copy = bucket / job_id / "w0.log"
        deadline = time.monotonic() + 60
        while not (copy.exists() and "attempt 0" in copy.read_text()):
            assert time.monotonic() < deadline, "the worker never copied its log"
            time.sleep(0.1)
        sandbox.fleet.preempt(ZONE, "managed-spot")  # `sandbox preempt`, in its server
        watch = [sys.executable, "-m", "console.cli", "watch", "--until-done", "--poll", "0.3"]
        watchers = [
            subprocess.Popen(watch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outs = [w.communicate(timeout=300) for w in watchers]
        assert [w.returncode for w in watchers] == [0, 0], outs
        assert main(["jobs", "--json"]) == 0
        jobs = {j["job_id"]: j for j in map(json.loads, capsys.readouterr().out.splitlines())}
    managed = jobs[job_id]
    assert managed["recoveries"] == 1 and managed["managed"]["state"] == "succeeded"
    [second] = [j for j in jobs.values() if j["attempt_of"] == job_id]
    assert second["status"] == "succeeded" and second["env"]["TPUCONSOLE_RECOVERY"] == "1"
    # One watcher acted, the other never did: one preemption, one recovery, one end.
    events = [line.split()[0] for line in hook_log.read_text().splitlines()]
    assert events == ["preempted", "recovered", "ended"], events
    said = "".join(o for o, _ in outs)
    assert said.count("recovered:") == 1, outs
    # The managed job's logs are every attempt's, in order, each named on stderr.
    assert main(["logs", job_id]) == 0
    shown = capsys.readouterr()
    assert shown.out.splitlines() == [f"[w0] attempt 0 of {job_id}", f"[w0] attempt 1 of {job_id}"]
    assert f"attempt 2 of {job_id}: run {second['job_id']}" in shown.err
