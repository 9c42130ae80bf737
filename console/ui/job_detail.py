"""`d` on a job: its whole record, the command in full, as `tpuconsole jobs show` prints it."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from console.models import Job
from console.services.job_record import job_record_lines
from console.ui.base_screens import ConsoleModal
from console.ui.plain import lines


class JobDetailScreen(ConsoleModal[None]):
    BINDINGS = [Binding("escape,d,q", "app.pop_screen", "Close")]

    def __init__(self, job: Job) -> None:
        super().__init__()
        self.job = job

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(lines(job_record_lines(self.job)), id="job-record", markup=False)
            yield Static(Text("esc closes", style="dim"), markup=False)
