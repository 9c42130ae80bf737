"""Bytes to complete lines: output arrives in arbitrary chunks, users read lines.

Only complete lines leave here, so a byte offset counted from them always points at a line start.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path


class LineSplitter:
    """Lines end at `\n` and only there, everywhere: live, replayed, in results and views.

    (str.splitlines would also cut at \r, \f, \v, U+0085, U+2028…, so a replay would differ
    from what was shown live.)
    """

    def __init__(self) -> None:
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines in `chunk` (with what was left over before), newline stripped."""
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self._partial += chunk  # an open line grows in place: linear however long
            return []
        data = bytes(self._partial) + chunk[:cut] if self._partial else chunk[:cut]
        self._partial = bytearray(chunk[cut + 1 :])
        return data.split(b"\n")

    @property
    def pending(self) -> bytes:
        return bytes(self._partial)

    def flush(self) -> bytes | None:
        """The unterminated tail, for when the stream has truly ended."""
        tail, self._partial = bytes(self._partial), bytearray()
        return tail or None


def split_lines(text: str) -> list[str]:
    """A whole text's lines by the one rule: `\n` ends a line; a last line may lack it."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def copy_lines(path: Path) -> Iterator[str]:
    """Every line of a local copy, decoded, its last line too if it has no newline."""
    splitter = LineSplitter()
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        while piece := fh.read(1 << 20):
            for line in splitter.feed(piece):
                yield decode(line)
    tail = splitter.flush()
    if tail is not None:
        yield decode(tail)


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


def _lines_with(anchors: tuple[bytes, ...], data: bytes) -> list[int]:
    """Start offsets, in order, of the lines that contain any of the anchors."""
    starts = set()
    for anchor in anchors:
        at = data.find(anchor)
        while at >= 0:
            start = data.rfind(b"\n", 0, at) + 1
            starts.add(start)
            end = data.find(b"\n", at)
            if end < 0:
                break
            at = data.find(anchor, end)
    return sorted(starts)
