"""`H`: every stale finding across the fleet, from the latest probes, and every queued resource
that sits on quota with nothing to show for it; `K` cleans the one under the cursor (confirmed),
`r` probes again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from console.models import FleetError, odd_lock_note
from console.services.queued_resources import QuotaFinding, quota_findings
from console.ui.base_screens import ConsoleScreen
from console.ui.plain import PlainTable

if TYPE_CHECKING:
    from console.ui.fleet_screen import FleetScreen

QUOTA_PREFIX = "quota:"  # a quota finding's row key: quota:zone/request


class HealthScreen(ConsoleScreen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("K", "clean", "Clean up"),
        Binding("r", "reprobe", "Probe all"),
        Binding("question_mark", "app.help", "Help"),
    ]

    def __init__(self, fleet_screen: FleetScreen) -> None:
        super().__init__()
        self.fleet_screen = fleet_screen
        self._shown: list[tuple[str, tuple[str, str, str, str]]] = []
        self._cleaning: set[str] = set()  # quota findings whose cleanup is under way or done

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

    def quota(self) -> list[QuotaFinding]:
        """FAILED and SUSPENDED requests of the fleet's last listing, but those being cleaned."""
        snapshot = self.fleet_screen.snapshot
        if snapshot is None:
            return []
        self._cleaning &= {q.key for q in snapshot.queued_resources}  # gone: nothing to hide
        return [f for f in quota_findings(snapshot) if f.request.key not in self._cleaning]

    def findings(self) -> list[tuple[str, str, str, str]]:
        return [cells for _key, cells in self.keyed_findings()]

    def keyed_findings(self) -> list[tuple[str, tuple[str, str, str, str]]]:
        """Each finding with its row key: what sits on quota first, then the probes' findings."""
        rows: list[tuple[str, tuple[str, str, str, str]]] = [
            (QUOTA_PREFIX + f.request.key, (f.request.key, "-", "holds quota", f.text))
            for f in self.quota()
        ]
        for key, probes in sorted(self.fleet_screen.probes.items()):
            for probe in probes:
                w = f"w{probe.worker}"
                report = probe.report
                if report is None:
                    rows.append((key, (key, w, "unreachable", probe.error)))
                    continue
                if report.stale_lock:
                    rows.append((key, (key, w, "STALE LOCK", f"{report.lockfile}: no holder")))
                if report.odd_lock:
                    found = (key, w, f"lockfile is a {report.odd_lock}", odd_lock_note(report))
                    rows.append((key, found))
                if report.foreign_lock:
                    detail = (
                        f"{report.lockfile} belongs to "
                        f"{report.lock_owner}: sudo rm {report.lockfile}"
                    )
                    rows.append((key, (key, w, "needs root", detail)))
                holders = {h.pid: h for h in report.holders}
                for entry in report.lingering:
                    cmd = holders[entry.pid].cmdline if entry.pid in holders else entry.cmdline
                    detail = f"pid {entry.pid} ({cmd[:50]}): {entry.why}"
                    rows.append((key, (key, w, "lingering", detail)))
        return rows

    def fill(self) -> None:
        """Refilled only when the findings change, the cursor kept on the row it was on."""
        rows = self.keyed_findings()
        probed = len(self.fleet_screen.probes)
        quota = sum(1 for key, _ in rows if key.startswith(QUOTA_PREFIX))
        self.query_one("#health-note", Static).update(
            f"{len(rows)} findings ({quota} on quota) on {probed} probed nodes. K cleans the "
            "one under the cursor: a node's stale state, or a queued resource (its quota freed)."
            if rows
            else f"No stale findings on {probed} probed nodes, no queued resource holds quota."
        )
        if rows == self._shown:
            return
        table = self.query_one("#health", DataTable)
        here = self._cursor_key()
        self._shown = rows
        table.clear()
        for i, (_key, cells) in enumerate(rows):
            table.add_row(*cells, key=str(i))
        keys = [key for key, _ in rows]
        if here in keys:
            table.move_cursor(row=keys.index(here), animate=False)

    def _cursor_key(self) -> str | None:
        table = self.query_one("#health", DataTable)
        if not self._shown or table.row_count == 0:
            return None
        return self._shown[min(table.cursor_row, len(self._shown) - 1)][0]

    def action_clean(self) -> None:
        """A queued resource: delete it after a confirmation; a node: its cleanup plan (`K`)."""
        from console.ui.cleanup_screen import CleanupScreen
        from console.ui.confirm_screen import ConfirmScreen

        key = self._cursor_key()
        if key is None:
            return
        if not key.startswith(QUOTA_PREFIX):
            snapshot = self.fleet_screen.snapshot
            node = next((n for n in snapshot.nodes if n.key == key), None) if snapshot else None
            if node is None or node.state != "READY":
                self.notify(f"{key} is not a READY node of the fleet now.", severity="warning")
                return
            self.app.push_screen(CleanupScreen([node]), self.fleet_screen._after_cleanup)
            return
        finding = next((f for f in self.quota() if QUOTA_PREFIX + f.request.key == key), None)
        if finding is None:
            return
        queued = self.fleet_screen.queued

        def go(yes: bool | None) -> None:
            if yes:
                self._cleaning.add(finding.request.key)
                self._clean_quota(finding)

        lines = [finding.text, queued.delete_question(None, finding.request)]
        title = f"Delete queued resource {finding.request.name}?"
        self.app.push_screen(ConfirmScreen(title, lines), go)

    @work(group="quota-cleanup")
    async def _clean_quota(self, finding: QuotaFinding) -> None:
        qr = finding.request
        fleet = self.fleet_screen
        key = f"queued:{qr.key}"
        try:
            await fleet.queued.cleanup(finding, lambda p: fleet.ops_report(key, p))
        except FleetError as exc:
            self._cleaning.discard(qr.key)
            self.show_error(f"Delete queued resource {qr.name}", exc)
        else:
            self.notify(
                f"Queued resource {qr.name} deleted: its {qr.chips} chips of "
                f"{qr.provisioning} quota are free."
            )
        finally:
            fleet.ops_done(key)
            if fleet.query("#status"):  # not when the app is closing
                fleet.action_refresh()
            if self.is_attached:
                self.fill()

    def action_reprobe(self) -> None:
        screen = self.fleet_screen
        if screen.snapshot is not None:
            screen._probe([n for n in screen.snapshot.nodes if n.state == "READY"])
