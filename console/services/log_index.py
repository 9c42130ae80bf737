"""A merged, filterable view of a job's local log copies that keeps only line offsets in memory.

As Toolong does: the files are the store, the index holds (worker, offset) per line in arrival
order, and text is read back from disk only for the lines on screen (with a small cache). Each
copy is read once, front to back, however long its lines: a line still being written (a
progress bar) is a row already, read again only when it grows; a line longer than
lines.VISIBLE_BYTES is read back as its visible part, never whole.

Searching and filtering every line (millions of them) run on a thread with handles of their own
(`find_row`, `filtered`), report progress and stop when asked (`Query`).
"""

from __future__ import annotations

import asyncio
import re
import threading
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import add
from pathlib import Path
from typing import BinaryIO

from console.services.lines import VISIBLE_BYTES, clipped, decode, visible_part

CACHE_LINES = 4096
SCAN_BUDGET_BYTES = 2 << 20  # per scan, across workers: a few ms of work at most
MIN_SHARE_BYTES = 16 << 10  # per copy and scan: fewer, larger reads when copies are many
QUERY_STEP = 4096  # lines between two looks at a query's stop flag (and progress)


class QueryCancelled(Exception):
    pass


@dataclass
class Query:
    """One search or filter running off the event loop: how far it got, and a way to stop it."""

    what: str  # "search" or "filter", for the status line
    text: str
    done: int = 0
    total: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def step(self, done: int) -> None:
        self.done = done
        self.check()

    def check(self) -> None:
        if self.stop.is_set():
            raise QueryCancelled


def _matcher(text: str) -> Callable[[str], bool] | None:
    if not text:
        return None
    pattern = re.compile(re.escape(text), re.I)
    return lambda line: pattern.search(line) is not None


class LogIndex:
    def __init__(self, paths: dict[int, Path]) -> None:
        self.paths = paths
        self._positions = dict.fromkeys(paths, 0)  # where each copy's unindexed line starts
        self._scanned = dict.fromkeys(paths, 0)  # how far each copy has been read
        self._turn = 0  # the copy the next scan reads first, when the budget cannot reach all
        self._open: dict[int, int] = {}  # worker -> the entry of its line still being written
        self._final: dict[int, int] = {}  # worker -> its copy's size once its job has ended
        self._ends: dict[int, int] = {}  # entry -> its end, for open lines and long lines
        self._workers = array("H")
        self._offsets = array("Q")
        # Per worker, its entries and their offsets (both rising): a byte offset found by a
        # bulk scan of one copy becomes its row by bisection. One worker's are the whole index.
        self._single = len(paths) == 1
        self._entries_of = {w: array("I") for w in paths}
        self._offsets_of = {w: array("Q") for w in paths}
        self._handles: dict[int, BinaryIO] = {}
        self._cache: OrderedDict[int, str] = OrderedDict()
        self.shown_workers: frozenset[int] = frozenset(paths)
        self.filter_text = ""
        self._passes_filter: Callable[[str], bool] | None = None
        self.visible = array("Q")  # indices into the entries, in order
        self.lagging = False  # the last read left data unread (the budget stopped it)
        # Told of every run of complete new lines, as bytes: for matchers that scan in bulk.
        self.on_lines: Callable[[int, bytes], None] | None = None

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()

    # ----- growing -----------------------------------------------------------------------------
    def scan(self, budget_bytes: int = SCAN_BUDGET_BYTES) -> int:
        """Index what was written since the last scan, at most `budget_bytes` of it.

        The budget keeps one call short however far behind the view is; the rest waits for
        the next call. Returns how many rows were added or changed (an open line that grew).
        """
        return self.apply(self.read_new(budget_bytes))

    async def scan_off_loop(self, budget_bytes: int = SCAN_BUDGET_BYTES) -> int:
        """`scan`, with the disk reads on a thread: a busy disk must not stall the UI."""
        return self.apply(await asyncio.to_thread(self.read_new, budget_bytes))

    def read_new(self, budget_bytes: int) -> list[tuple[int, int, bytes]]:
        """(worker, start offset, bytes) for each file that grew; only reads, changes nothing.

        Each read starts where the last one ended, even inside a line: a line being written
        for minutes is read once, not again on every tick. Also notes whether anything was
        left unread (`lagging`), so no one has to stat the files again on the event loop.
        """
        chunks = []
        lagging = False
        # The budget is for all the copies together: 256 workers' 64 KiB each would be a
        # 16 MiB slice on the loop. A share of the budget each, from a worker that turns, so
        # every copy moves on when there are more copies than the budget has shares.
        workers = list(self.paths)
        share = max(MIN_SHARE_BYTES, budget_bytes // max(1, len(workers)))
        first = self._turn % max(1, len(workers))
        taken = 0
        for n, worker in enumerate(workers[first:] + workers[:first]):
            if taken >= budget_bytes:
                lagging = True  # the rest wait for the next slice
                self._turn = first + n
                break
            path = self.paths[worker]
            start = self._scanned[worker]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size > start:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read(min(size - start, share))
                chunks.append((worker, start, data))
                taken += len(data)
                lagging = lagging or size - start > len(data)
        self.lagging = lagging
        return chunks

    def apply(self, chunks: list[tuple[int, int, bytes]]) -> int:
        changed = 0
        for worker, start, data in chunks:
            if start != self._scanned[worker] or not data:
                continue  # already taken by another scan
            self._scanned[worker] = end = start + len(data)
            cut = data.rfind(b"\n")
            if cut < 0:
                changed += self._grow_open_line(worker, end)
                continue
            changed += self._add_lines(worker, start, data, cut)
            if cut + 1 < len(data):  # a new line begun after the last newline
                changed += self._grow_open_line(worker, end)
        for worker in self._final:
            self._finish(worker)
        return changed

    def _grow_open_line(self, worker: int, end: int) -> int:
        """The worker's line still being written now reaches `end`: a row, shown as it grows."""
        entry = self._open.get(worker)
        if entry is None:
            entry = self._open[worker] = self._append(worker, [self._positions[worker]])
        self._ends[entry] = end
        self._cache.pop(entry, None)
        return 1

    def _add_lines(self, worker: int, start: int, data: bytes, cut: int) -> int:
        """Lines ending at each newline of `data` (read from `start`), the first one perhaps
        begun in an earlier read (then already a row: the open line, now complete)."""
        line_start = self._positions[worker]
        lengths = list(map(len, data[:cut].split(b"\n")))
        lengths[0] += start - line_start
        first = self._open.pop(worker, None)
        if first is not None:
            self._ends.pop(first, None)
            self._cache.pop(first, None)
        starts = list(accumulate(map(add, lengths, repeat(1)), initial=line_start))
        starts.pop()  # the last sum is where the next line starts
        new = starts if first is None else starts[1:]
        first_new = self._append(worker, new) if new else len(self._offsets)
        if max(lengths) > VISIBLE_BYTES:
            entries = ([first] if first is not None else []) + list(range(first_new, len(self)))
            for entry, begin, length in zip(entries, starts, lengths, strict=True):
                if length > VISIBLE_BYTES:
                    self._ends[entry] = begin + length
        if first is not None and self._passes_filter is not None:
            self._refilter(first)  # its text was partial when it was first tested
        self._positions[worker] = start + cut + 1
        if self.on_lines is not None:
            if first is None:
                self.on_lines(worker, data[: cut + 1])
            else:  # the completed line as it is shown, then the lines after it as they are
                head = data.find(b"\n")
                self.on_lines(worker, self._raw(first).encode() + b"\n" + data[head + 1 : cut + 1])
        return len(lengths)

    def _append(self, worker: int, starts: list[int]) -> int:
        first_new = len(self._offsets)
        self._offsets.extend(starts)
        self._workers.extend(repeat(worker, len(starts)))
        if not self._single:
            self._entries_of[worker].extend(range(first_new, first_new + len(starts)))
            self._offsets_of[worker].extend(starts)
        self._extend_visible(range(first_new, len(self._offsets)))
        return first_new

    def _of(self, worker: int) -> tuple[Sequence[int], Sequence[int]]:
        """The worker's entries and their offsets, rising."""
        if self._single:
            return range(len(self._offsets)), self._offsets
        return self._entries_of[worker], self._offsets_of[worker]

    def mark_ended(self, worker: int) -> None:
        """The worker's job has ended and its copy is complete: a last line there without a
        newline is a line, once the index has read up to the copy's end."""
        try:
            self._final[worker] = self.paths[worker].stat().st_size
        except (FileNotFoundError, KeyError):
            return
        self._finish(worker)

    def _finish(self, worker: int) -> None:
        if self._scanned[worker] != self._final.get(worker):
            return
        entry = self._open.pop(worker, None)
        if entry is None:
            return
        self._cache.pop(entry, None)  # its end stays in _ends: it is read back as it is
        if self._passes_filter is not None:
            self._refilter(entry)
        if self.on_lines is not None:  # the matchers see it as they see every line
            self.on_lines(worker, self._raw(entry).encode() + b"\n")

    @property
    def behind(self) -> bool:
        """Whether a file holds more than the index has read (the budget stopped it)."""
        for worker, path in self.paths.items():
            try:
                if path.stat().st_size > self._scanned[worker]:
                    return True
            except FileNotFoundError:
                continue
        return False

    # ----- views -------------------------------------------------------------------------------
    def _passes(self, entry: int) -> bool:
        if self._workers[entry] not in self.shown_workers:
            return False
        return self._passes_filter is None or self._passes_filter(self.text(entry))

    def _extend_visible(self, entries: range) -> None:
        if self._passes_filter is None and self.shown_workers.issuperset(self.paths):
            self.visible.extend(entries)  # everything shows: no per-line test
        else:
            self.visible.extend(e for e in entries if self._passes(e))

    def _refilter(self, entry: int) -> None:
        """Test again a row whose text changed; put it in (or take it out of) the view."""
        at = bisect_left(self.visible, entry)
        present = at < len(self.visible) and self.visible[at] == entry
        if self._passes(entry) and not present:
            self.visible.insert(at, entry)
        elif present and not self._passes(entry):
            del self.visible[at]

    def set_view(
        self, workers: Iterable[int] | None = None, filter_text: str | None = None
    ) -> None:
        """Change the view at once, on the calling thread (see `filtered` for big logs)."""
        workers = self.shown_workers if workers is None else frozenset(workers)
        text = self.filter_text if filter_text is None else filter_text
        visible, upto = self.filtered(workers, text, Query("filter", text))
        self.install_view(workers, text, visible, upto)

    def filtered(self, workers: frozenset[int], text: str, query: Query) -> tuple[array, int]:
        """The rows a view would show among the entries indexed now, and how many those are.

        Safe on a thread while the index grows: it reads with its own file handles and only
        the entries that existed when it began. Raises QueryCancelled once `query.stop` is set.
        """
        upto = len(self._offsets)
        workers = frozenset(workers) & frozenset(self.paths)
        if text:
            return self._matching(text, workers, upto, query), upto
        if workers == frozenset(self.paths):
            return array("Q", range(upto)), upto
        chosen = [self._of(w)[0][: bisect_left(self._of(w)[0], upto)] for w in workers]
        return array("Q", sorted(e for part in chosen for e in part)), upto

    def _matching(
        self,
        text: str,
        workers: frozenset[int],
        upto: int,
        query: Query,
        *,
        after: int = -1,
        first_only: bool = False,
        accept: Callable[[int], bool] | None = None,
    ) -> array:
        """Entries of these workers in (after, upto) whose text contains `text`, ignoring case.

        Each copy is scanned in bulk (lower-cased pieces, bytes.find: memory speed); only the
        lines that match cost any Python. Only entries `accept` takes count; with
        `first_only`, each copy stops at its first. (A needle beyond ASCII is tested line by
        line: bytes carry no case.)
        """
        if not text.isascii():
            return self._matching_line_by_line(text, workers, after, upto, query)
        needle = text.encode().lower()
        begins = {}
        for w in workers:
            entries, offsets = self._of(w)
            first = bisect_left(entries, after + 1)
            begins[w] = (first, offsets[first] if first < len(offsets) else None)
        if not query.total:  # a search that wraps set it for both of its passes
            query.total = sum(
                self._scanned[w] - (b or 0) for w, (_, b) in begins.items() if b is not None
            )
        found: list[int] = []
        handles: dict[int, BinaryIO] = {}
        try:
            for worker in sorted(workers):
                at, begin = begins[worker]
                if begin is None:
                    continue
                entries, offsets = self._of(worker)
                count = bisect_left(entries, upto)
                starts = _matching_line_starts(
                    self.paths[worker], begin, self._scanned[worker], needle, query
                )
                for line_start in starts:
                    at = bisect_left(offsets, line_start, at, count)
                    if at == count:
                        break
                    if offsets[at] != line_start:
                        continue
                    entry = entries[at]
                    # A long or open line is shown in part: it matches if its shown part does.
                    if (
                        entry in self._ends
                        and needle not in self._raw(entry, handles).encode().lower()
                    ):
                        continue
                    if accept is not None and not accept(entry):
                        continue
                    found.append(entry)
                    if first_only:
                        break
        finally:
            for fh in handles.values():
                fh.close()
        if len(workers) > 1:
            found.sort()
        return array("Q", found)

    def _matching_line_by_line(
        self, text: str, workers: frozenset[int], after: int, upto: int, query: Query
    ) -> array:
        passes = _matcher(text)
        assert passes is not None
        query.total = upto
        found = array("Q")
        handles: dict[int, BinaryIO] = {}
        try:
            for start in range(after + 1, upto, QUERY_STEP):
                query.step(start)
                for entry in range(start, min(upto, start + QUERY_STEP)):
                    if self._workers[entry] in workers and passes(self._raw(entry, handles)):
                        found.append(entry)
        finally:
            for fh in handles.values():
                fh.close()
        return found

    def install_view(self, workers: frozenset[int], text: str, visible: array, upto: int) -> None:
        """Adopt a view made by `filtered`, with the rows indexed since it began added."""
        self.shown_workers = frozenset(workers)
        self.filter_text = text
        self._passes_filter = _matcher(text)
        self.visible = visible
        self._extend_visible(range(upto, len(self._offsets)))
        for entry in self._open.values():
            if entry < upto and self._passes_filter is not None:
                self._refilter(entry)  # grown since it was tested

    # ----- reading -----------------------------------------------------------------------------
    def worker_of(self, entry: int) -> int:
        return self._workers[entry]

    def text(self, entry: int) -> str:
        cached = self._cache.get(entry)
        if cached is not None:
            self._cache.move_to_end(entry)
            return cached
        text = self._raw(entry, self._handles)
        self._cache[entry] = text
        if len(self._cache) > CACHE_LINES:
            self._cache.popitem(last=False)
        return text

    def _raw(self, entry: int, handles: dict[int, BinaryIO] | None = None) -> str:
        """A line from its copy: whole when short, its visible part when long (never whole)."""
        handles = self._handles if handles is None else handles
        worker = self._workers[entry]
        fh = handles.get(worker)
        if fh is None:
            fh = handles[worker] = open(self.paths[worker], "rb")  # noqa: SIM115
        offset = self._offsets[entry]
        end = self._ends.get(entry)
        fh.seek(offset)
        if end is None:  # a complete line no longer than VISIBLE_BYTES
            return decode(clipped(fh.readline(VISIBLE_BYTES + 1).rstrip(b"\n")))
        length = end - offset
        head = fh.read(min(length, VISIBLE_BYTES))
        if length <= VISIBLE_BYTES:
            return decode(head)
        fh.seek(end - VISIBLE_BYTES)
        return decode(visible_part(head, fh.read(VISIBLE_BYTES), length))

    def visible_line(self, row: int) -> tuple[int, str]:
        entry = self.visible[row]
        return self._workers[entry], self.text(entry)

    def find(self, needle: str, start_row: int, forward: bool = True) -> int | None:
        """The next visible row (wrapping) whose text contains `needle`, case-insensitive."""
        return self.find_row(needle, start_row, forward, Query("search", needle))

    def find_row(self, needle: str, start_row: int, forward: bool, query: Query) -> int | None:
        """`find`, safe on a thread (its own file handles); stops once `query.stop` is set.

        Forward, each copy is scanned from the row after `start_row` to its first visible match
        (then from the top, wrapping); backward, up to the row.
        """
        visible = self.visible  # the view as it is now: a new view is a new array
        n = len(visible)
        if not needle or not n:
            return None
        start_row = max(-1, min(start_row, n))
        at = visible[start_row] if 0 <= start_row < n else -1
        top = visible[-1] + 1
        query.total = sum(self._scanned[w] for w in self.shown_workers) or 1  # at most all

        def shown(entry: int) -> bool:
            row = bisect_left(visible, entry)
            return row < n and visible[row] == entry

        def search(after: int, upto: int, first_only: bool = False) -> list[int]:
            entries = self._matching(
                needle, self.shown_workers, upto, query,
                after=after, first_only=first_only, accept=shown,
            )  # fmt: skip
            return [bisect_left(visible, e) for e in entries]

        if forward:  # the first match after the row, else the first from the top
            found = search(at, top, first_only=True) or search(-1, at + 1, first_only=True)
            return found[0] if found else None
        # Backward: the last match before the row, else the last from the bottom.
        found = search(-1, max(at, 0)) or search(max(at, 0) - 1, top)
        return found[-1] if found else None


SCAN_PIECE = 8 << 20  # a bulk scan's read: a few milliseconds of C-level search
LONG_CARRY = 1 << 20  # an unfinished line longer than this is scanned on without being held


def _matching_line_starts(
    path: Path, begin: int, end: int, needle: bytes, query: Query
) -> Iterator[int]:
    """Offsets, rising, of the lines of a copy in [begin, end) that contain `needle` (lower case;
    the copy is lowered piece by piece). `begin` is a line start.

    Linear in the copy: a line longer than LONG_CARRY is searched piece by piece with an
    overlap, never gathered; the last line counts even without its newline.
    """
    keep = len(needle) - 1
    line_start, carry, pos = begin, b"", begin
    long_line = long_matched = False
    overlap = b""
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        fh.seek(begin)
        while pos < end:
            query.check()  # before every read
            piece = fh.read(min(SCAN_PIECE, end - pos)).lower()
            if not piece:
                break
            at, pos = pos, pos + len(piece)
            query.done += len(piece)
            if long_line:
                first = piece.find(b"\n")
                head = piece if first < 0 else piece[:first]
                long_matched = long_matched or needle in overlap + head
                if first < 0:
                    overlap = (overlap + head)[-keep:] if keep else b""
                    continue
                if long_matched:
                    yield line_start
                long_line = long_matched = False
                line_start, at, piece = at + first + 1, at + first + 1, piece[first + 1 :]
            data, base = carry + piece, at - len(carry)
            cut = data.rfind(b"\n") + 1
            i = data.find(needle, 0, cut)
            while i >= 0:
                yield base + data.rfind(b"\n", 0, i) + 1
                stop = data.find(b"\n", i + len(needle), cut)
                i = -1 if stop < 0 else data.find(needle, stop + 1, cut)
            carry, line_start = data[cut:], base + cut
            if len(carry) > LONG_CARRY:
                long_line, long_matched = True, needle in carry
                overlap, carry = (carry[-keep:] if keep else b""), b""
    if (long_line and long_matched) or (carry and needle in carry):
        yield line_start
