"""`?`: every key of the screen underneath, including the ones the footer has no room for."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from console.ui.base_screens import ConsoleModal
from console.ui.plain import plain, styled

_KEY_NAMES = {"slash": "/", "question_mark": "?", "enter": "⏎", "escape": "esc"}


def key_table(screen: Screen) -> Table:
    table = Table(box=None, padding=(0, 2), show_header=False)
    table.add_column(style="bold yellow", justify="right")
    table.add_column()
    note_of = getattr(screen, "binding_note", None)
    for binding in screen.BINDINGS:
        if isinstance(binding, Binding):
            key = _KEY_NAMES.get(binding.key, binding.key)
            note = note_of(binding.action) if note_of is not None else ""
            if note:  # greyed out now, with the reason
                table.add_row(
                    Text(key, style="dim"), Text(f"{binding.description} — {note}", style="dim")
                )
            else:
                table.add_row(plain(key), plain(binding.description))
    # The app's own keys, on every screen.
    table.add_row(plain(": ctrl+p"), plain("Jump to a node, a screen or an action by name"))
    return table


class HelpScreen(ConsoleModal[None]):
    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "Close")]

    def __init__(self, under: Screen) -> None:
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            name = type(self.under).__name__.removesuffix("Screen")
            yield Static(styled(("Keys", "bold"), f" — {name}\n"), markup=False)
            yield Static(key_table(self.under), markup=False)
            yield Static(Text("\nesc or ? closes this help", style="dim"), markup=False)
