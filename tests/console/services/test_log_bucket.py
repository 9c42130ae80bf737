"""`[jobs] log_bucket`: the workers copy their logs as they go, so lines written while no console
follows survive the VM. The sandbox stands a local folder in for the gs:// bucket."""

from __future__ import annotations

from pathlib import Path

from console.adapters.history_db import HistoryStore
from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from console.services.remote import RemoteService
from tests.console.services.test_managed import eventually

ZONE = "us-central2-b"


async def test_the_log_copy_outlives_the_deleted_vm_with_lines_no_console_followed(
    sandbox: Sandbox, remote: RemoteService, tmp_path: Path
) -> None:
    bucket = tmp_path / "bucket-stand-in"
    history = HistoryStore(tmp_path / "history.db")
    jobs = JobService(remote, history, tmp_path / "home", log_bucket=str(bucket))
    try:
        node = await remote.fleet.find_node("demo-v4-16")
        job = await jobs.launch(node, "all", 'echo "early from $(basename $HOME)"; sleep 600')
        copies = [bucket / job.job_id / f"w{w}.log" for w in (0, 1)]
        # Nobody follows the job: the workers copy on their own.
        await eventually(lambda: all(c.exists() and "early" in c.read_text() for c in copies), 60)
        sandbox.fleet.delete(ZONE, "demo-v4-16")
        await eventually(
            lambda: (
                not list(sandbox.fleet.list(ZONE))
                or all(n.name != "demo-v4-16" for n in sandbox.fleet.list(ZONE))
            ),
            60,
        )
        assert [c.read_text() for c in copies] == ["early from w0\n", "early from w1\n"]
    finally:
        history.close()


async def test_a_job_that_ends_leaves_its_whole_log_in_the_bucket(
    remote: RemoteService, tmp_path: Path
) -> None:
    bucket = tmp_path / "bucket-stand-in"
    history = HistoryStore(tmp_path / "history.db")
    jobs = JobService(remote, history, tmp_path / "home", log_bucket=str(bucket))
    try:
        node = await remote.fleet.find_node("demo-v4-8")
        job = await jobs.launch(node, "all", "seq 1 3; sleep 0.5; echo last")
        await jobs.follow(job, node, lambda w, t: None)
        copy = bucket / job.job_id / "w0.log"
        await eventually(lambda: copy.exists() and copy.read_text().endswith("last\n"), 60)
        assert copy.read_text() == "1\n2\n3\nlast\n"
    finally:
        history.close()
