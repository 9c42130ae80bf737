"""One node in full: workers and their addresses, labels, symptoms, runtime and provisioning,
and the queued resource it came from (who took it back, and why, when the service did).

It re-reads the node on `r` and on the app's refresh interval, so a preemption shows here too.
"""

from __future__ import annotations

import asyncio

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static

from console.models import ChipMetrics, FleetError, Node, QueuedResource, format_age
from console.present.chips import CHIP_HEADER, STANDIN_NOTE, chip_rows, worker_reasons
from console.services.chip_metrics import MetricsWatch
from console.services.queued_resources import QueuedResourceService
from console.ui.base_screens import ConsoleScreen
from console.ui.plain import PlainTable, plain, styled
from console.ui.styling import health_text, provisioning_text, state_text


def _type_row(node: Node) -> str:
    shape = node.shape
    text = (
        f"{node.accelerator_type or '-'}  (TPU {shape.version}, {shape.chips} chips, "
        f"{node.hosts} host{'s' if node.hosts != 1 else ''}, /dev/{shape.device_kind})"
    )
    if node.accelerator_config_type or node.topology:
        config = f"{node.accelerator_config_type or '?'} {node.topology}".strip()
        text += f"\nacceleratorConfig {config}" + (
            " (the API gave no acceleratorType)" if node.type_from_config else ""
        )
    return text


def _network_row(node: Node) -> str:
    parts = [node.network.rsplit("/", 1)[-1] or "-"]
    if node.subnetwork:
        parts.append(f"subnet {node.subnetwork.rsplit('/', 1)[-1]}")
    if node.external_ips is not None:
        parts.append("external IPs" if node.external_ips else "internal IPs only")
    return ", ".join(parts)


def _metadata_row(node: Node) -> str:
    """Keys with a short sign of their value: ssh-keys and scripts are long, and not for here."""
    out = []
    for key, value in sorted(node.metadata.items()):
        lines = value.count("\n") + 1 if value else 0
        short = value if len(value) <= 40 and lines <= 1 else f"({lines} lines, {len(value)} B)"
        out.append(f"{key}={short}")
    return "\n".join(out) or "-"


def request_rows(node: Node, qr: QueuedResource | None) -> list[tuple[str, Text | str]]:
    """The request a node came from: its state, who caused it, its tier; and, when the TPU
    service (or a user) took the node back through it, what the request says of that."""
    if not node.queued_resource:
        return []
    if qr is None:
        return [("queued resource", f"{node.queued_resource} (not read yet, or gone)")]
    text = f"{qr.name}: {qr.state}"
    if qr.state_initiator:
        text += f", initiated by {qr.state_initiator}"
    text += f", {qr.provisioning}"
    if qr.multislice and node.name in qr.node_names:
        text += f", slice {qr.node_names.index(node.name)} of {qr.node_count}"
    rows: list[tuple[str, Text | str]] = [("queued resource", text)]
    if reason := qr.leaving_reason():
        rows.append(("", Text(reason, style="bold yellow")))
    if qr.error_message:
        rows.append(("", Text(f"error {qr.error_code}: {qr.error_message}", style="red")))
    return rows


def summary_table(node: Node, now, request: QueuedResource | None = None) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", justify="right")
    grid.add_column()
    created = node.create_time.astimezone().strftime("%Y-%m-%d %H:%M") if node.create_time else "-"
    state = state_text(node.state)
    if node.state.isdigit():
        state.append("  (a state newer than this console's API client)", style="dim")
    rows: list[tuple[str, Text | str]] = [
        ("name", Text(node.name, style="bold")),
        ("zone", node.zone),
        ("project", node.project),
        ("state", state),
        ("health", health_text(node.health)),
        ("provisioning", provisioning_text(node.provisioning)),
        *request_rows(node, request),
        ("type", _type_row(node)),
        ("runtime", node.runtime_version or "-"),
        ("api version", node.api_version or "-"),
        ("created", f"{created}  ({format_age(node.age_seconds(now))} ago)"),
        ("node id", str(node.node_id)),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(node.labels.items())) or "-"),
        ("network", _network_row(node)),
        (
            "service account",
            (node.service_account or "-")
            + "".join(f"\n  {scope}" for scope in node.service_account_scopes),
        ),
        (
            "data disks",
            "\n".join(f"{d.source_disk} ({d.mode or '?'})" for d in node.data_disks) or "-",
        ),
        ("metadata", _metadata_row(node)),
        ("tags", ", ".join(node.tags) or "-"),
    ]
    if node.health_description:
        rows.append(("health note", node.health_description))
    if node.description:
        rows.append(("description", node.description))
    for label, value in rows:
        grid.add_row(label, plain(value))  # a str cell of a Rich table would be read as markup
    for i, symptom in enumerate(node.symptoms):
        when = (
            symptom.create_time.astimezone().strftime(" (%m-%d %H:%M)")
            if symptom.create_time
            else ""
        )
        grid.add_row("symptom" if i == 0 else "", Text(str(symptom) + when, style="bold red"))
    if node.health == "TIMEOUT":
        grid.add_row(
            "",
            Text(
                "The health check of this VM timed out: its TPU runtime may be hung. Check its "
                "symptoms and jobs; if it stays TIMEOUT, delete it and create it again.",
                style="yellow",
            ),
        )
    if node.multi_host:
        grid.add_row(
            "", Text("A multi-host slice: it cannot be stopped, only deleted.", style="dim")
        )
    if node.state == "PREEMPTED":
        grid.add_row(
            "",
            Text(
                "Preempted spot VMs do not come back: delete it and create again "
                "(on-demand if spot capacity is short).",
                style="yellow",
            ),
        )
    return grid


class NodeDetailScreen(ConsoleScreen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.pop_screen", "Back", show=False),
        Binding("r", "refresh", "Refresh"),
        Binding("question_mark", "app.help", "Help"),
    ]

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node
        self._chips_watch: MetricsWatch | None = None
        self.chip_metrics: ChipMetrics | None = None
        self.request: QueuedResource | None = None  # the queued resource it came from, if any

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="detail-banner", classes="banner", markup=False)
        with VerticalScroll():
            yield Static(id="summary", markup=False)
            yield Static("Workers", classes="section", markup=False)
            table: DataTable = PlainTable(id="workers", cursor_type="row")
            # The endpoint's port is the TPU runtime's (8470), not ssh's: ssh dials port 22
            # or `[ssh] port`, as gcloud does.
            for title in ("WORKER", "INTERNAL IP", "EXTERNAL IP", "RUNTIME PORT"):
                table.add_column(title, key=title.lower())
            yield table
            yield Static("Chips", classes="section", markup=False)
            yield Static("", id="chips-note", markup=False)
            chips: DataTable = PlainTable(id="chips", cursor_type="row")
            for title in CHIP_HEADER:
                chips.add_column(title, key=title.lower())
            yield chips
            yield Static("Events", classes="section", markup=False)
            events: DataTable = PlainTable(id="events", cursor_type="row")
            for title in ("WHEN", "WHAT", "SEEN BY", "DETAIL"):
                events.add_column(title, key=title.lower())
            yield events
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.app.mode} · {self.node.zone}/{self.node.name}"
        self._show(self.node)
        if self.node.queued_resource:
            self._reload()  # its request is read from the API, as a refresh reads it
        self.set_interval(self.app.refresh_s, self.action_refresh)
        # Every chip of every worker, about once a second while this screen shows: on demand,
        # whatever the node's state (a node that is not READY says why it has no numbers).
        self.query_one("#chips-note", Static).update("reading the chips' runtime metrics…")
        self._chips_watch = self.services.chips.watch(self.node, self._chips_polled)

    def on_unmount(self) -> None:
        # Closed off the screen's removal: a poll in flight must not hold up going back.
        if self._chips_watch is not None:
            self.app.run_worker(self._chips_watch.close(), group="chip-watch")

    def _chips_polled(self, metrics: ChipMetrics) -> None:
        """One poll: each chip's row changes in place; the reasons for missing numbers below."""
        if not self.query("#chips"):
            return
        self.chip_metrics = metrics
        table = self.query_one("#chips", DataTable)
        wanted = {}
        for row in chip_rows(metrics):
            wanted[f"{row[0]}/{row[1]}"] = row
        for row_key in [k for k in table.rows if k.value not in wanted]:
            table.remove_row(row_key)
        for key, row in wanted.items():
            if key in table.rows:
                for column, old, new in zip(CHIP_HEADER, table.get_row(key), row, strict=True):
                    if str(old) != new:  # PlainTable holds each cell as a plain Text
                        table.update_cell(key, column.lower(), new, update_width=True)
            else:
                table.add_row(*row, key=key)
        notes = worker_reasons(metrics)
        if metrics.standin:
            notes.append(STANDIN_NOTE + ".")
        self.query_one("#chips-note", Static).update("\n".join(notes))

    def _show(self, node: Node) -> None:
        self.node = node
        self.query_one("#summary", Static).update(summary_table(node, self.app.now(), self.request))
        self._load_events()
        table = self.query_one("#workers", DataTable)
        table.clear()
        for w in node.workers:
            table.add_row(
                f"w{w.index}",
                w.internal_ip or "-",
                w.external_ip or "-",
                str(w.runtime_port) if w.runtime_port else "-",
                key=str(w.index),
            )

    @work(exclusive=True, group="node-events")
    async def _load_events(self) -> None:
        """The node's recorded events, read on a thread."""
        history = self.services.history
        events = await asyncio.to_thread(history.events_for, self.node.zone, self.node.name)
        if not self.is_attached:
            return
        table = self.query_one("#events", DataTable)
        table.clear()
        for event in events:
            table.add_row(
                event.at.astimezone().strftime("%m-%d %H:%M:%S"),
                event.kind,
                event.source,
                event.detail,
            )

    def action_refresh(self) -> None:
        self._reload()

    @work(exclusive=True, group="node-detail")
    async def _reload(self) -> None:
        banner = self.query_one("#detail-banner", Static)
        try:
            node = await self.services.fleet.get_node(self.node.zone, self.node.name)
        except FleetError as exc:
            why = await self._read_request(self.node)
            reason = why.leaving_reason() if why is not None else ""
            went = f" It went: {reason}" if reason else ""
            banner.update(styled((exc.reason, "bold"), " ", exc.remedy, went))
            banner.add_class("shown")
            return
        self.request = await self._read_request(node)
        if not self.is_attached:
            return
        banner.remove_class("shown")
        self._show(node)

    async def _read_request(self, node: Node) -> QueuedResource | None:
        """The node's queued resource (None: it has none, it is gone, or it cannot be read)."""
        if not node.queued_resource:
            return None
        life = self.services.lifecycle
        try:
            return await QueuedResourceService(self.services.fleet, life).request_of(node)
        except FleetError:
            return self.request
