"""A merged, filterable view of a job's local log copies that keeps only line offsets in memory.

As Toolong does: the files are the store, the index holds (worker, offset) per line in arrival
order, and text is read back from disk only for the lines on screen (with a small cache).
"""

from __future__ import annotations

import re
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from console.services.lines import decode

CACHE_LINES = 4096


class LogIndex:
    def __init__(self, paths: dict[int, Path]) -> None:
        self.paths = paths
        self._positions = dict.fromkeys(paths, 0)
        self._workers = array("H")
        self._offsets = array("Q")
        self._handles: dict[int, object] = {}
        self._cache: OrderedDict[int, str] = OrderedDict()
        self.shown_workers: frozenset[int] = frozenset(paths)
        self.filter_text = ""
        self._filter_re: re.Pattern[str] | None = None
        self.visible = array("Q")  # indices into the entries, in order

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()  # type: ignore[attr-defined]
        self._handles.clear()

    # ----- growing -----------------------------------------------------------------------------
    def scan(self) -> int:
        """Index the complete lines written since the last scan; returns how many are new."""
        added = 0
        for worker, path in self.paths.items():
            if not path.exists():
                continue
            start = self._positions[worker]
            size = path.stat().st_size
            if size <= start:
                continue
            with open(path, "rb") as fh:
                fh.seek(start)
                data = fh.read(size - start)
            end = data.rfind(b"\n")
            if end < 0:
                continue
            offset = start
            first_new = len(self._offsets)
            for line in data[: end + 1].split(b"\n")[:-1]:
                self._workers.append(worker)
                self._offsets.append(offset)
                offset += len(line) + 1
            self._positions[worker] = offset
            added += len(self._offsets) - first_new
            self._extend_visible(range(first_new, len(self._offsets)))
        return added

    def _passes(self, entry: int) -> bool:
        if self._workers[entry] not in self.shown_workers:
            return False
        return self._filter_re is None or self._filter_re.search(self.text(entry)) is not None

    def _extend_visible(self, entries: Iterable[int]) -> None:
        self.visible.extend(e for e in entries if self._passes(e))

    def set_view(
        self, workers: Iterable[int] | None = None, filter_text: str | None = None
    ) -> None:
        if workers is not None:
            self.shown_workers = frozenset(workers)
        if filter_text is not None:
            self.filter_text = filter_text
            self._filter_re = re.compile(re.escape(filter_text), re.I) if filter_text else None
        self.visible = array("Q")
        self._extend_visible(range(len(self._offsets)))

    # ----- reading -----------------------------------------------------------------------------
    def worker_of(self, entry: int) -> int:
        return self._workers[entry]

    def text(self, entry: int) -> str:
        cached = self._cache.get(entry)
        if cached is not None:
            self._cache.move_to_end(entry)
            return cached
        worker = self._workers[entry]
        fh = self._handles.get(worker)
        if fh is None:
            fh = self._handles[worker] = open(self.paths[worker], "rb")  # noqa: SIM115
        fh.seek(self._offsets[entry])  # type: ignore[attr-defined]
        text = decode(fh.readline().rstrip(b"\n"))  # type: ignore[attr-defined]
        self._cache[entry] = text
        if len(self._cache) > CACHE_LINES:
            self._cache.popitem(last=False)
        return text

    def visible_line(self, row: int) -> tuple[int, str]:
        entry = self.visible[row]
        return self._workers[entry], self.text(entry)

    def find(self, needle: str, start_row: int, forward: bool = True) -> int | None:
        """The next visible row (wrapping) whose text contains `needle`, case-insensitive."""
        if not needle or not self.visible:
            return None
        needle = needle.lower()
        n = len(self.visible)
        for step in range(1, n + 1):
            row = (start_row + step if forward else start_row - step) % n
            if needle in self.text(self.visible[row]).lower():
                return row
        return None
