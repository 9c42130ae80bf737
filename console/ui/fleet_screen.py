"""The fleet screen: every TPU VM across zones in one live table, k9s-style, each queued
resource a row above its nodes (or alone while it has none).

Rows are updated by key, so refreshes never move the cursor or the scroll position.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Header, Input, Static

from console.models import (
    ChipMetrics,
    FleetError,
    FleetSnapshot,
    Node,
    WorkerProbe,
)
from console.present.queued import ROW_PREFIX, table_rows
from console.services.chip_metrics import MetricsWatch
from console.services.fleet_columns import (
    COLUMNS,
    matches,
    sort_nodes,
    unreachable_groups,
    zones_line,
)
from console.services.lifecycle import Progress, ProgressSink, stop_refusal
from console.services.queued_resources import (
    QueuedGroup,
    QueuedResourceService,
    groups,
)
from console.ui.base_screens import ConsoleScreen
from console.ui.fleet_launch import LaunchActions
from console.ui.fleet_lifecycle import LifecycleActions
from console.ui.plain import lines, styled
from console.ui.widgets.fleet_table import FleetTable
from console.ui.widgets.ops_panel import OpsPanel

if TYPE_CHECKING:
    pass

SORTABLE = [c.key for c in COLUMNS if c.sort_hotkey]


class FleetScreen(ConsoleScreen[None]):
    BINDINGS = [
        Binding("r", "refresh", "Refresh"),
        Binding("slash", "filter", "Filter"),
        Binding("enter", "details", "Details", priority=False),
        Binding("l", "logs", "Logs"),
        Binding("K", "kill_stale", "Kill stale"),
        Binding("n", "launch", "Launch"),
        Binding("c", "create", "Create"),
        Binding("s", "change('stop')", "Stop", tooltip="Single-host TPU VMs only"),
        Binding("u", "change('start')", "Start", tooltip="Single-host TPU VMs only"),
        Binding("ctrl+d", "change('delete')", "Delete", show=False),
        Binding("D", "delete_zone", "Delete all in zone", show=False),
        Binding("p", "probe", "Probe", show=False),
        Binding("space", "mark", "Mark", show=False),
        Binding("H", "health", "Health", show=False),
        Binding("j", "jobs", "Jobs"),
        Binding("o", "cycle_sort", "Sort"),
        Binding("O", "reverse_sort", "Reverse", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("question_mark", "app.help", "Help"),
        Binding("q", "app.quit", "Quit"),
        *[
            Binding(c.sort_hotkey, f"sort('{c.key}')", f"Sort by {c.title.lower()}", show=False)
            for c in COLUMNS
            if c.sort_hotkey
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.snapshot: FleetSnapshot | None = None
        self.filter_text = ""
        self.sort_column = "zone"
        self.sort_reverse = False
        self.refreshing = False
        self.last_error: FleetError | None = None
        self.loaded_at: datetime | None = None
        self.marked: set[str] = set()
        self._carried_zones: set[str] = set()
        self._chip_watches: dict[str, MetricsWatch] = {}
        self._chips_paused = False
        self.groups: dict[str, QueuedGroup] = {}  # request key (zone/name) -> it and its nodes
        self._shown_nodes = 0
        self.lifecycle = LifecycleActions(self)
        self.launching = LaunchActions(self)

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            yield Static("", id="banner", classes="banner", markup=False)
            yield Static("loading fleet…", id="status", markup=False)
            yield FleetTable(id="fleet")
            yield Static("", id="row-note", classes="note", markup=False)
        yield OpsPanel(id="ops")
        yield Input(
            placeholder="filter: name, zone, type, state, label=value …",
            id="filter",
            classes="bottom-input",
        )
        yield Footer()

    def on_mount(self) -> None:
        self.action_refresh()
        self.set_interval(self.app.refresh_s, self._periodic_refresh)

    @property
    def table(self) -> FleetTable:
        return self.query_one("#fleet", FleetTable)

    @property
    def ops(self) -> OpsPanel:
        return self.query_one("#ops", OpsPanel)

    @property
    def queued(self) -> QueuedResourceService:
        """Queued resources over the session's fleet and lifecycle (it holds no state)."""
        life = self.services.lifecycle
        return QueuedResourceService(self.services.fleet, life, poll_s=life.poll_s)

    # ----- refresh -----------------------------------------------------------------------------
    def _periodic_refresh(self) -> None:
        if not self.refreshing:
            self.action_refresh()

    def action_refresh(self) -> None:
        self.refreshing = True
        self.query_one("#status", Static).update(self._status_text(loading=True))
        self._load()

    @work(exclusive=True, group="fleet-refresh")
    async def _load(self) -> None:
        snapshot: FleetSnapshot | None = None
        error: FleetError | None = None
        try:
            snapshot = await self.services.fleet.list_nodes()
        except FleetError as exc:
            error = exc
        finally:
            self.refreshing = False
        # The app may have closed while the API answered: then there is nothing to update.
        # (What follows has no await, so the screen cannot go away half way through.)
        if not self.query("#status"):
            return
        if error is not None:
            self.last_error = error
            self._show_banner([styled((error.reason, "bold"), " ", error.remedy)])
        elif snapshot is not None:
            self.last_error = None
            self.snapshot = self._keep_last_known(snapshot)
            self.loaded_at = self.app.now()
            self._show_banner(
                [
                    styled(
                        (f"Zone {where} unreachable:", "bold"),
                        f" {f.reason} {f.remedy}",
                        " (showing its last known nodes)" if f.zone in self._carried_zones else "",
                    )
                    for where, f in unreachable_groups(snapshot)
                ]
            )
            self._render_rows()
            self.refresh_bindings()
            self._probe_due_nodes()
            for alert in self.services.lifecycle.observe(snapshot):
                self.notify(alert, severity="error", timeout=30)
        self.query_one("#status", Static).update(self._status_text())

    def _keep_last_known(self, snapshot: FleetSnapshot) -> FleetSnapshot:
        """An unreachable zone keeps its last known rows: a failed listing is not an empty zone."""
        failed = {f.zone for f in snapshot.unreachable}
        carried = [n for n in (self.snapshot.nodes if self.snapshot else ()) if n.zone in failed]
        self._carried_zones = {n.zone for n in carried}
        if not carried:
            return snapshot
        nodes = tuple(sorted((*snapshot.nodes, *carried), key=lambda n: (n.zone, n.name)))
        return replace(snapshot, nodes=nodes)

    def _show_banner(self, texts: list[Text]) -> None:
        banner = self.query_one("#banner", Static)
        banner.update(lines(texts))
        banner.set_class(bool(texts), "shown")

    def _status_text(self, loading: bool = False) -> Text:
        badge = (
            styled((" SANDBOX ", "b reverse #ffff00"), " ") if self.app.mode == "SANDBOX" else ""
        )
        parts = []
        if self.snapshot is not None:
            shown = self._shown_nodes
            total = len(self.snapshot.nodes)
            parts.append(f"{shown} of {total} nodes" if self.filter_text else f"{total} nodes")
            if self.snapshot.queued_resources:
                parts.append(f"{len(self.snapshot.queued_resources)} queued resources")
            parts.append(zones_line(self.snapshot))
            if self.snapshot.unreachable:
                parts.append(f"{len(self.snapshot.unreachable)} unreachable")
            if self.loaded_at:
                parts.append(f"as of {self.loaded_at.astimezone():%H:%M:%S}")
        if self.filter_text:
            parts.append(f"filter: {self.filter_text!r}")
        arrow = "↓" if self.sort_reverse else "↑"
        parts.append(f"sort: {self.sort_column}{arrow}")
        if loading:
            parts.append("refreshing…")
        return styled(badge, " · ".join(parts))

    def _render_rows(self) -> None:
        """Bring the table to the snapshot (filtered, sorted); the table keeps the cursor."""
        if self.snapshot is None or not self.query("#fleet"):  # none: the app is closing
            return
        now = self.app.now()
        nodes = [n for n in self.snapshot.nodes if matches(n, self.filter_text)]
        nodes = sort_nodes(nodes, self.sort_column, self.sort_reverse, now)
        found = groups(self.snapshot)
        self.groups = {g.key: g for g in found}
        self._shown_nodes = len(nodes)
        self._watch_chips()
        rows = table_rows(nodes, found, self.filter_text)
        self.table.show(rows, now, self.lock_status, self.marked, self.chips_of)
        self._show_row_note()
        self.query_one("#status", Static).update(self._status_text(loading=self.refreshing))

    def _show_row_note(self) -> None:
        """Under the table: the queued resource of the row under the cursor, in a line (its
        state, tier, nodes, wait, bound and a FAILED one's error)."""
        note = self.query_one("#row-note", Static)
        group = self.cursor_group()
        text = ""
        if group is not None:
            text = f"queued resource {group.request.name}: {group.summary(self.app.now())}"
        note.update(text)
        note.display = bool(text)

    # ----- HBM and DUTY: the chips of READY nodes a process holds, polled while shown --------
    def chips_wanted(self) -> dict[str, Node]:
        """READY nodes whose last probe found a process on the chips (a job, or a leftover)."""
        if self.snapshot is None or self._chips_paused:
            return {}
        probes = self.services.locks.probes
        return {
            n.key: n
            for n in self.snapshot.nodes
            if n.state == "READY"
            and any(p.report is not None and p.report.holders for p in probes.get(n.key, ()))
        }

    def chips_of(self, node: Node) -> ChipMetrics | None:
        if node.key not in self._chip_watches:
            return None
        return self.services.chips.latest(node.key)

    def _watch_chips(self) -> None:
        wanted = self.chips_wanted()
        for key in [k for k in self._chip_watches if k not in wanted]:
            watch = self._chip_watches.pop(key)
            self.run_worker(watch.close(), group="chip-watch")
            if self.query("#fleet"):
                self.table.show_chips(key, None)
        for key, node in wanted.items():
            if key not in self._chip_watches:
                self._chip_watches[key] = self.services.chips.watch(
                    node, functools.partial(self._chips_polled, key)
                )

    def _chips_polled(self, key: str, metrics: ChipMetrics) -> None:
        if key in self._chip_watches and self.query("#fleet"):
            self.table.show_chips(key, metrics)

    def on_screen_suspend(self) -> None:
        """Another screen on top: nobody sees the columns, so they are not polled."""
        self._chips_paused = True
        self._watch_chips()

    def on_screen_resume(self) -> None:
        self._chips_paused = False
        self._watch_chips()

    def on_unmount(self) -> None:
        watches, self._chip_watches = list(self._chip_watches.values()), {}
        for watch in watches:
            self.app.run_worker(watch.close(), group="chip-watch")

    def cursor_node_key(self) -> str | None:
        return self.table.cursor_node_key()

    def cursor_node(self) -> Node | None:
        key = self.cursor_node_key()
        if key is None or self.snapshot is None:
            return None
        return next((n for n in self.snapshot.nodes if n.key == key), None)

    def cursor_group(self) -> QueuedGroup | None:
        """The queued resource under the cursor: its own row, or one of its nodes'."""
        key = self.cursor_node_key()
        if key is None:
            return None
        if key.startswith(ROW_PREFIX):
            return self.groups.get(key[len(ROW_PREFIX) :])
        node = self.cursor_node()
        return self.groups.get(node.queued_key) if node is not None else None

    # ----- filter and sort ---------------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self._render_rows()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        box = self.query_one("#filter", Input)
        if not box.value:
            box.remove_class("shown")
        self.table.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("shown")
        self.filter_text = ""
        self._render_rows()
        self.table.focus()

    def action_sort(self, column: str) -> None:
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, False
        self._render_rows()

    def action_cycle_sort(self) -> None:
        index = SORTABLE.index(self.sort_column) if self.sort_column in SORTABLE else -1
        self.sort_column, self.sort_reverse = SORTABLE[(index + 1) % len(SORTABLE)], False
        self._render_rows()

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._render_rows()

    @on(FleetTable.SortAsked)
    def _header_clicked(self, event: FleetTable.SortAsked) -> None:
        self.action_sort(event.column)

    # ----- keys that depend on the node under the cursor ---------------------------------------
    @on(FleetTable.NodeHighlighted)
    def _cursor_moved(self) -> None:
        self.refresh_bindings()
        if self.snapshot is not None:
            self._show_row_note()

    def binding_note(self, action: str) -> str:
        """Why a key is greyed out right now (the help screen shows it), or ""."""
        if action.startswith("change('stop')") or action.startswith("change('start')"):
            verb = "stop" if "stop" in action else "start"
            nodes = self.chosen_nodes()
            refusals = [stop_refusal(n, verb) for n in nodes]
            if nodes and all(refusals):
                return refusals[0]
        return ""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Stop/start are greyed (None) when every chosen node is a multi-host slice."""
        if action == "change" and parameters and parameters[0] in {"stop", "start"}:
            return None if self.binding_note(f"change('{parameters[0]}')") else True
        return True

    # ----- detail ------------------------------------------------------------------------------
    @on(FleetTable.NodeChosen)
    def _row_selected(self) -> None:
        self.action_details()

    def jump_to(self, key: str) -> bool:
        """The palette's `:node`: the cursor on that node, the filter cleared if it hid it."""
        if self.snapshot is None or all(n.key != key for n in self.snapshot.nodes):
            return False
        if key not in self.table.rows:
            self.action_clear_filter()
        self.table.focus()
        return self.table.move_to(key)

    def action_details(self) -> None:
        from console.ui.node_detail import NodeDetailScreen

        node = self.cursor_node()
        group = self.cursor_group()
        if node is None and group is not None:  # a request's row: what it is, in a line
            summary = group.summary(self.app.now())
            self.notify(f"Queued resource {group.request.name}: {summary}", timeout=15)
            return
        if node is None:
            self.notify("No node selected.", severity="warning")
            return
        self.app.push_screen(NodeDetailScreen(node))

    # ----- jobs --------------------------------------------------------------------------------
    def action_jobs(self) -> None:
        from console.ui.jobs_screen import JobsScreen

        self.app.push_screen(JobsScreen())

    @work(group="logs")
    async def action_logs(self) -> None:
        """The latest job on the node under the cursor (the history read off the loop)."""
        from console.ui.log_screen import LogScreen

        node = self.cursor_node()
        if node is None:
            return
        recent = await asyncio.to_thread(self.services.history.recent, 500)
        latest = next((j for j in recent if j.node_key == node.key), None)
        if latest is None:
            self.notify(f"No jobs on {node.name} yet.", severity="information")
            return
        self.app.push_screen(LogScreen(latest))

    # ----- the TPU lock column, cleanup and health ---------------------------------------------
    @property
    def probes(self) -> dict[str, list[WorkerProbe]]:
        """Node key -> its workers' latest probe (the session's, shared with health, cleanup)."""
        return self.services.locks.probes

    def lock_status(self, node: Node) -> str:
        return self.services.locks.status(node)

    def _probe_due_nodes(self) -> None:
        """Probe READY nodes whose last probe is older than the probe interval."""
        if self.app.probe_interval_s is None or self.snapshot is None:
            return  # probing only when asked
        due = self.services.locks.due(self.snapshot.nodes, self.app.probe_interval_s)
        if due:
            self._probe(due)

    @work(group="probe")
    async def _probe(self, nodes: list[Node]) -> None:
        for node, exc in await self.services.locks.probe(nodes):
            self.notify(f"{node.name}: {exc}", severity="warning")
        self._render_rows()

    def action_probe(self) -> None:
        node = self.cursor_node()
        if node is not None:
            self._probe([node])

    def action_mark(self) -> None:
        key = self.cursor_node_key()
        if key is None or key.startswith(ROW_PREFIX):  # a request is deleted from its row
            return
        self.marked.symmetric_difference_update({key})
        self._render_rows()
        self.table.action_cursor_down()
        self.refresh_bindings()

    def chosen_nodes(self) -> list[Node]:
        if self.snapshot is None:
            return []
        if self.marked:
            return [n for n in self.snapshot.nodes if n.key in self.marked]
        node = self.cursor_node()
        return [node] if node is not None else []

    def action_kill_stale(self) -> None:
        from console.ui.cleanup_screen import CleanupScreen

        nodes = [n for n in self.chosen_nodes() if n.state == "READY"]
        if not nodes:
            self.notify("Choose a READY node (space marks several).", severity="warning")
            return
        self.app.push_screen(CleanupScreen(nodes), self._after_cleanup)

    def _after_cleanup(self, after: dict | None) -> None:
        if after:
            self.probes.update(after)
            self.marked.clear()
            self._render_rows()

    def action_health(self) -> None:
        from console.ui.health_screen import HealthScreen

        self.app.push_screen(HealthScreen(self))

    # ----- lifecycle ---------------------------------------------------------------------------
    def progress_sink(self, key: str) -> ProgressSink:
        """Each try's outcome stays on screen ("✗ …"), the live state replaces itself ("⟳ …")."""

        def report(progress: Progress) -> None:
            if self.query("#ops") and self.ops.report(key, progress):
                self.action_refresh()  # show the node's row (CREATING, STOPPING…) at once

        return report

    def ops_report(self, key: str, progress: Progress) -> None:
        """A line of news in the operations panel, if it is on screen."""
        if self.query("#ops"):
            self.ops.report(key, progress)

    def ops_done(self, key: str) -> None:
        for ops in self.query("#ops").results(OpsPanel):  # none while the app closes
            ops.done(key)

    def action_create(self) -> None:
        self.lifecycle.create()

    def action_change(self, verb: str) -> None:
        self.lifecycle.change(verb)

    def action_delete_zone(self) -> None:
        self.lifecycle.delete_zone()

    # ----- launching jobs ----------------------------------------------------------------------
    def action_launch(self) -> None:
        self.launching.launch()
