"""Every worker's thread stacks of one job, side by side, grouped, the worker that differs named.

`t` on a job (the jobs list, its log) opens it; `r` takes them again. The stacks are taken by
services/stacks.py (SIGUSR1 to our runners, py-spy for other Python programs) on every worker at
once, and laid out by present/stacks.py, as `tpuconsole stacks JOB` prints them.
"""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Header, Static

from console.models import FleetError, Job, StacksReport
from console.present.stacks import report_lines
from console.ui.base_screens import ConsoleScreen


def report_text(report: StacksReport) -> Text:
    """The report's lines; the ones pointing at a worker that differs stand out."""
    out = Text(no_wrap=True, overflow="ellipsis")
    # The title is the screen's subtitle and the verdict its first line: the rest from here.
    for i, line in enumerate(report_lines(report)[3:]):
        if i:
            out.append("\n")
        style = ""
        if "◀" in line or line.startswith("Look at"):
            style = "bold yellow"
        elif line.startswith("── w"):
            style = "bold"
        elif line.startswith("  could not be asked"):
            style = "red"
        out.append(line, style=style)
    return out


class StacksScreen(ConsoleScreen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.pop_screen", "Back", show=False),
        Binding("r", "take", "Take again"),
        Binding("question_mark", "app.help", "Help"),
    ]

    def __init__(self, job: Job) -> None:
        super().__init__()
        self.job = job
        self.report: StacksReport | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="stacks-verdict", markup=False)
        with VerticalScroll():
            yield Static("", id="stacks-body", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.app.mode} · stacks of job {self.job.job_id} on {self.job.node}"
        self.action_take()

    def action_take(self) -> None:
        self.query_one("#stacks-verdict", Static).update(
            f"Taking every worker's stacks of job {self.job.job_id}…"
        )
        self._take()

    @work(exclusive=True, group="stacks")
    async def _take(self) -> None:
        try:
            node = await self.services.fleet.get_node(self.job.zone, self.job.node)
            report = await self.services.stacks.collect(self.job, node)
        except FleetError as exc:
            if self.is_attached:
                self.query_one("#stacks-verdict", Static).update(
                    Text(f"{exc.reason} {exc.remedy}".strip(), style="bold red")
                )
            return
        if not self.is_attached:
            return
        self.report = report
        when = report.taken_at.astimezone().strftime("%H:%M:%S")
        self.query_one("#stacks-verdict", Static).update(f"{report.verdict} (taken {when})")
        self.query_one("#stacks-body", Static).update(report_text(report))
