"""Bytes to lines, and the bulk matchers' prefilter: the lines holding any of the anchors."""

from __future__ import annotations

from console.services.lines import lines_holding


def naive(anchors: tuple[bytes, ...], data: bytes) -> bytes:
    return b"".join(
        line + b"\n" for line in data.split(b"\n")[:-1] if any(a in line for a in anchors)
    )


def test_the_lines_holding_an_anchor_are_all_found_whichever_bytes_the_log_uses() -> None:
    anchors = (b"RESOURCE_EXHAUSTED", b"already in use", b"DONE: ", b"training loss", b"x")
    logs = [
        b"".join(b"line %d %s\n" % (i, b"y" * 40) for i in range(2000)),  # a sparse alphabet
        b"step 1 training loss: 0.5\nDONE: steps=1\nthe TPU is already in use\n",
        b"XLA RESOURCE_EXHAUSTED: out of memory\nRESOURCE_EXHAUSTE\nDONE:\n",
        b"xx\n\nDONE: a\nDONE: b training loss\n",  # two anchors in one line: the line once
    ]
    for data in logs:
        assert lines_holding(anchors, data) == naive(anchors, data)
    assert lines_holding(anchors, b"") == b""
