"""`j`: the job history, newest first; `enter` opens a job's logs."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from console.models import Job


class JobsTable(DataTable):
    BINDINGS = [Binding("enter", "select_cursor", "Logs")]


class JobsScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("r", "reload", "Refresh"),
        Binding("question_mark", "app.help", "Help"),
    ]

    DEFAULT_CSS = "JobsScreen #jobs-empty { padding: 1 2; color: $text-muted; }"

    def __init__(self, node_key: str = "") -> None:
        super().__init__()
        self.node_key = node_key
        self.jobs: dict[str, Job] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="jobs-empty")
        table = JobsTable(id="jobs", cursor_type="row", zebra_stripes=True)
        for title in ("JOB", "STATUS", "NODE", "WORKERS", "STARTED", "COMMAND"):
            table.add_column(title, key=title.lower())
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.app.mode} · jobs" + (
            f" on {self.node_key}" if self.node_key else ""
        )
        self.action_reload()

    def action_reload(self) -> None:
        table = self.query_one("#jobs", DataTable)
        jobs = [
            j
            for j in self.app.jobs.history.recent(200)
            if not self.node_key or j.node_key == self.node_key
        ]
        self.jobs = {j.job_id: j for j in jobs}
        for key in list(table.rows):
            if key.value not in self.jobs:
                table.remove_row(key)
        for job in jobs:
            cells = (
                job.job_id,
                job.status,
                job.node_key,
                " ".join(
                    f"w{w.worker}" + (f"={w.rc}" if w.rc is not None else "") for w in job.workers
                ),
                job.started_at.astimezone().strftime("%m-%d %H:%M:%S"),
                job.command.strip().splitlines()[-1][:80],
            )
            if job.job_id in table.rows:
                for column, value in zip(
                    ("job", "status", "node", "workers", "started", "command"), cells, strict=True
                ):
                    table.update_cell(job.job_id, column, value)
            else:
                table.add_row(*cells, key=job.job_id)
        self.query_one("#jobs-empty", Static).update(
            "" if jobs else "No jobs yet. Start one with `tpuconsole launch NODE -- CMD`."
        )

    @on(DataTable.RowSelected, "#jobs")
    def _open(self, event: DataTable.RowSelected) -> None:
        from console.ui.log_screen import LogScreen

        self.app.push_screen(LogScreen(self.jobs[event.row_key.value]))
