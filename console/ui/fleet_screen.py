"""The fleet screen: every TPU VM across zones in one live table, k9s-style.

Rows are updated by node key, so refreshes never move the cursor or the scroll position.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import datetime

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from console.models import FleetError, FleetSnapshot, Node
from console.services.fleet_columns import (
    COLUMNS,
    matches,
    row_texts,
    sort_nodes,
    unreachable_groups,
    zones_line,
)
from console.services.lifecycle import stop_refusal
from console.ui.plain import PlainTable, lines, styled
from console.ui.styling import health_text, provisioning_text, state_text

SORTABLE = [c.key for c in COLUMNS if c.sort_hotkey]


def lock_text(status: str) -> Text:
    if status in {"-", ""}:
        return Text("-", style="dim")
    if status == "clean":
        return Text(status, style="green")
    if status.startswith("busy"):
        return Text(status, style="cyan")
    if "STALE" in status or "root" in status:
        return Text(status, style="bold white on red")
    return Text(status, style="bold yellow")


def styled_cells(
    node: Node, now: datetime, lock: str = "-", marked: bool = False
) -> list[Text | str]:
    cells: list[Text | str] = list(row_texts(node, now))
    keys = [c.key for c in COLUMNS]
    cells[keys.index("name")] = Text(node.name, style="bold" if node.needs_attention else "")
    cells[keys.index("state")] = state_text(node.state)
    cells[keys.index("health")] = health_text(node.health)
    cells[keys.index("provisioning")] = provisioning_text(node.provisioning)
    cells[keys.index("lock")] = lock_text(lock)
    if marked:
        cells[keys.index("name")] = Text("✓ " + node.name, style="bold reverse")
    cells[keys.index("job")] = Text("-", style="dim")
    return cells


def _plain(cell: object) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def _same(old: object, new: object) -> bool:
    """Text equality that also sees a change of colour (Rich compares only text and spans)."""

    def look(cell: object) -> tuple[str, str]:
        return (_plain(cell), str(cell.style) if isinstance(cell, Text) else "")

    return look(old) == look(new)


class FleetTable(PlainTable):
    """The fleet's DataTable, with `enter` shown in the footer as the way into a node."""

    BINDINGS = [Binding("enter", "select_cursor", "Details")]


class FleetScreen(Screen):
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

    DEFAULT_CSS = """
    FleetScreen #banner { display: none; background: $error 30%; color: $text; padding: 0 1; }
    FleetScreen #banner.shown { display: block; }
    FleetScreen #status { height: 1; padding: 0 1; color: $text-muted; }
    FleetScreen #filter { display: none; dock: bottom; margin-bottom: 1; }
    FleetScreen #ops { height: auto; max-height: 10; padding: 0 1; color: $warning; }
    FleetScreen #filter.shown { display: block; }
    FleetScreen DataTable { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.snapshot: FleetSnapshot | None = None
        self.filter_text = ""
        self.sort_column = "zone"
        self.sort_reverse = False
        self.refreshing = False
        self.last_error: FleetError | None = None
        self.loaded_at: datetime | None = None
        self.probes: dict[str, list] = {}  # node key -> [WorkerProbe], the latest
        self.probed_at: dict[str, float] = {}
        self.marked: set[str] = set()
        # node key -> its operation's lines: each finished try's outcome, then the latest state
        self.operations: dict[str, list[str]] = {}
        self._live: dict[str, str] = {}
        self._carried_zones: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            yield Static("", id="banner", markup=False)
            yield Static("loading fleet…", id="status", markup=False)
            table = FleetTable(id="fleet", cursor_type="row", zebra_stripes=True)
            for column in COLUMNS:
                table.add_column(column.title, key=column.key)
            yield table
        yield Static("", id="ops", markup=False)
        yield Input(placeholder="filter: name, zone, type, state, label=value …", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.action_refresh()
        self.set_interval(self.app.refresh_s, self._periodic_refresh)

    @property
    def table(self) -> DataTable:
        return self.query_one("#fleet", DataTable)

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
            snapshot = await self.app.fleet.list_nodes()
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
            if self.app.lifecycle is not None:
                for alert in self.app.lifecycle.observe(snapshot):
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
            shown = self.table.row_count
            total = len(self.snapshot.nodes)
            parts.append(f"{shown} of {total} nodes" if self.filter_text else f"{total} nodes")
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
        """Bring the table to the snapshot by key: remove, add, update cells, then reorder."""
        if self.snapshot is None or not self.query("#fleet"):  # none: the app is closing
            return
        now = self.app.now()
        table = self.table
        nodes = [n for n in self.snapshot.nodes if matches(n, self.filter_text)]
        nodes = sort_nodes(nodes, self.sort_column, self.sort_reverse, now)
        wanted = {n.key: n for n in nodes}
        cursor_key = self.cursor_node_key()
        for row_key in list(table.rows):
            if row_key.value not in wanted:
                table.remove_row(row_key)
        for node in nodes:
            cells = styled_cells(node, now, self.lock_status(node), node.key in self.marked)
            if node.key in table.rows:
                current = table.get_row(node.key)
                for column, old, new in zip(COLUMNS, current, cells, strict=True):
                    if not _same(old, new):
                        table.update_cell(node.key, column.key, new, update_width=True)
            else:
                table.add_row(*cells, key=node.key)
        order = {n.key: i for i, n in enumerate(nodes)}
        if [r.key.value for r in table.ordered_rows] != list(order):
            table.sort(
                "zone", "name", key=lambda vals: order[f"{_plain(vals[0])}/{_plain(vals[1])}"]
            )
        if cursor_key in wanted:
            index = table.get_row_index(cursor_key)
            if index != table.cursor_row:
                table.move_cursor(row=index, scroll=False)
        self.query_one("#status", Static).update(self._status_text(loading=self.refreshing))

    def cursor_node_key(self) -> str | None:
        table = self.table
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    def cursor_node(self) -> Node | None:
        key = self.cursor_node_key()
        if key is None or self.snapshot is None:
            return None
        return next((n for n in self.snapshot.nodes if n.key == key), None)

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

    @on(DataTable.HeaderSelected)
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        if event.column_key.value in {c.key for c in COLUMNS}:
            self.action_sort(event.column_key.value)

    # ----- keys that depend on the node under the cursor ---------------------------------------
    @on(DataTable.RowHighlighted, "#fleet")
    def _cursor_moved(self) -> None:
        self.refresh_bindings()

    def binding_note(self, action: str) -> str:
        """Why a key is greyed out right now (the help screen shows it), or ""."""
        if action.startswith("change('stop')") or action.startswith("change('start')"):
            verb = "stop" if "stop" in action else "start"
            nodes = self._chosen_nodes()
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
    @on(DataTable.RowSelected, "#fleet")
    def _row_selected(self) -> None:
        self.action_details()

    def action_details(self) -> None:
        from console.ui.node_detail import NodeDetailScreen

        node = self.cursor_node()
        if node is None:
            self.notify("No node selected.", severity="warning")
            return
        self.app.push_screen(NodeDetailScreen(node))

    # ----- jobs --------------------------------------------------------------------------------
    def action_jobs(self) -> None:
        from console.ui.jobs_screen import JobsScreen

        if self.app.jobs is None:
            self.notify("Jobs are not available in this session.", severity="warning")
            return
        self.app.push_screen(JobsScreen())

    def action_logs(self) -> None:
        """The latest job on the node under the cursor."""
        from console.ui.log_screen import LogScreen

        node = self.cursor_node()
        if node is None or self.app.jobs is None:
            return
        latest = next(
            (j for j in self.app.jobs.history.recent(500) if j.node_key == node.key), None
        )
        if latest is None:
            self.notify(f"No jobs on {node.name} yet.", severity="information")
            return
        self.app.push_screen(LogScreen(latest))

    # ----- the TPU lock column, cleanup and health ---------------------------------------------
    def lock_status(self, node: Node) -> str:
        from console.services.probe import node_status

        probes = self.probes.get(node.key)
        return node_status(probes) if probes else "-"

    def _probe_due_nodes(self) -> None:
        """Probe READY nodes whose last probe is older than the probe interval."""
        if self.app.prober is None or self.snapshot is None:
            return
        now = time.monotonic()
        due = [
            n
            for n in self.snapshot.nodes
            if n.state == "READY"
            and now - self.probed_at.get(n.key, -1e9) >= self.app.probe_interval_s
        ]
        if due:
            self._probe(due)

    @work(group="probe")
    async def _probe(self, nodes: list[Node]) -> None:
        for node in nodes:
            self.probed_at[node.key] = time.monotonic()

        async def one(node: Node) -> None:
            try:
                self.probes[node.key] = await self.app.prober.probe(node)
            except FleetError as exc:
                self.notify(f"{node.name}: {exc}", severity="warning")

        await asyncio.gather(*(one(n) for n in nodes))
        self._render_rows()

    def action_probe(self) -> None:
        node = self.cursor_node()
        if node is not None and self.app.prober is not None:
            self._probe([node])

    def action_mark(self) -> None:
        key = self.cursor_node_key()
        if key is None:
            return
        self.marked.symmetric_difference_update({key})
        self._render_rows()
        self.table.action_cursor_down()
        self.refresh_bindings()

    def _chosen_nodes(self) -> list[Node]:
        if self.snapshot is None:
            return []
        if self.marked:
            return [n for n in self.snapshot.nodes if n.key in self.marked]
        node = self.cursor_node()
        return [node] if node is not None else []

    def action_kill_stale(self) -> None:
        from console.ui.cleanup_screen import CleanupScreen

        nodes = [n for n in self._chosen_nodes() if n.state == "READY"]
        if self.app.prober is None or not nodes:
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
    def _show_ops(self) -> None:
        shown = [
            line
            for key, kept in self.operations.items()
            for line in (*kept, self._live.get(key, ""))
            if line
        ]
        for ops in self.query("#ops").results(Static):  # none while the app closes
            ops.update(lines(shown))

    def _progress(self, key: str):
        """Each try's outcome stays on screen ("✗ …"), the live state replaces itself ("⟳ …")."""

        def report(progress) -> None:
            first = key not in self.operations
            kept = self.operations.setdefault(key, [])
            if progress.outcome:
                kept.append(("✗ " if progress.state == "FAILED" else "· ") + progress.line())
                self._live.pop(key, None)
            else:
                self._live[key] = "⟳ " + progress.line()
            self._show_ops()
            if first:
                self.action_refresh()  # show the node's row (CREATING, STOPPING…) at once

        return report

    def _ops_done(self, key: str) -> None:
        self.operations.pop(key, None)
        self._live.pop(key, None)
        self._show_ops()

    def action_create(self) -> None:
        from console.ui.create_screen import CreateScreen

        if self.app.lifecycle is None:
            self.notify("Creating VMs is not available in this session.", severity="warning")
            return
        zones = list(self.snapshot.zones) if self.snapshot else []  # zones with TPU access
        node = self.cursor_node()
        self.app.push_screen(CreateScreen(zones, node.zone if node else ""), self._create)

    def _create(self, request) -> None:
        if request is not None:
            self._run_create(request)

    @work(group="lifecycle")
    async def _run_create(self, request) -> None:
        key = f"{request.zone}/{request.name}"
        try:
            outcome = await self.app.lifecycle.create(request, self._progress(key))
        except FleetError as exc:
            code = f" [{exc.code}]" if exc.code else ""
            self.notify(
                f"Create {request.name}: {exc.reason} {exc.remedy}{code}",
                severity="error",
                timeout=30,
            )
        else:
            notes = "; ".join(
                outcome.notes
                + (
                    (f"bootstrap running as job {outcome.startup_job}",)
                    if outcome.startup_job
                    else ()
                )
            )
            ssh = (
                "ssh answers on every worker"
                if not outcome.ssh_failed
                else "ssh failed: " + "; ".join(outcome.ssh_failed)
            )
            self.notify(
                f"{request.name} is READY ({ssh})" + (f"; {notes}" if notes else ""),
                severity="information" if not outcome.ssh_failed else "warning",
                timeout=15,
            )
        finally:
            self._ops_done(key)
            if self.query("#status"):  # not when the app is closing
                self.action_refresh()

    def action_change(self, verb: str) -> None:
        from console.ui.confirm_screen import ConfirmScreen

        chosen = self._chosen_nodes()
        if self.app.lifecycle is None or not chosen:
            return
        nodes = [n for n in chosen if not stop_refusal(n, verb)]
        if not nodes:  # the key is greyed then; a click on it lands here
            self.notify(stop_refusal(chosen[0], verb), severity="warning")
            return
        lines = [f"{verb} {n.name} ({n.zone}, {n.accelerator_type}, now {n.state})" for n in nodes]
        lines += [f"skipped: {stop_refusal(n, verb)}" for n in chosen if n not in nodes]
        if verb == "delete":
            lines.append("Deleting cannot be undone; local logs and history stay.")

        def go(yes: bool | None) -> None:
            if yes:
                self.marked.clear()
                for node in nodes:
                    self._run_change(verb, node)

        self.app.push_screen(ConfirmScreen(f"{verb.capitalize()} {len(nodes)} node(s)?", lines), go)

    def action_delete_zone(self) -> None:
        from console.ui.confirm_screen import TypedConfirmScreen

        node = self.cursor_node()
        if self.app.lifecycle is None or node is None or self.snapshot is None:
            return
        zone = node.zone
        nodes = [n for n in self.snapshot.nodes if n.zone == zone]
        lines = [f"delete {n.name} ({n.accelerator_type}, {n.state})" for n in nodes]

        def go(yes: bool | None) -> None:
            if yes:
                for n in nodes:
                    self._run_change("delete", n)

        self.app.push_screen(
            TypedConfirmScreen(f"Delete ALL {len(nodes)} nodes in {zone}?", lines, zone), go
        )

    @work(group="lifecycle")
    async def _run_change(self, verb: str, node: Node) -> None:
        try:
            after = await self.app.lifecycle.change(verb, node, self._progress(node.key))
        except FleetError as exc:
            code = f" [{exc.code}]" if exc.code else ""
            self.notify(
                f"{verb.capitalize()} {node.name}: {exc.reason} {exc.remedy}{code}",
                severity="error",
                timeout=30,
            )
        else:
            self.notify(f"{node.name}: {after.state if after else 'deleted'}")
        finally:
            self._ops_done(node.key)
            if self.query("#status"):  # not when the app is closing
                self.action_refresh()

    # ----- launching jobs ----------------------------------------------------------------------
    def action_launch(self) -> None:
        from console.ui.launch_screen import LaunchScreen

        node = self.cursor_node()
        if node is None or self.app.jobs is None:
            return
        if node.state != "READY":
            self.notify(
                f"{node.name} is {node.state}; launching needs a READY node.", severity="warning"
            )
            return
        self.app.push_screen(LaunchScreen(node), lambda choice: self._launch(node, choice))

    async def _run_managed(self, node: Node, choice) -> None:
        """The form's choice as a managed job on this node (adopted: its spec is the node's)."""
        from console.services.managed import ManagedSpec, NodeSpec, Step
        from console.ui.log_screen import LogScreen

        spec = ManagedSpec(
            NodeSpec(node.name, (node.zone,)),
            Step(choice.kind, values=dict(choice.params)),
            selection=choice.selection,
        )
        try:
            job = await self.app.managed.launch(spec)
        except FleetError as exc:
            self.notify(f"Managed launch on {node.name}: {exc}", severity="error", timeout=30)
            return
        self.notify(f"Managed job {job.job_id} started; recovered after a preemption.")
        self.app.push_screen(LogScreen(job))

    def _launch(self, node: Node, choice) -> None:
        if choice is not None:
            self._run_launch(node, choice)

    @work(group="launch")
    async def _run_launch(self, node: Node, choice) -> None:
        """The form's choice through the launch service: clean first if it offered, then the
        upload or the job (its logs open); any failure is one notification."""
        from console.present.launch import not_started, upload_lines
        from console.services.launch import LaunchPlan, LaunchService
        from console.ui.log_screen import LogScreen

        if getattr(choice, "managed", False) and getattr(self.app, "managed", None) is not None:
            await self._run_managed(node, choice)
            return
        launcher = LaunchService(self.app.jobs, self.app.prober)
        plan = LaunchPlan(node, choice.selection, choice.kind, choice.rendered, choice.params)
        if plan.is_upload:
            self.notify(f"Uploading {plan.rendered.upload[0]} on {node.name}…")
        try:
            cleanup = await launcher.plan_cleanup(plan) if choice.clean_first else None
            launched = await launcher.start(plan, cleanup=cleanup)
        except FleetError as exc:
            self.notify(f"Launch on {node.name}: {exc}", severity="error", timeout=30)
            return
        if launched.cleanup is not None and not launched.cleanup.done:
            self.notify(
                f"Cleanup on {node.name} left the TPU held ({launched.cleanup.status}); "
                "nothing launched. K shows the plan.",
                severity="error",
                timeout=30,
            )
            return
        if plan.rendered.upload is not None:
            said = upload_lines(*plan.rendered.upload, launched.uploads)
            self.notify(
                "\n".join(line for line, _ in said),
                severity="error" if launched.failed else "information",
                timeout=15 if launched.failed else 6,
            )
            return
        assert launched.job is not None
        if launched.failed:
            self.notify(not_started(launched), severity="error")
            return
        self.app.push_screen(LogScreen(launched.job))
