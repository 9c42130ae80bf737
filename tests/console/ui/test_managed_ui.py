"""The TUI as the watcher: the launch form's managed switch, recovery while it is open, the
notification, and RECOVERIES in the jobs table."""

from __future__ import annotations

import dataclasses

from textual.widgets import Checkbox, DataTable, Input, Select

from console.models import Job, ManagedState
from console.sandbox.runtime import Sandbox
from console.services.chip_metrics import ChipMetricsService, PollSettings
from console.services.jobs import JobService
from console.services.lifecycle import CreateRequest
from console.services.managed import ManagedSpec, NodeSpec, Step
from console.services.notify import Notifier
from console.services.session import Services
from console.ui.app import TpuConsoleApp
from console.ui.jobs_screen import JobsScreen
from console.ui.launch_screen import LaunchScreen
from console.ui.log_screen import LogScreen
from tests.conftest import cursor_to, fleet_row_keys, until
from tests.console.services.test_managed import ZONE, free_the_spot_quota, managed_for

NODE = "tui-spot-v4-8"
RUN = 'echo "attempt $TPUCONSOLE_RECOVERY"; [ "$TPUCONSOLE_RECOVERY" = 1 ] || sleep 600'


async def test_a_managed_launch_from_the_form_is_recovered_while_the_tui_is_open(
    sandbox: Sandbox, jobs: JobService
) -> None:
    managed = managed_for(jobs.remote, jobs, jobs.history, Notifier())
    await free_the_spot_quota(managed)
    await managed.lifecycle.create(CreateRequest(NODE, ZONE, "v4-8", spot=True))
    app = TpuConsoleApp(Services.build(jobs), mode="SANDBOX", managed=managed)
    key = f"{ZONE}/{NODE}"
    async with app.run_test(size=(160, 50)) as pilot:
        await until(pilot, lambda: key in fleet_row_keys(app))
        await cursor_to(pilot, key)
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, LaunchScreen)
        form.query_one("#template", Select).value = "custom"
        await until(pilot, lambda: bool(form.query("#p-command")))
        form.query_one("#p-command", Input).value = RUN
        form.query_one("#managed", Checkbox).value = True
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        job: Job = app.screen.job
        assert jobs.history.managed(job.job_id) is not None
        sandbox.fleet.preempt(ZONE, NODE)

        def recovered() -> bool:
            record = jobs.history.managed(job.job_id)
            return record is not None and record.recoveries == 1

        await until(pilot, recovered, limit=30_000)
        texts = [n.message for n in app._notifications]
        await until(pilot, lambda: any("recovered on" in n.message for n in app._notifications))
        assert any("preempted" in t for t in texts), texts
        await pilot.press("escape", "j")
        assert isinstance(app.screen, JobsScreen)
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: job.job_id in {k.value for k in table.rows})
        row = [str(c) for c in table.get_row(job.job_id)]
        assert row[2] == "1"  # RECOVERIES


async def test_a_managed_job_gone_stuck_is_a_warning_notification_in_the_tui(
    jobs: JobService,
) -> None:
    quick = PollSettings(interval_s=0.5, holders_every_s=1.5, recheck_holders_s=0.5)
    services = Services.build(jobs)
    chips = ChipMetricsService.for_remote(
        jobs.remote, services.prober, settings=quick, standin=True
    )
    managed = managed_for(
        jobs.remote, jobs, jobs.history, Notifier(), chips=chips, stuck_after_s=2.0
    )
    job = await managed.launch(
        ManagedSpec(NodeSpec("demo-v4-8", (ZONE,)), Step(command="echo waiting; sleep 600"))
    )
    app = TpuConsoleApp(dataclasses.replace(services, chips=chips), mode="SANDBOX", managed=managed)
    try:
        async with app.run_test(size=(160, 50)) as pilot:

            def stuck() -> list:
                return [n for n in app._notifications if "Stuck?" in n.message]

            await until(pilot, lambda: bool(stuck()), limit=6000)
            [toast] = stuck()
            assert toast.severity == "warning" and job.job_id in toast.message
    finally:
        jobs.history.set_managed(job.job_id, state=ManagedState.CANCELLED)
        node = await jobs.remote.fleet.get_node(ZONE, "demo-v4-8")
        await jobs.stop(jobs.get(job.job_id), node, grace_s=1)
