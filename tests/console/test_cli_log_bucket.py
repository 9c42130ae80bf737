"""`tpuconsole logs` of a job whose VM is gone, read back from `[jobs] log_bucket` (the sandbox's
stand-in for gs:// is a local folder): every line the workers wrote, and one line saying so."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from console.cli import main
from console.sandbox.runtime import Sandbox
from tests.conftest import FAST

ZONE = "us-central2-b"
NODE = "demo-v4-16"
# Lines written while no console follows, then a wait the VM's end cuts short.
RUN = 'for i in 1 2 3; do echo "line $i from $(basename $HOME)"; done; sleep 600'


def with_bucket(tmp_path: Path) -> Path:
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "tpuconsole" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    bucket = tmp_path / "bucket-stand-in"  # the sandbox's stand-in for gs://
    config.write_text(f"[jobs]\nlog_bucket = {json.dumps(str(bucket))}\n")
    return bucket


def wait_for(condition, what: str, limit_s: float = 60.0) -> None:
    """A condition, never a fixed sleep; the limit only turns a hang into a failure."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_logs_of_a_job_whose_vm_was_deleted_or_recreated_come_from_the_bucket(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bucket = with_bucket(tmp_path)
    home = Path(os.environ["TPUCONSOLE_HOME"])
    expected = [f"[w{w}] line {i} from w{w}" for w in (0, 1) for i in (1, 2, 3)]
    with Sandbox.start(home, timing=FAST) as sandbox:
        assert main(["launch", NODE, "--zone", ZONE, "--", RUN]) == 0
        job_id = capsys.readouterr().out.split("job ")[1].split()[0]
        copies = [bucket / job_id / f"w{w}.log" for w in (0, 1)]
        wait_for(
            lambda: all(c.exists() and "line 3" in c.read_text() for c in copies),
            "the workers never copied their logs",
        )
        sandbox.fleet.delete(ZONE, NODE)
        wait_for(lambda: all(n.name != NODE for n in sandbox.fleet.list(ZONE)), "not deleted")

        assert main(["logs", job_id.split("-")[0]]) == 0
        shown = capsys.readouterr()
        assert shown.out.splitlines() == expected
        [said] = [line for line in shown.err.splitlines() if "bucket" in line]
        assert f"{NODE} no longer exists; lines read from the bucket copy in {bucket}" in said
        assert "(w0, w1, " in said

        # A new VM of the same name is not the job's: its lines still come from the bucket.
        assert main(["create", NODE, "--type", "v4-16", "--zone", ZONE]) == 0
        capsys.readouterr()
        assert main(["logs", job_id]) == 0
        shown = capsys.readouterr()
        assert shown.out.splitlines() == expected
        assert f"{NODE} was created again after job {job_id} started; lines read" in shown.err
        assert main(["jobs", "show", job_id, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["status"] == "lost"
