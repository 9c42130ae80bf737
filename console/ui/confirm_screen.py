"""Confirmations for what cannot be undone: `y` for a named list, the zone's name for all of it."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Input, Static

from console.ui.base_screens import ConsoleModal
from console.ui.plain import styled


def _body(title: str, items: list[str]) -> Text:
    """The title in bold, then each item exactly as it will happen."""
    text = styled((title, "bold"), "\n\n")
    for item in items:
        text.append(f"  • {item}\n")
    return text


class ConfirmScreen(ConsoleModal[bool]):
    """Shows exactly what will happen to which nodes; `y` goes ahead, `n`/esc does nothing."""

    BINDINGS = [Binding("y", "yes", "Yes"), Binding("n,escape", "no", "No")]

    def __init__(self, title: str, lines: list[str]) -> None:
        super().__init__()
        self.title_text = title
        self.lines = lines

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(
                _body(self.title_text, self.lines)
                + styled(
                    "\n", ("y", "bold"), " goes ahead · ", ("n", "bold"), " or esc does nothing"
                ),
                id="confirm",
                markup=False,
            )

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


class TypedConfirmScreen(ConsoleModal[bool]):
    """Deleting a whole zone: the user types the zone's name, as cloud consoles ask."""

    BINDINGS = [Binding("escape", "no", "Cancel")]

    def __init__(self, title: str, lines: list[str], word: str) -> None:
        super().__init__()
        self.title_text = title
        self.lines = lines
        self.word = word

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(
                _body(self.title_text, self.lines)
                + styled(
                    "\nType ", (self.word, "bold"), " and press enter to go ahead; esc cancels."
                ),
                markup=False,
            )
            yield Input(id="typed", placeholder=self.word)
            yield Static("", id="typed-error", markup=False)

    def on_mount(self) -> None:
        self.query_one("#typed", Input).focus()

    @on(Input.Submitted, "#typed")
    def _typed(self, event: Input.Submitted) -> None:
        if event.value.strip() == self.word:
            self.dismiss(True)
        else:
            self.query_one("#typed-error", Static).update(
                f"That is not {self.word!r}; nothing was deleted."
            )

    def action_no(self) -> None:
        self.dismiss(False)
