"""Bytes to complete lines: output arrives in arbitrary chunks, users read lines.

Lines end at `\n`. Long lines cost linear time and bounded memory: see VISIBLE_BYTES.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

# What of one line is ever held in memory, shown or matched: a terminal row shows far less,
# and a progress bar redrawn with \r for hours is one line of hundreds of megabytes. The whole
# line stays on disk, in the local copy.
VISIBLE_BYTES = 16 << 10


def visible_part(head: bytes, tail: bytes, total: int) -> bytes:
    """The shown part of a line of `total` bytes longer than VISIBLE_BYTES, from its first and
    last VISIBLE_BYTES: its latest `\r` state (what a terminal would show), else its start and
    how much more there is."""
    state = tail.rstrip(b"\r")
    cut = state.rfind(b"\r")
    if cut >= 0:
        return state[cut + 1 :]
    head = head[:VISIBLE_BYTES]
    return head + f" … [{total - len(head):,} more bytes]".encode()


def clipped(line: bytes) -> bytes:
    """A complete line as it is kept: whole up to VISIBLE_BYTES, else its visible part."""
    if len(line) <= VISIBLE_BYTES:
        return line
    return visible_part(line[:VISIBLE_BYTES], line[-VISIBLE_BYTES:], len(line))


class OpenLine:
    """A line still being written, in bounded memory: its first and last VISIBLE_BYTES."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, piece: bytes) -> None:
        if not piece:
            return
        self.total += len(piece)
        room = VISIBLE_BYTES - len(self.head)
        if room > 0:
            self.head += piece[:room]
        self.tail += piece[-VISIBLE_BYTES:]
        if len(self.tail) > 2 * VISIBLE_BYTES:  # trimmed now and then: linear, not per piece
            del self.tail[:-VISIBLE_BYTES]

    def take(self) -> bytes:
        """The line as it is kept (see `clipped`), and a fresh start."""
        if self.total <= VISIBLE_BYTES:
            line = bytes(self.head)
        else:
            line = visible_part(bytes(self.head), bytes(self.tail[-VISIBLE_BYTES:]), self.total)
        self.head, self.tail, self.total = bytearray(), bytearray(), 0
        return line


class LineSplitter:
    """Lines end at `\n` and only there, everywhere: live, replayed, in results and views.

    (str.splitlines would also cut at \r, \f, \v, U+0085, U+2028…, so a replay would differ
    from what was shown live.) An open line grows in place, so a long one costs linear time.

    With `bounded`, a line longer than VISIBLE_BYTES comes out as its visible part and is held
    in bounded memory while open (for job logs, whose whole lines stay on disk); without, lines
    come out whole (a command's output that a program parses, such as the probe's JSON).
    """

    def __init__(self, *, bounded: bool = False) -> None:
        self.bounded = bounded
        self._partial = bytearray()
        self._open = OpenLine()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines in `chunk` (with what was left over before), newline stripped."""
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self._add(chunk)
            return []
        first = chunk.find(b"\n")
        self._add(chunk[:first])
        lines = [self._take()]
        if first < cut:
            middle = chunk[first + 1 : cut].split(b"\n")
            lines += [clipped(line) for line in middle] if self.bounded else middle
        self._add(chunk[cut + 1 :])
        return lines

    def _add(self, piece: bytes) -> None:
        if self.bounded:
            self._open.add(piece)
        else:
            self._partial += piece

    def _take(self) -> bytes:
        if self.bounded:
            return self._open.take()
        line, self._partial = bytes(self._partial), bytearray()
        return line

    @property
    def pending(self) -> bytes:
        """The open line so far (its visible part when bounded)."""
        if not self.bounded:
            return bytes(self._partial)
        if self._open.total <= VISIBLE_BYTES:
            return bytes(self._open.head)
        return visible_part(bytes(self._open.head), bytes(self._open.tail), self._open.total)

    def flush(self) -> bytes | None:
        """The unterminated tail, for when the stream has truly ended."""
        empty = (self._open.total if self.bounded else len(self._partial)) == 0
        tail = self._take()
        return None if empty else tail


def bounded_runs(pieces: Iterator[bytes] | list[bytes]) -> Iterator[bytes]:
    """Bulk data to runs of complete lines for matchers, each line at most its visible part.

    Runs of short lines pass through as they are (one C-level scan each for the matchers); a
    line longer than VISIBLE_BYTES becomes its visible part, however many pieces it spans. A
    last line without a newline is given one.
    """
    open_line = OpenLine()
    for piece in pieces:
        first = piece.find(b"\n")
        if first < 0:
            open_line.add(piece)
            continue
        last = piece.rfind(b"\n")
        open_line.add(piece[:first])
        yield open_line.take() + b"\n"
        if first < last:
            run = piece[first + 1 : last + 1]
            if len(run) > VISIBLE_BYTES and _has_long_line(run):
                run = b"".join(clipped(line) + b"\n" for line in run[:-1].split(b"\n"))
            yield run
        open_line.add(piece[last + 1 :])
    if open_line.total:
        yield open_line.take() + b"\n"


def _has_long_line(run: bytes) -> bool:
    return max(map(len, run.split(b"\n"))) > VISIBLE_BYTES


def split_lines(text: str) -> list[str]:
    """A whole text's lines by the one rule: `\n` ends a line; a last line may lack it."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def copy_lines(path: Path) -> Iterator[str]:
    """Every line of a local copy, decoded, each at most its visible part, the last one too."""
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        for run in bounded_runs(iter(lambda: fh.read(1 << 20), b"")):
            for line in run[:-1].split(b"\n"):
                yield decode(line)


def decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r")


def matching_lines(
    pattern: re.Pattern[bytes], data: bytes, anchors: tuple[bytes, ...] = ()
) -> Iterator[tuple[re.Match, str]]:
    """Each match in a chunk of complete lines, with the whole line it falls in, decoded.

    With `anchors` (literals one of which every match contains), only the lines holding one are
    searched: bytes.find runs at memory speed, while an alternation of patterns costs Python's
    regex engine over 100 ns a byte, which a log pouring in cannot afford. Without, one C-level
    scan of the chunk. Either way only matching lines are cut out and decoded.
    """
    if not data:
        return  # the usual case where a prefilter took every line away: no scan at all
    if not anchors:
        for match in pattern.finditer(data):
            start = data.rfind(b"\n", 0, match.start()) + 1
            end = data.find(b"\n", match.end())
            yield match, decode(data[start : end if end >= 0 else len(data)])
        return
    for start in _lines_with(anchors, data):
        end = data.find(b"\n", start)
        line = data[start : end if end >= 0 else len(data)]
        for match in pattern.finditer(line):
            yield match, decode(line)


def lines_holding(anchors: tuple[bytes, ...], data: bytes) -> bytes:
    """The lines of `data` (complete lines) that contain any of the anchors, in order."""
    pieces = []
    for start in _lines_with(anchors, data):
        end = data.find(b"\n", start)
        pieces.append(data[start : end + 1 if end >= 0 else len(data)])
    return b"".join(pieces)


# Letters from the commonest in text to the rarest; digits, blanks and the usual punctuation of
# logs are commoner still, any other byte rarer.
_LETTERS = b"etaoinsrhldcumfpgwybvkxjqz"
_COMMON = b" 0123456789.,:-/\t\n"


def _rarity(byte: int) -> int:
    if byte in _COMMON:
        return -1
    lower = bytes([byte]).lower()[0]
    rank = _LETTERS.find(bytes([lower]))
    if rank < 0:
        return 60  # punctuation and the rest
    return rank + (30 if lower != byte else 0)  # capitals are rarer than their lower case


@lru_cache(maxsize=64)
def _by_rare_byte(anchors: tuple[bytes, ...]) -> tuple[tuple[bytes, tuple[bytes, ...]], ...]:
    """The anchors grouped by the rarest byte each holds: a chunk without that byte (memchr
    finds out at memory speed) holds none of the group, and is not searched for them."""
    groups: dict[bytes, list[bytes]] = {}
    for anchor in anchors:
        rare = max(anchor, key=_rarity) if anchor else 0
        groups.setdefault(bytes([rare]), []).append(anchor)
    return tuple((byte, tuple(group)) for byte, group in groups.items())


def _lines_with(anchors: tuple[bytes, ...], data: bytes) -> list[int]:
    """Start offsets, in order, of the lines that contain any of the anchors."""
    starts: set[int] = set()
    for rare, group in _by_rare_byte(anchors):
        if data.find(rare) >= 0:
            _add_lines_with(group, data, starts)
    return sorted(starts)


def _add_lines_with(anchors: tuple[bytes, ...], data: bytes, starts: set[int]) -> None:
    for anchor in anchors:
        at = data.find(anchor)
        while at >= 0:
            start = data.rfind(b"\n", 0, at) + 1
            starts.add(start)
            end = data.find(b"\n", at)
            if end < 0:
                break
            at = data.find(anchor, end)
