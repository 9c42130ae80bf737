"""What a job's output line looks like on a terminal, worked out here so the terminal never sees it.

A line is played as a terminal would play it on one row (`\r` back to the start, backspace,
tabs, cursor moves along the row, erase-in-line), with its colours (SGR) kept as styles and
every other escape or control (titles, clear-screen, moves to other rows, bells) dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

# Any control at all: lines without one (nearly all) take the fast path. Line and paragraph
# separators and bidirectional overrides count: they break or reorder the row on screen.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_TOKEN = re.compile(
    r"(?P<csi>(?:\x1b\[|\x9b)(?P<params>[0-?]*)[ -/]*(?P<final>[@-~]))"
    # OSC, DCS, SOS, PM, APC: strings up to BEL or ST (or the end of the line), all dropped.
    r"|(?P<string>(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$))"
    r"|(?P<esc>\x1b[ -/]*[0-~]?)"
    r"|(?P<cr>\r)|(?P<bs>\x08)|(?P<tab>\t)"
    r"|(?P<control>[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069])"
)
TAB = 8


@dataclass(frozen=True)
class Sgr:
    """The graphic rendition in effect: colours as ("n", 0-255) or ("rgb", r, g, b)."""

    fg: tuple | None = None
    bg: tuple | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    blink: bool = False
    reverse: bool = False
    conceal: bool = False
    strike: bool = False


PLAIN = Sgr()
_RESETS: dict[int, dict[str, Any]] = {
    22: {"bold": False, "dim": False},
    23: {"italic": False},
    24: {"underline": False},
    25: {"blink": False},
    27: {"reverse": False},
    28: {"conceal": False},
    29: {"strike": False},
}
_SETS = {1: "bold", 2: "dim", 3: "italic", 4: "underline", 5: "blink", 6: "blink"}
_SETS |= {7: "reverse", 8: "conceal", 9: "strike", 21: "underline"}


def _colour(codes: list[int], i: int) -> tuple[tuple | None, int]:
    """An extended colour at codes[i] (after 38/48): 5;n or 2;r;g;b; and how many it used."""
    if i < len(codes) and codes[i] == 5 and i + 1 < len(codes):
        return ("n", min(255, codes[i + 1])), 2
    if i < len(codes) and codes[i] == 2 and i + 3 < len(codes):
        r, g, b = (min(255, c) for c in codes[i + 1 : i + 4])
        return ("rgb", r, g, b), 4
    return None, len(codes) - i


def apply_sgr(state: Sgr, params: str) -> Sgr:
    codes = [int(p) if p.isdigit() else 0 for p in re.split("[;:]", params)] if params else [0]
    i = 0
    while i < len(codes):
        code = codes[i]
        i += 1
        if code == 0:
            state = PLAIN
        elif code in _SETS:
            flag: dict[str, Any] = {_SETS[code]: True}
            state = replace(state, **flag)
        elif code in _RESETS:
            state = replace(state, **_RESETS[code])
        elif 30 <= code <= 37 or 90 <= code <= 97:
            state = replace(state, fg=("n", code - 30 if code < 90 else code - 82))
        elif 40 <= code <= 47 or 100 <= code <= 107:
            state = replace(state, bg=("n", code - 40 if code < 100 else code - 92))
        elif code in (38, 48):
            colour, used = _colour(codes, i)
            i += used
            extended: dict[str, Any] = {"fg" if code == 38 else "bg": colour}
            state = replace(state, **extended)
        elif code == 39:
            state = replace(state, fg=None)
        elif code == 49:
            state = replace(state, bg=None)
    return state


class _Row:
    """One terminal row: characters and their renditions, and a cursor."""

    def __init__(self) -> None:
        self.chars: list[str] = []
        self.styles: list[Sgr] = []
        self.col = 0

    def write(self, text: str, style: Sgr) -> None:
        if self.col > len(self.chars):
            self.pad(self.col)
        end = self.col + len(text)
        self.chars[self.col : end] = text  # overwrites, and extends past the end
        self.styles[self.col : end] = [style] * len(text)
        self.col = end

    def pad(self, width: int) -> None:
        self.styles.extend([PLAIN] * (width - len(self.chars)))
        self.chars.extend(" " * (width - len(self.chars)))

    def erase(self, mode: int) -> None:
        if mode == 0:
            del self.chars[self.col :], self.styles[self.col :]
        elif mode == 1:
            upto = min(self.col + 1, len(self.chars))
            self.chars[:upto] = " " * upto
            self.styles[:upto] = [PLAIN] * upto
        elif mode == 2:
            self.chars[:] = " " * len(self.chars)
            self.styles[:] = [PLAIN] * len(self.styles)

    def runs(self) -> tuple[tuple[str, Sgr], ...]:
        out: list[tuple[str, Sgr]] = []
        start = 0
        for i in range(1, len(self.chars) + 1):
            if i == len(self.chars) or self.styles[i] != self.styles[start]:
                out.append(("".join(self.chars[start:i]), self.styles[start]))
                start = i
        return tuple(out)


def _number(params: str, default: int = 1) -> int:
    first = params.split(";")[0]
    return int(first) if first.isdigit() and int(first) > 0 else default


@lru_cache(maxsize=4096)
def terminal_runs(text: str) -> tuple[tuple[str, Sgr], ...]:
    """The line as a terminal row would show it: (text, rendition) runs, controls gone."""
    if not _CONTROL.search(text):
        return ((text, PLAIN),) if text else ()
    row, style, at = _Row(), PLAIN, 0
    for token in _TOKEN.finditer(text):
        if token.start() > at:
            row.write(text[at : token.start()], style)
        at = token.end()
        if token.group("csi"):
            params, final = token.group("params"), token.group("final")
            if final == "m":
                style = apply_sgr(style, params)
            elif final == "K":
                row.erase(int(params) if params.isdigit() else 0)
            elif final == "C":
                row.col += _number(params)
            elif final == "D":
                row.col = max(0, row.col - _number(params))
            elif final == "G":
                row.col = _number(params) - 1
            # Anything else (rows up and down, clear-screen, scrolling, modes) has no row here.
        elif token.group("cr"):
            row.col = 0
        elif token.group("bs"):
            row.col = max(0, row.col - 1)
        elif token.group("tab"):  # moves to the next stop; it erases nothing on its way
            row.col = (row.col // TAB + 1) * TAB
            if row.col > len(row.chars):
                row.pad(row.col)
    if at < len(text):
        row.write(text[at:], style)
    return row.runs()


def plain_text(text: str) -> str:
    """The characters a terminal row would show, without renditions (search, width, saving)."""
    return "".join(part for part, _ in terminal_runs(text))


def sgr_sequence(style: Sgr) -> str:
    """The one SGR escape that sets exactly `style` from a reset (for a terminal we print to)."""
    codes = ["0"]
    for name, code in (("bold", 1), ("dim", 2), ("italic", 3), ("underline", 4)):
        if getattr(style, name):
            codes.append(str(code))
    for name, code in (("blink", 5), ("reverse", 7), ("conceal", 8), ("strike", 9)):
        if getattr(style, name):
            codes.append(str(code))
    for colour, base in ((style.fg, 38), (style.bg, 48)):
        if colour is None:
            continue
        if colour[0] == "n":
            codes.append(f"{base};5;{colour[1]}")
        else:
            codes.append(f"{base};2;{colour[1]};{colour[2]};{colour[3]}")
    return f"\x1b[{';'.join(codes)}m"


def safe_for_terminal(text: str) -> str:
    """The line re-emitted with only its colours as escapes: nothing else reaches a terminal."""
    out, current = [], PLAIN
    for part, style in terminal_runs(text):
        if style != current:
            out.append(sgr_sequence(style))
            current = style
        out.append(part)
    if current != PLAIN:
        out.append("\x1b[0m")
    return "".join(out)
