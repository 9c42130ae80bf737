"""One line that redraws itself alone: a Static would relayout the whole screen each time."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


class StatusLine(Widget):
    text: reactive[Text] = reactive(Text, layout=False)

    def render(self) -> Text:
        return self.text
