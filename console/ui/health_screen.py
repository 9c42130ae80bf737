"""`H`: every stale finding across the fleet, from the latest probes; `r` probes again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from console.models import odd_lock_note
from console.ui.base_screens import ConsoleScreen
from console.ui.plain import PlainTable

if TYPE_CHECKING:
    from console.ui.fleet_screen import FleetScreen


class HealthScreen(ConsoleScreen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("r", "reprobe", "Probe all"),
        Binding("question_mark", "app.help", "Help"),
    ]

    def __init__(self, fleet_screen: FleetScreen) -> None:
        super().__init__()
        self.fleet_screen = fleet_screen

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="health-note", classes="note", markup=False)
        table: DataTable = PlainTable(id="health", cursor_type="row", zebra_stripes=True)
        for title in ("NODE", "WORKER", "FINDING", "DETAIL"):
            table.add_column(title, key=title.lower())
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.app.mode} · TPU health"
        self.fill()
        self.set_interval(1.0, self.fill)

    def findings(self) -> list[tuple[str, str, str, str]]:
        rows = []
        for key, probes in sorted(self.fleet_screen.probes.items()):
            for probe in probes:
                w = f"w{probe.worker}"
                report = probe.report
                if report is None:
                    rows.append((key, w, "unreachable", probe.error))
                    continue
                if report.stale_lock:
                    rows.append((key, w, "STALE LOCK", f"{report.lockfile}: no holder"))
                if report.odd_lock:
                    rows.append((key, w, f"lockfile is a {report.odd_lock}", odd_lock_note(report)))
                if report.foreign_lock:
                    rows.append(
                        (
                            key,
                            w,
                            "needs root",
                            f"{report.lockfile} belongs to "
                            f"{report.lock_owner}: sudo rm {report.lockfile}",
                        )
                    )
                holders = {h.pid: h for h in report.holders}
                for entry in report.lingering:
                    cmd = holders[entry.pid].cmdline if entry.pid in holders else entry.cmdline
                    rows.append((key, w, "lingering", f"pid {entry.pid} ({cmd[:50]}): {entry.why}"))
        return rows

    def fill(self) -> None:
        table = self.query_one("#health", DataTable)
        rows = self.findings()
        table.clear()
        for row in rows:
            table.add_row(*row)
        probed = len(self.fleet_screen.probes)
        self.query_one("#health-note", Static).update(
            f"{len(rows)} findings on {probed} probed nodes. K on the fleet screen cleans a node."
            if rows
            else f"No stale findings on {probed} probed nodes."
        )

    def action_reprobe(self) -> None:
        screen = self.fleet_screen
        if screen.snapshot is not None:
            screen._probe([n for n in screen.snapshot.nodes if n.state == "READY"])
