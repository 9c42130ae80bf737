"""The operations under the fleet table: each finished try's outcome stays, the live state
of each operation replaces itself, and an operation's lines go when it ends."""

from __future__ import annotations

from textual.widgets import Static

from console.services.lifecycle import Progress
from console.ui.plain import lines


class OpsPanel(Static):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        # node key -> its operation's lines: each finished try's outcome, then the latest state
        self.operations: dict[str, list[str]] = {}
        self._live: dict[str, str] = {}

    def report(self, key: str, progress: Progress) -> bool:
        """One line of news; True if it is the operation's first (its row may be new)."""
        first = key not in self.operations
        kept = self.operations.setdefault(key, [])
        if progress.outcome:
            kept.append(("✗ " if progress.state == "FAILED" else "· ") + progress.line())
            self._live.pop(key, None)
        else:
            self._live[key] = "⟳ " + progress.line()
        self._show()
        return first

    def done(self, key: str) -> None:
        self.operations.pop(key, None)
        self._live.pop(key, None)
        self._show()

    def _show(self) -> None:
        shown = [
            line
            for key, kept in self.operations.items()
            for line in (*kept, self._live.get(key, ""))
            if line
        ]
        if self.is_attached:  # not while the app closes
            self.update(lines(shown))
