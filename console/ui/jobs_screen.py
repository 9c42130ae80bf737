"""`j`: the job history, newest first; `enter` opens a job's logs."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from console.models import FleetError, Job
from console.ui.base_screens import ConsoleScreen
from console.ui.plain import PlainTable

RELOAD_S = 2.0
SETTLE_S = 10.0  # how often jobs nobody here follows are looked up on their workers
COLUMNS = ("job", "status", "recoveries", "node", "workers", "started", "result", "command")


COMMAND_WIDTH = 60


def _cells(job: Job) -> tuple[str | Text, ...]:
    return (
        job.job_id,
        job.managed.state if job.managed is not None else job.status,
        recoveries_cell(job),
        job.node_key,
        " ".join(f"w{w.worker}" + (f"={w.rc}" if w.rc is not None else "") for w in job.workers),
        job.started_at.astimezone().strftime("%m-%d %H:%M:%S"),
        result_cell(job),
        job.short_command(COMMAND_WIDTH),
    )


def recoveries_cell(job: Job) -> str:
    """SkyPilot's #RECOVERIES: a managed job's count; a later attempt points at its job."""
    if job.managed is not None:
        return str(job.managed.recoveries)
    if job.attempt_of:
        return f"↳ {job.attempt_of}"
    return ""


def result_cell(job: Job) -> Text:
    """The first known failure, else how far it got: the line a user scans the list for."""
    if job.diagnoses:
        d = job.diagnoses[0]
        where = f"w{d.worker}: " if d.worker is not None else ""
        more = f" (+{len(job.diagnoses) - 1})" if len(job.diagnoses) > 1 else ""
        return Text(f"{where}{d.title}{more}"[:48], style="bold red")
    losses = job.metrics.get("losses") or {}
    done = job.metrics.get("done") or {}
    if done:
        first = next(iter(done.values()))
        return Text(first.removeprefix("DONE: ")[:48], style="green")
    if losses:
        step, loss = next(iter(losses.values()))[-1]
        rewards = next(iter((job.metrics.get("rewards") or {}).values()), None)
        reward = f" reward {rewards[-1][1]:.4g}" if rewards else ""
        return Text(f"step {step} loss {loss:.4g}{reward}")
    return Text("")


class JobsTable(PlainTable):
    BINDINGS = [Binding("enter", "select_cursor", "Logs")]


class JobsScreen(ConsoleScreen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("r", "reload", "Refresh"),
        Binding("x", "stop_job", "Stop job"),
        Binding("R", "rerun", "Re-run"),
        Binding("d", "describe", "Describe"),
        Binding("t", "stacks", "Stacks"),
        Binding("question_mark", "app.help", "Help"),
    ]

    def __init__(self, node_key: str = "") -> None:
        super().__init__()
        self.node_key = node_key
        self.jobs: dict[str, Job] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="jobs-empty", markup=False)
        table = JobsTable(id="jobs", cursor_type="row", zebra_stripes=True)
        for key in COLUMNS:
            table.add_column(key.upper(), key=key)
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.app.mode} · jobs" + (
            f" on {self.node_key}" if self.node_key else ""
        )
        self.action_reload()
        # Jobs end and results arrive while the list is open: keep it current, as k9s does.
        self.set_interval(RELOAD_S, self.action_reload)
        self._settle_ended()
        self.set_interval(SETTLE_S, self._settle_ended)

    @work(exclusive=True, group="jobs-settle")
    async def _settle_ended(self) -> None:
        """A job launched elsewhere (the CLI, another console) ends unwatched: show that."""
        if await self.services.jobs.settle_ended():
            self.action_reload()

    def action_reload(self) -> None:
        self._reload()

    @work(exclusive=True, group="jobs-reload")
    async def _reload(self) -> None:
        """The history read on a thread (a busy SQLite file must not freeze the keys)."""
        recent = await asyncio.to_thread(self.services.history.recent, 200)
        if not self.is_attached:
            return  # closed meanwhile
        self._show([j for j in recent if not self.node_key or j.node_key == self.node_key])

    def _show(self, jobs: list[Job]) -> None:
        table = self.query_one("#jobs", DataTable)
        self.jobs = {j.job_id: j for j in jobs}
        order = [j.job_id for j in jobs]
        if order != [row.key.value for row in table.ordered_rows]:
            # New jobs belong at the top: rebuild in order, the cursor staying on its job.
            kept = self._cursor_job()
            table.clear()
            for job in jobs:
                table.add_row(*_cells(job), key=job.job_id)
            if kept is not None and kept.job_id in order:
                table.move_cursor(row=order.index(kept.job_id))
        else:
            for job in jobs:
                for column, value in zip(COLUMNS, _cells(job), strict=True):
                    table.update_cell(job.job_id, column, value, update_width=True)
        empty = self.query_one("#jobs-empty", Static)
        empty.update("No jobs yet. `n` on a node launches one (or `tpuconsole launch`).")
        empty.display = not jobs

    @on(DataTable.RowSelected, "#jobs")
    def _open(self, event: DataTable.RowSelected) -> None:
        from console.ui.log_screen import LogScreen

        job = self.jobs.get(event.row_key.value or "")
        if job is not None:
            self.app.push_screen(LogScreen(job))

    def _cursor_job(self) -> Job | None:
        table = self.query_one("#jobs", DataTable)
        if table.row_count == 0:
            return None
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return self.jobs.get(key.value or "")

    def action_describe(self) -> None:
        """The whole record, the command in full, as `tpuconsole jobs show` prints it."""
        job = self._cursor_job()
        if job is not None:
            self._describe(job)

    @work(group="job-describe")
    async def _describe(self, job: Job) -> None:
        from console.ui.job_detail import JobDetailScreen

        record = await asyncio.to_thread(self.services.history.get, job.job_id)
        self.app.push_screen(JobDetailScreen(record or job))

    def action_stacks(self) -> None:
        """Every worker's stacks of the job under the cursor, side by side."""
        from console.ui.stacks_screen import StacksScreen

        job = self._cursor_job()
        if job is None:
            return
        if not job.open:
            self.notify(
                f"Job {job.job_id} is not running ({job.status}): no stacks to take.",
                severity="warning",
            )
            return
        self.app.push_screen(StacksScreen(job))

    def action_stop_job(self) -> None:
        from console.ui.confirm_screen import ConfirmScreen

        job = self._cursor_job()
        if job is None:
            return
        lines = [
            f"SIGTERM every process of job {job.job_id} on w{w.worker} (its session, "
            f"led by pid {w.pid}), SIGKILL after 10 s"
            for w in job.workers
            if w.pid
        ]

        def answered(yes: bool | None) -> None:
            if yes:
                self._stop(job)

        self.app.push_screen(
            ConfirmScreen(f"Stop job {job.job_id} on {job.node}?", lines), answered
        )

    @work(group="job-control")
    async def _stop(self, job: Job) -> None:
        try:
            node = await self.services.fleet.get_node(job.zone, job.node)
            outcome = await self.services.jobs.stop(job, node)
        except FleetError as exc:
            self.show_error(f"Stop {job.job_id}", exc)
            return
        self.notify(
            f"Job {job.job_id}: " + ", ".join(f"w{w} {v}" for w, v in sorted(outcome.items()))
        )
        self.action_reload()

    @work(group="job-control")
    async def action_rerun(self) -> None:
        from console.ui.log_screen import LogScreen

        job = self._cursor_job()
        if job is None:
            return
        try:
            node = await self.services.fleet.get_node(job.zone, job.node)
            again = await self.services.jobs.rerun(job, node)
        except FleetError as exc:
            self.show_error(f"Re-run {job.job_id}", exc)
            return
        self.action_reload()
        self.app.push_screen(LogScreen(again))
