"""A scrolling log widget that renders only the rows on screen, reading them from the LogIndex.

Memory stays flat however long the job runs: the widget holds no text, only a scroll position.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache

from rich.cells import cell_len
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console.services.diagnosis import looks_like_error
from console.services.log_index import LogIndex
from console.services.terminal_text import PLAIN, Sgr, terminal_runs

WORKER_COLOURS = (
    "cyan",
    "magenta",
    "green",
    "yellow",
    "blue",
    "bright_red",
    "bright_cyan",
    "bright_magenta",
)
ERROR_STYLE = Style(color="bright_white", bgcolor="dark_red")
MATCH_STYLE = Style(bgcolor="grey35")
CURSOR_STYLE = Style(reverse=True)
ROW_CACHE = 512  # rendered rows kept: a screenful scrolls by while following, drawn once each
PREFIX_STYLES = [Style(color=c, bold=True) for c in WORKER_COLOURS]


def _colour(spec: tuple | None) -> Color | None:
    if spec is None:
        return None
    if spec[0] == "n":
        return Color.from_ansi(spec[1])
    return Color.from_rgb(*spec[1:])


@lru_cache(maxsize=1024)
def rich_style(sgr: Sgr) -> Style | None:
    """A job's colours as a style: rendered by Textual, never passed to the terminal as bytes."""
    if sgr == PLAIN:
        return None
    return Style(
        color=_colour(sgr.fg),
        bgcolor=_colour(sgr.bg),
        bold=sgr.bold or None,
        dim=sgr.dim or None,
        italic=sgr.italic or None,
        underline=sgr.underline or None,
        blink=sgr.blink or None,
        reverse=sgr.reverse or None,
        conceal=sgr.conceal or None,
        strike=sgr.strike or None,
    )


class LogView(ScrollView, can_focus=True):
    """`follow` keeps the newest line in view; scrolling up turns it off, as `less +F` does."""

    follow: reactive[bool] = reactive(True)

    def __init__(self, index: LogIndex, **kw) -> None:
        super().__init__(**kw)
        self.index = index
        self.search_text = ""
        self.current_row: int | None = None  # the search hit being shown
        self._width = 0
        # entry -> (its text, cursor?, search, segments): following a flood, each row is
        # drawn once, not again on every frame it scrolls through.
        self._rows: OrderedDict[int, tuple[str, bool, str, list[Segment]]] = OrderedDict()

    def refresh_rows(self) -> None:
        """Call after the index changed: resize, and stay at the bottom when following."""
        rows = len(self.index.visible)
        # As wide as the longest line seen, no wider: a horizontal bar only when one is needed.
        self.virtual_size = Size(self._width, rows)
        if self.follow:
            # Forced: the scrollbars that permit scrolling are only laid out on the next refresh.
            self.scroll_end(animate=False, immediate=True, x_axis=False, force=True)
        self.refresh()

    def render_line(self, y: int) -> Strip:
        offset = self.scroll_offset
        width = self.size.width
        row = int(offset.y) + y
        visible = self.index.visible
        if row >= len(visible):
            return Strip.blank(width, self.rich_style)
        entry = visible[row]
        worker, raw = self.index.visible_line(row)
        cursor = row == self.current_row
        cached = self._rows.get(entry)
        if cached is not None and cached[0] == raw and cached[1:3] == (cursor, self.search_text):
            self._rows.move_to_end(entry)
            segments = cached[3]
        else:
            segments = self._segments(worker, raw, cursor)
            self._rows[entry] = (raw, cursor, self.search_text, segments)
            if len(self._rows) > ROW_CACHE:
                self._rows.popitem(last=False)
        strip = Strip(segments).crop(int(offset.x), int(offset.x) + width)
        return strip.extend_cell_length(width)

    def _segments(self, worker: int, raw: str, cursor: bool) -> list[Segment]:
        # The job's bytes as a terminal row would show them: colours kept as styles, `\r` bars
        # at their latest state, every other escape and control gone before Textual sees it.
        runs = terminal_runs(raw)
        text = "".join(part for part, _ in runs)
        prefix = f"w{worker} │ "
        self._width = max(self._width, len(prefix) + cell_len(text))
        line_style = ERROR_STYLE if looks_like_error(text) else None
        if cursor:
            line_style = CURSOR_STYLE
        elif self.search_text and self.search_text.lower() in text.lower():
            line_style = line_style or MATCH_STYLE
        segments = [Segment(prefix, PREFIX_STYLES[worker % len(PREFIX_STYLES)])]
        for part, sgr in runs:
            style = rich_style(sgr)
            segments.append(Segment(part, style + line_style if style else line_style))
        return segments

    def on_resize(self) -> None:
        self.refresh_rows()  # the first layout, or a terminal resize, while following

    def watch_follow(self, follow: bool) -> None:
        if follow:
            self.refresh_rows()

    def _user_scrolled_up(self) -> None:
        if self.follow:
            self.follow = False

    def action_scroll_up(self) -> None:
        self._user_scrolled_up()
        super().action_scroll_up()

    def action_page_up(self) -> None:
        self._user_scrolled_up()
        super().action_page_up()

    def action_scroll_home(self) -> None:
        self._user_scrolled_up()
        super().action_scroll_home()

    def action_scroll_end(self) -> None:
        self.follow = True
        super().action_scroll_end()

    def _on_mouse_scroll_up(self, event) -> None:
        self._user_scrolled_up()
        super()._on_mouse_scroll_up(event)

    def show_row(self, row: int) -> None:
        """Put a search hit in the middle of the view, pausing follow."""
        self.follow = False
        self.current_row = row
        self.scroll_to(y=max(0, row - self.size.height // 2), animate=False, immediate=True)
        self.refresh()
