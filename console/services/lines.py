"""Bytes to complete lines: output arrives in arbitrary chunks, users read lines.

Only complete lines leave here, so a byte offset counted from them always points at a line start.
"""

from __future__ import annotations

import re
from collections.abc import Iterator


class LineSplitter:
    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines in `chunk` (with what was left over before), newline stripped."""
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        return lines

    @property
    def pending(self) -> bytes:
        return self._partial

    def keep(self, partial: bytes) -> None:
        """Set the unterminated tail directly, for callers that split bulk data themselves."""
        self._partial = partial

    def flush(self) -> bytes | None:
        """The unterminated tail, for when the stream has truly ended."""
        tail, self._partial = self._partial, b""
        return tail or None

    def reset(self) -> None:
        self._partial = b""


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
