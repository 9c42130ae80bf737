"""The fleet's live table: one row per node, and one per queued resource above its nodes
(or alone, while it has none), brought to each snapshot by key.

It shows what it is given and says what the user did (`NodeHighlighted`, `NodeChosen`,
`SortAsked`); the fleet screen decides what that means. Refreshes never move the cursor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from console.models import ChipMetrics, Node
from console.present.chips import duty_cell, hbm_cell
from console.present.queued import (
    GROUP_MARK,
    LONE_MARK,
    ROW_PREFIX,
    TableRow,
    fleet_cells,
)
from console.services.fleet_columns import COLUMNS, row_texts
from console.ui.plain import PlainTable
from console.ui.styling import health_text, provisioning_text, state_text


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


def chip_texts(metrics: ChipMetrics | None) -> tuple[Text, Text]:
    """HBM and DUTY cells: numbers plain, a reason (no program, port closed…) dim or yellow."""
    out = []
    for text in (hbm_cell(metrics), duty_cell(metrics)):
        if text == "-" or "idle" in text:
            style = "dim"
        elif text[:1].isdigit():
            style = "yellow" if "?" in text else ""
        else:
            style = "yellow"
        out.append(Text(text, style=style))
    return out[0], out[1]


def styled_cells(
    node: Node,
    now: datetime,
    lock: str = "-",
    marked: bool = False,
    chips: ChipMetrics | None = None,
    branch: str = "",
) -> list[Text | str]:
    """`branch`: the node sits under its queued resource's row (├ / └ before its name)."""
    cells: list[Text | str] = list(row_texts(node, now))
    keys = [c.key for c in COLUMNS]
    name = Text(branch + node.name, style="bold" if node.needs_attention else "")
    name.stylize("dim", 0, len(branch))  # the base style stays the name's: _same sees it
    cells[keys.index("name")] = name
    cells[keys.index("state")] = state_text(node.state)
    cells[keys.index("health")] = health_text(node.health)
    cells[keys.index("provisioning")] = provisioning_text(node.provisioning)
    cells[keys.index("lock")] = lock_text(lock)
    if marked:
        cells[keys.index("name")] = Text("✓ " + branch + node.name, style="bold reverse")
    cells[keys.index("job")] = Text("-", style="dim")
    cells[keys.index("hbm")], cells[keys.index("duty")] = chip_texts(chips)
    return cells


# A request's state: waiting is news (yellow), FAILED and SUSPENDED sit on quota (red).
REQUEST_STYLES = {
    "ACTIVE": "bold green",
    "FAILED": "bold white on red",
    "SUSPENDED": "bold white on red",
    "SUSPENDING": "bold red",
    "DELETING": "bold yellow",
}


def request_cells(row: TableRow, now: datetime) -> list[Text | str]:
    """A queued resource's row, in the node columns: what present/queued.py says, coloured."""
    assert row.group is not None
    words = fleet_cells(row.group, now)
    qr = row.group.request
    cells: list[Text | str] = []
    for column in COLUMNS:
        word = words.get(column.key, "-")
        if column.key == "name":
            name = Text(word, style="bold")
            name.stylize("cyan", 0, len(GROUP_MARK))
            cells.append(name)
        elif column.key == "state":
            cells.append(Text(word, style=REQUEST_STYLES.get(qr.state, "bold yellow")))
        elif column.key == "provisioning":
            cells.append(provisioning_text(word))
        elif column.key == "job" and word != "-":
            cells.append(Text(word, style="red"))
        elif word == "-":
            cells.append(Text("-", style="dim"))
        else:
            cells.append(Text(word, style="cyan" if column.key == "workers" else ""))
    return cells


def _row_key(zone: object, name: object) -> str:
    """A row's key from its zone and name cells (the table's sort sees only cells): a request's
    name cell starts with its mark, a node's may carry a branch or a check before its name."""
    text = _plain(name)
    if text.startswith((GROUP_MARK, LONE_MARK)):
        return f"{ROW_PREFIX}{_plain(zone)}/{text[len(GROUP_MARK) :]}"
    return f"{_plain(zone)}/{text.split()[-1]}"


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

    class NodeHighlighted(Message):
        """The cursor is on another node (or on none): the keys that depend on it change."""

        def __init__(self, key: str | None) -> None:
            super().__init__()
            self.key = key

    class NodeChosen(Message):
        """Enter (or a click) on a node's row: open it."""

        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    class SortAsked(Message):
        """A click on a column's header."""

        def __init__(self, column: str) -> None:
            super().__init__()
            self.column = column

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        for column in COLUMNS:
            self.add_column(column.title, key=column.key)

    def show(
        self,
        rows: Iterable[TableRow],
        now: datetime,
        lock_of: Callable[[Node], str],
        marked: set[str],
        chips_of: Callable[[Node], ChipMetrics | None] = lambda _node: None,
    ) -> None:
        """Bring the table to these rows, in this order, by key: remove, add, update, reorder."""
        rows = list(rows)
        wanted = {r.key: r for r in rows}
        cursor_key = self.cursor_node_key()
        for row_key in list(self.rows):
            if row_key.value not in wanted:
                self.remove_row(row_key)
        for row in rows:
            node = row.node
            if node is None:
                cells = request_cells(row, now)
            else:
                cells = styled_cells(
                    node, now, lock_of(node), node.key in marked, chips_of(node), row.branch
                )
            if row.key in self.rows:
                current = self.get_row(row.key)
                for column, old, new in zip(COLUMNS, current, cells, strict=True):
                    if not _same(old, new):
                        self.update_cell(row.key, column.key, new, update_width=True)
            else:
                self.add_row(*cells, key=row.key)
        order = {r.key: i for i, r in enumerate(rows)}
        if [r.key.value for r in self.ordered_rows] != list(order):
            self.sort("zone", "name", key=lambda vals: order[_row_key(vals[0], vals[1])])
        if cursor_key in wanted:
            index = self.get_row_index(cursor_key)
            if index != self.cursor_row:
                self.move_cursor(row=index, scroll=False)

    def show_chips(self, key: str, metrics: ChipMetrics | None) -> None:
        """A poll of one node's chips: its HBM and DUTY cells change in place, nothing else."""
        if key not in self.rows:
            return
        for column, new in zip(("hbm", "duty"), chip_texts(metrics), strict=True):
            if not _same(self.get_cell(key, column), new):
                self.update_cell(key, column, new, update_width=True)

    def cursor_node_key(self) -> str | None:
        if self.row_count == 0:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    def move_to(self, key: str) -> bool:
        """Put the cursor on this row (a node's or a request's); False if it is not shown."""
        if key not in self.rows:
            return False
        self.move_cursor(row=self.get_row_index(key))
        return True

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self.post_message(self.NodeHighlighted(event.row_key.value))

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(self.NodeChosen(event.row_key.value))

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        if event.column_key.value in {c.key for c in COLUMNS}:
            self.post_message(self.SortAsked(event.column_key.value))
