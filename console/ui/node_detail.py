"""One node in full: workers and their addresses, labels, symptoms, runtime and provisioning.

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

from console.models import FleetError, Node, format_age
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


def summary_table(node: Node, now) -> Table:
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
            yield Static("Events", classes="section", markup=False)
            events: DataTable = PlainTable(id="events", cursor_type="row")
            for title in ("WHEN", "WHAT", "SEEN BY", "DETAIL"):
                events.add_column(title, key=title.lower())
            yield events
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.app.mode} · {self.node.zone}/{self.node.name}"
        self._show(self.node)
        self.set_interval(self.app.refresh_s, self.action_refresh)

    def _show(self, node: Node) -> None:
        self.node = node
        self.query_one("#summary", Static).update(summary_table(node, self.app.now()))
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
            banner.update(styled((exc.reason, "bold"), " ", exc.remedy))
            banner.add_class("shown")
            return
        banner.remove_class("shown")
        self._show(node)
