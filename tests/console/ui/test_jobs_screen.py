"""The job history screen: `x` stops a job after a confirmation, `R` runs it again."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from textual.widgets import DataTable, Static

from console.models import Job
from console.services.jobs import JobService
from console.services.session import Services
from console.ui.app import TpuConsoleApp
from console.ui.confirm_screen import ConfirmScreen
from console.ui.jobs_screen import JobsScreen, result_cell
from console.ui.log_screen import LogScreen
from tests.conftest import until


async def test_x_stops_the_job_and_r_runs_it_again(jobs: JobService, services: Services) -> None:
    fleet = jobs.remote.fleet
    node = await fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "sleep 60")
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("j")
        assert isinstance(app.screen, JobsScreen)
        await until(pilot, lambda: app.screen.query_one("#jobs").row_count == 1)
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        assert f"job {job.job_id}" in str(app.screen.query_one("#confirm").content)
        await pilot.press("y")
        await until(pilot, lambda: jobs.get(job.job_id).status == "killed")
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        again = app.screen.job
        assert again.job_id != job.job_id and again.command == "sleep 60"
        await jobs.stop(again, node, grace_s=0.2)


async def test_the_list_shows_each_jobs_result_or_its_first_known_failure(
    jobs: JobService,
    services: Services,
) -> None:
    fleet = jobs.remote.fleet
    node = await fleet.find_node("demo-v4-8")
    good = await jobs.launch(node, "all", "echo 'DONE: engines=4 wall_sec=1.250'")
    bad = await jobs.launch(
        node, "all", "echo 'RuntimeError: TPU is already in use by process 4242'; exit 1"
    )
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("j")
        table = app.screen.query_one("#jobs")
        for job in (good, bad):
            await jobs.follow(job, node, lambda w, t: None)
        # The list is read off the event loop: its rows arrive a moment after the screen.
        await until(pilot, lambda: bad.job_id in table.rows)
        await until(pilot, lambda: str(table.get_cell(bad.job_id, "result")) != "")
        assert str(table.get_cell(good.job_id, "result")) == "engines=4 wall_sec=1.250"
        assert str(table.get_cell(good.job_id, "status")) == "succeeded"
        assert str(table.get_cell(bad.job_id, "result")) == "w0: The TPU is already in use"
        # The table widens a column when it next lays out, not inside update_cell: wait for it.
        wide = len("w0: The TPU is already in use")
        await until(pilot, lambda: table.columns["result"].content_width >= wide)
        newest = await jobs.launch(node, "all", "true")  # launched while the list is open
        await until(pilot, lambda: table.ordered_rows[0].key.value == newest.job_id)
        assert [r.key.value for r in table.ordered_rows][1:] == [bad.job_id, good.job_id]


def test_a_training_job_row_shows_its_last_step_loss_and_reward() -> None:
    job = Job("5-abcdef", "n", "z", "python -u -m remote.grpo", datetime.now(UTC), kind="grpo")
    running = replace(job, metrics={"losses": {"0": [[1, 0.5], [2, -0.04]]}})
    assert result_cell(running).plain == "step 2 loss -0.04"
    rewarded = replace(running, metrics={**running.metrics, "rewards": {"0": [[2, 1.25]]}})
    assert result_cell(rewarded).plain == "step 2 loss -0.04 reward 1.25"


async def test_a_job_launched_elsewhere_shows_its_end_without_anyone_following_it(
    jobs: JobService,
    services: Services,
) -> None:
    from tests.conftest import worker_output

    fleet = jobs.remote.fleet
    node = await fleet.find_node("demo-v4-8")
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(160, 40)) as pilot:
        job = await jobs.launch(node, "all", "exit 4")  # as `tpuconsole launch` would, elsewhere
        rc = f".tpuconsole/jobs/{job.job_id}/rc"
        await worker_output(jobs.remote, node, f"until [ -f {rc} ]; do sleep 0.05; done")
        await pilot.press("j")
        table = app.screen.query_one("#jobs")
        await until(pilot, lambda: job.job_id in table.rows)
        await until(pilot, lambda: str(table.get_cell(job.job_id, "status")) == "failed")
        assert str(table.get_cell(job.job_id, "workers")) == "w0=4"


async def test_a_multi_line_command_is_one_row_line_in_j_and_whole_in_the_detail(
    jobs: JobService, services: Services
) -> None:
    """A script pasted as the command is one line in the list, its count of lines kept."""
    fleet = jobs.remote.fleet
    node = await fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "cd /tmp\n\necho first\necho [b]second[/b]")
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("j")
        assert isinstance(app.screen, JobsScreen)
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: job.job_id in {k.value for k in table.rows})
        cells = [str(c) for c in table.get_row(job.job_id)]
        shown = next(c for c in cells if "cd /tmp" in c)
        assert "\n" not in shown and shown.endswith("(+2 lines)")
        await pilot.press("d")  # the detail shows the whole command, markup and all, as text
        await until(pilot, lambda: "echo [b]second[/b]" in _screen_text(app))
        assert "echo first" in _screen_text(app)


def _screen_text(app: TpuConsoleApp) -> str:
    return "\n".join(str(s.content) for s in app.screen.query(Static))
