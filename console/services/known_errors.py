"""Failure signatures from the seeds' procedures, so logs can flag them as they stream.

The job issue grows this into a diagnosis table with causes and remedies; here it only matches.
"""

from __future__ import annotations

import re

SIGNATURES: tuple[str, ...] = (
    r"Traceback \(most recent call last\)",
    r"\b\w+Error: ",
    r"The TPU is already in use",
    r"Unable to initialize backend 'tpu'",
    r"Received incompatible devices for jitted computation",
    r"program continuator has halted",
    r"FAILED_PRECONDITION",
    r"signal only works in main thread",
    r"TPU version must be 4 or higher",
    r"Not enough memory\. Please try to increase",
    r"RESOURCE_EXHAUSTED",
    r"Killed$",
)

_ANY = re.compile("|".join(SIGNATURES))


def looks_like_error(line: str) -> bool:
    return _ANY.search(line) is not None
