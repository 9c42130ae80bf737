"""Text from a job, a node or a user reaches a widget as plain text, never as markup.

Textual reads a str given to Static, Label, a DataTable cell, a Select prompt or notify() as
content markup: `[/]` raises MarkupError (a crash), `[INST]` vanishes, `[@click=app.quit]` binds
an action. Escaping does not help: neither Rich's nor Textual's escape covers every tag Textual
parses. So the console's widgets are built with `markup=False` and fed Rich `Text` objects,
which carry their own styles and are never parsed; the helpers here make that the easy way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

Piece = str | Text | tuple[str, str]


def plain(value: object) -> Text:
    """A cell or a line as shown: a Text stays as it is, anything else is its str, unparsed."""
    return value if isinstance(value, Text) else Text(str(value))


def styled(*pieces: Piece, sep: str = "") -> Text:
    """Text.assemble with a separator: pieces are str (plain), Text, or (text, style)."""
    out = Text()
    for i, piece in enumerate(pieces):
        if i and sep:
            out.append(sep)
        if isinstance(piece, tuple):
            out.append(piece[0], style=piece[1])
        else:
            out.append(piece)
    return out


def lines(items: Iterable[Text | str]) -> Text:
    """One Text of several lines."""
    return Text("\n").join(plain(item) for item in items)


def choices(values: Iterable[Any]) -> list[tuple[Text, Any]]:
    """Select options whose prompts are the values themselves, shown as they are."""
    return [(plain(v), v) for v in values]


class PlainTable(DataTable):
    """A DataTable whose str cells are text, not markup (DataTable would parse them)."""

    def add_column(self, label: Any, *args: Any, **kwargs: Any) -> Any:
        return super().add_column(plain(label), *args, **kwargs)

    def add_row(self, *cells: Any, **kwargs: Any) -> Any:
        if isinstance(kwargs.get("label"), str):
            kwargs["label"] = plain(kwargs["label"])
        return super().add_row(*(plain(c) for c in cells), **kwargs)

    def update_cell(self, row_key: Any, column_key: Any, value: Any, **kwargs: Any) -> None:
        super().update_cell(row_key, column_key, plain(value), **kwargs)

    def update_cell_at(self, coordinate: Any, value: Any, **kwargs: Any) -> None:
        super().update_cell_at(coordinate, plain(value), **kwargs)
