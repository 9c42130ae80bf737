"""Each benchmark owns one section of bench/RESULTS.md and rewrites only that section."""

from __future__ import annotations

import platform
import re
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = (
    "# Benchmark results\n\n"
    "Each section is rewritten by the script it names (`make bench` runs them all).\n"
)


def machine_line() -> str:
    import os

    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, {platform.machine()}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def write_section(name: str, body: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else (text.rstrip() + "\n\n" + section + "\n")
    )
    RESULTS.write_text(text)


def load_line() -> str:
    """The machine's load when a benchmark starts: figures taken on a shared machine say so."""
    import os

    one, five, _ = os.getloadavg()
    shared = " (**shared with other work**: read the ratios, not the times)" if one > 2 else ""
    return f"load average {one:.1f} (5 min {five:.1f}) at the start{shared}"
