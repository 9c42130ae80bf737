"""A job's line as a terminal row would show it, with nothing in it that could drive one."""

from __future__ import annotations

import pytest

from console.services.terminal_text import plain_text, safe_for_terminal, terminal_runs


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("a\x1b]0;TITLE\x07b", "ab"),  # a window title, ended by BEL
        ("a\x1b]2;TITLE\x1b\\b", "ab"),  # ... or by ST
        ("\x1b[2J\x1b[Hhello\x1b[3Aup", "helloup"),  # clear-screen, home, rows up
        (" 10%\r 50%\r100% done", "100% done"),  # a progress bar: its latest state
        ("abcdef\rXY", "XYcdef"),  # \r overwrites, as on a terminal
        ("pct 50%\r\x1b[K99%", "99%"),  # ... and erase-in-line erases
        ("tab\there", "tab     here"),
        ("bell\x07 \x9b31mC1 csi", "bell C1 csi"),
        ("oops\x08\x08ps", "oops"),
        ("rtl \u202eevil\u202c", "rtl evil"),
    ],
)
def test_a_line_shows_what_a_terminal_row_would_and_nothing_drives_the_terminal(
    line: str, shown: str
) -> None:
    assert plain_text(line) == shown
    out = safe_for_terminal(line)
    assert "\x1b]" not in out and "\r" not in out and "\x07" not in out


def test_colours_survive_as_renditions() -> None:
    runs = terminal_runs("\x1b[31mred\x1b[0m, \x1b[1;38;5;202mamber\x1b[39m, \x1b[48;2;1;2;3mbg")
    styles = {text: style for text, style in runs}
    assert styles["red"].fg == ("n", 1)
    assert styles["amber"].fg == ("n", 202) and styles["amber"].bold
    assert styles["bg"].bg == ("rgb", 1, 2, 3) and styles["bg"].bold and styles["bg"].fg is None
    assert safe_for_terminal("\x1b[31mred\x1b[0m") == "\x1b[0;38;5;1mred\x1b[0m"
