"""A merged, filterable view of a job's local log copies that keeps only line offsets in memory.

As Toolong does: the files are the store, the index holds (worker, offset) per line in arrival
order, and text is read back from disk only for the lines on screen (with a small cache).
"""

from __future__ import annotations

import asyncio
import re
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from itertools import accumulate, repeat
from operator import add
from pathlib import Path

from console.services.lines import decode

CACHE_LINES = 4096
SCAN_BUDGET_BYTES = 2 << 20  # per scan, across workers: a few ms of work at most


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
        self.lagging = False  # the last read left data unread (the budget stopped it)
        # Workers whose job has ended, with their copy's final size: a last line there without
        # a newline is a line, not a line still being written.
        self._final: dict[int, int] = {}
        # Told of every run of complete new lines, as bytes: for matchers that scan in bulk.
        self.on_lines: Callable[[int, bytes], None] | None = None

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()  # type: ignore[attr-defined]
        self._handles.clear()

    # ----- growing -----------------------------------------------------------------------------
    def scan(self, budget_bytes: int = SCAN_BUDGET_BYTES) -> int:
        """Index complete lines written since the last scan, at most `budget_bytes` of them.

        The budget keeps one call short however far behind the view is; the rest waits for
        the next call. Returns how many lines were added.
        """
        return self.apply(self.read_new(budget_bytes))

    async def scan_off_loop(self, budget_bytes: int = SCAN_BUDGET_BYTES) -> int:
        """`scan`, with the disk reads on a thread: a busy disk must not stall the UI."""
        return self.apply(await asyncio.to_thread(self.read_new, budget_bytes))

    def read_new(self, budget_bytes: int) -> list[tuple[int, int, bytes]]:
        """(worker, start offset, bytes) for each file that grew; only reads, changes nothing.

        Also notes whether anything was left unread (`lagging`), so no one has to stat the
        files again on the event loop: a stat of a file being written can block.
        """
        chunks = []
        lagging = False
        share = max(1 << 16, budget_bytes // max(1, len(self.paths)))
        for worker, path in self.paths.items():
            start = self._positions[worker]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size > start:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read(min(size - start, share))
                    # A line longer than the share (a progress bar redrawn with \r) must not
                    # pin the index: read on to its end.
                    while b"\n" not in data and start + len(data) < size:
                        more = fh.read(share)
                        if not more:
                            break
                        data += more
                    chunks.append((worker, start, data))
                lagging = lagging or size - start > len(data)
        self.lagging = lagging
        return chunks

    def mark_ended(self, worker: int) -> None:
        """The worker's job has ended and its copy is complete: index its last line as it is."""
        try:
            self._final[worker] = self.paths[worker].stat().st_size
        except (FileNotFoundError, KeyError):
            return

    def apply(self, chunks: list[tuple[int, int, bytes]]) -> int:
        added = 0
        for worker, start, data in chunks:
            size = start + len(data)
            if size == self._final.get(worker) and not data.endswith(b"\n"):
                data += b"\n"  # the final line: indexed whole (it is read back from the file)
            end = data.rfind(b"\n")
            if end < 0 or start != self._positions[worker]:
                continue  # no complete line yet, or already indexed by another scan
            if self.on_lines is not None:
                self.on_lines(worker, data[: end + 1])
            lengths = map(len, data[:end].split(b"\n"))
            first_new = len(self._offsets)
            # Offsets of each line start, computed in C: start, start+len0+1, ...
            self._offsets.extend(accumulate(map(add, lengths, repeat(1)), initial=start))
            self._offsets.pop()  # the last sum is the end of the last line, not a line start
            count = len(self._offsets) - first_new
            self._workers.extend(repeat(worker, count))
            self._positions[worker] = min(start + end + 1, size)
            added += count
            self._extend_visible(range(first_new, len(self._offsets)))
        return added

    @property
    def behind(self) -> bool:
        """Whether a file holds more than the index has read (the budget stopped it)."""
        for worker, path in self.paths.items():
            try:
                if path.stat().st_size > self._positions[worker]:
                    return True
            except FileNotFoundError:
                continue
        return False

    def _passes(self, entry: int) -> bool:
        if self._workers[entry] not in self.shown_workers:
            return False
        return self._filter_re is None or self._filter_re.search(self.text(entry)) is not None

    def _extend_visible(self, entries: range) -> None:
        if self._filter_re is None and self.shown_workers.issuperset(self.paths):
            self.visible.extend(entries)  # everything shows: no per-line test
        else:
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
