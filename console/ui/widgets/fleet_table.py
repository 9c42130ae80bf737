"""The fleet's live table: one row per node, brought to each snapshot by key.

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

from console.models import Node
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
        nodes: Iterable[Node],
        now: datetime,
        lock_of: Callable[[Node], str],
        marked: set[str],
    ) -> None:
        """Bring the rows to these nodes, in this order, by key: remove, add, update, reorder."""
        nodes = list(nodes)
        wanted = {n.key: n for n in nodes}
        cursor_key = self.cursor_node_key()
        for row_key in list(self.rows):
            if row_key.value not in wanted:
                self.remove_row(row_key)
        for node in nodes:
            cells = styled_cells(node, now, lock_of(node), node.key in marked)
            if node.key in self.rows:
                current = self.get_row(node.key)
                for column, old, new in zip(COLUMNS, current, cells, strict=True):
                    if not _same(old, new):
                        self.update_cell(node.key, column.key, new, update_width=True)
            else:
                self.add_row(*cells, key=node.key)
        order = {n.key: i for i, n in enumerate(nodes)}
        if [r.key.value for r in self.ordered_rows] != list(order):
            self.sort(
                "zone", "name", key=lambda vals: order[f"{_plain(vals[0])}/{_plain(vals[1])}"]
            )
        if cursor_key in wanted:
            index = self.get_row_index(cursor_key)
            if index != self.cursor_row:
                self.move_cursor(row=index, scroll=False)

    def cursor_node_key(self) -> str | None:
        if self.row_count == 0:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    def move_to(self, key: str) -> bool:
        """Put the cursor on this node's row; False if it is not shown (filtered out)."""
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
