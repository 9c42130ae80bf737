"""The log view of a job whose VM is gone reads its lines from `[jobs] log_bucket` (the
sandbox's stand-in for gs:// is a local folder) and says so in its banner."""

from __future__ import annotations

from pathlib import Path

from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from console.services.remote import RemoteService
from console.services.session import Services
from console.ui.app import TpuConsoleApp
from console.ui.jobs_screen import JobsScreen
from console.ui.log_screen import LogScreen
from tests.conftest import until
from tests.console.services.test_managed import eventually

ZONE = "us-central2-b"
NODE = "demo-v4-16"
RUN = 'for i in 1 2 3; do echo "line $i from $(basename $HOME)"; done; sleep 600'


async def test_the_log_view_of_a_job_whose_vm_was_deleted_shows_the_bucket_copy(
    sandbox: Sandbox, remote: RemoteService, jobs: JobService, tmp_path: Path
) -> None:
    bucket = tmp_path / "bucket-stand-in"
    with_bucket = JobService(remote, jobs.history, tmp_path / "home", log_bucket=str(bucket))
    node = await remote.fleet.find_node(NODE)
    job = await with_bucket.launch(node, "all", RUN)
    copies = [bucket / job.job_id / f"w{w}.log" for w in (0, 1)]
    # Nobody follows it: the lines reach the bucket from the workers alone.
    await eventually(lambda: all(c.exists() and "line 3" in c.read_text() for c in copies), 60)
    sandbox.fleet.delete(ZONE, NODE)
    await eventually(lambda: all(n.name != NODE for n in sandbox.fleet.list(ZONE)), 60)

    app = TpuConsoleApp(Services.build(with_bucket), mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.press("j")
        assert isinstance(app.screen, JobsScreen)
        await until(pilot, lambda: app.screen.query_one("#jobs").row_count == 1)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, LogScreen)
        await until(pilot, lambda: len(screen.index) == 6)
        lines = sorted(screen.index.visible_line(r) for r in range(len(screen.index.visible)))
        assert lines == [(w, f"line {i} from w{w}") for w in (0, 1) for i in (1, 2, 3)]
        banner = str(screen.query_one("#log-banner").content)
        assert f"{NODE} no longer exists; lines read from the bucket copy in {bucket}" in banner
        assert "the sandbox's stand-in for a bucket" in banner
    assert jobs.history.get(job.job_id).status == "lost"
