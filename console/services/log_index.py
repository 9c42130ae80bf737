"""A merged, filterable view of a job's local log copies that keeps only line offsets in memory.

As Toolong does: the files are the store, the index holds each line's offset in its worker's
copy (8 bytes a line) and the arrival order as runs of one worker's lines (one per read of a
copy, however many lines it brought), and text is read back from disk only for the lines on
screen (with a small cache). Each copy is read once, front to back, however long its lines,
and its lines are cut on the index's own thread: the event loop only appends the offsets. A
line still being written (a progress bar) is a row already, read again only when it grows; a
line longer than lines.VISIBLE_BYTES is read back as its visible part, never whole.

Searching and filtering every line (millions of them) run on a thread with handles of their own
(`find_row`, `filtered`), report progress and stop when asked (`Query`).
"""

from __future__ import annotations

import asyncio
import re
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import add
from pathlib import Path
from typing import BinaryIO

from console.services.lines import VISIBLE_BYTES, clipped, decode, visible_part

CACHE_LINES = 4096
SCAN_BUDGET_BYTES = 2 << 20  # per scan, across workers: a few ms of work at most
MIN_SHARE_BYTES = 64 << 10  # per copy and scan: fewer, larger reads when copies are many
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


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one read of a copy brought, cut into lines off the event loop.

    `starts` (None without a newline): the chunk's start, then where each line after a
    newline begins; `cut`: the last newline; `longest`: the longest line wholly inside;
    `head` and `rest`: the chunk up to its first newline and the complete lines after it, as
    the matchers want them (all of them, or what `select` keeps).
    """

    worker: int
    start: int
    data: bytes
    starts: array | None = None
    cut: int = -1
    longest: int = 0
    head: bytes = b""
    rest: bytes = b""

    @classmethod
    def cut_lines(
        cls, worker: int, start: int, data: bytes, select: Callable[[bytes], bytes] | None
    ) -> Chunk:
        cut = data.rfind(b"\n")
        if cut < 0:
            return cls(worker, start, data)
        lengths = list(map(len, data[:cut].split(b"\n")))
        starts = array("Q", accumulate(map(add, lengths, repeat(1)), initial=start))
        first = lengths[0]
        head, rest = data[: first + 1], data[first + 1 : cut + 1]
        if select is not None:
            head, rest = select(head), select(rest)
        return cls(worker, start, data, starts, cut, max(lengths[1:], default=0), head, rest)


class LogIndex:
    def __init__(self, paths: dict[int, Path]) -> None:
        self.paths = paths
        self._positions = dict.fromkeys(paths, 0)  # where each copy's unindexed line starts
        self._scanned = dict.fromkeys(paths, 0)  # how far each copy has been read
        self._turn = 0  # the copy the next scan reads first, when the budget cannot reach all
        self._open: dict[int, int] = {}  # worker -> the entry of its line still being written
        # worker -> that line's bytes so far while short (None once longer): the matchers are
        # told of it, complete, without reading it back from the disk on the event loop.
        self._tails: dict[int, bytes | None] = {}
        self._final: dict[int, int] = {}  # worker -> its copy's size once its job has ended
        self._ends: dict[int, int] = {}  # entry -> its end, for open lines and long lines
        self._count = 0
        # Each worker's line offsets (rising): a byte offset found by a bulk scan of one copy
        # becomes its line by bisection. The entries (arrival order) are runs of one worker's
        # consecutive lines: where each run starts among the entries, whose it is, and where it
        # starts among that worker's lines; per worker, the same two numbers for its own runs.
        self._offsets_of = {w: array("Q") for w in paths}
        self._run_entry = array("Q")
        self._run_worker = array("H")
        self._run_line = array("Q")
        self._runs_entry = {w: array("Q") for w in paths}
        self._runs_line = {w: array("Q") for w in paths}
        self._handles: dict[int, BinaryIO] = {}
        self._cache: OrderedDict[int, str] = OrderedDict()
        self.shown_workers: frozenset[int] = frozenset(paths)
        self.filter_text = ""
        self._passes_filter: Callable[[str], bool] | None = None
        self._visible: array | None = None  # the entries shown, in order; None: every one
        self._reader: ThreadPoolExecutor | None = None
        self.lagging = False  # the last read left data unread (the budget stopped it)
        # Told of every run of complete new lines, as bytes: for matchers that scan in bulk.
        self.on_lines: Callable[[int, bytes], None] | None = None
        # What of a run the matchers want (the lines holding their anchors), worked out on
        # the index's thread: scanning every byte for a score of literals took more of the
        # loop than all the rest of indexing (bench/logtail.py at 256 workers).
        self.select_lines: Callable[[bytes], bytes] | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def visible(self) -> Sequence[int]:
        """The entries the view shows, in order (a new sequence when the view changes)."""
        return range(self._count) if self._visible is None else self._visible

    def memory_bytes(self) -> int:
        """What the index itself holds for its lines: offsets, runs and the view (no text)."""
        arrays = [self._run_entry, self._run_worker, self._run_line]
        for per_worker in (self._offsets_of, self._runs_entry, self._runs_line):
            arrays += per_worker.values()
        if self._visible is not None:
            arrays.append(self._visible)
        return sum(a.buffer_info()[1] * a.itemsize for a in arrays)

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()
        if self._reader is not None:
            self._reader.shutdown(wait=False)
            self._reader = None

    # ----- growing -----------------------------------------------------------------------------
    def scan(self, budget_bytes: int = SCAN_BUDGET_BYTES) -> int:
        """Index what was written since the last scan, at most `budget_bytes` of it.

        The budget keeps one call short however far behind the view is; the rest waits for
        the next call. Returns how many rows were added or changed (an open line that grew).
        """
        return self.apply(self.read_new(budget_bytes))

    async def scan_off_loop(self, budget_bytes: int = SCAN_BUDGET_BYTES) -> int:
        """`scan`, with the disk reads and the cutting into lines on the index's own thread.

        A busy disk must not stall the UI; and a thread of its own, not asyncio's pool, which
        256 followers ending together (each writing its end to the history) fill for seconds.
        """
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="log-index")
        loop = asyncio.get_running_loop()
        return self.apply(await loop.run_in_executor(self._reader, self.read_new, budget_bytes))

    def read_new(self, budget_bytes: int) -> list[Chunk]:
        """What each file that grew holds beyond the last read, cut into lines; changes nothing.

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
                chunks.append(Chunk.cut_lines(worker, start, data, self.select_lines))
                taken += len(data)
                lagging = lagging or size - start > len(data)
        self.lagging = lagging
        return chunks

    def apply(self, chunks: list[Chunk]) -> int:
        changed = 0
        for chunk in chunks:
            worker, start, data = chunk.worker, chunk.start, chunk.data
            if start != self._scanned[worker] or not data:
                continue  # already taken by another scan
            self._scanned[worker] = end = start + len(data)
            if chunk.starts is None:
                self._keep_tail(worker, self._tails.get(worker, b""), data)
                changed += self._grow_open_line(worker, end)
                continue
            changed += self._add_lines(chunk)
            if chunk.cut + 1 < len(data):  # a new line begun after the last newline
                self._keep_tail(worker, b"", data[chunk.cut + 1 :])
                changed += self._grow_open_line(worker, end)
        for worker in self._final:
            self._finish(worker)
        return changed

    def _keep_tail(self, worker: int, tail: bytes | None, more: bytes) -> None:
        short = tail is not None and len(tail) + len(more) <= VISIBLE_BYTES
        self._tails[worker] = tail + more if short and tail is not None else None

    def _grow_open_line(self, worker: int, end: int) -> int:
        """The worker's line still being written now reaches `end`: a row, shown as it grows."""
        entry = self._open.get(worker)
        if entry is None:
            entry = self._open[worker] = self._append(worker, array("Q", [self._positions[worker]]))
        self._ends[entry] = end
        self._cache.pop(entry, None)
        return 1

    def _add_lines(self, chunk: Chunk) -> int:
        """Lines ending at each newline of the chunk, the first one perhaps begun in an earlier
        read (then already a row: the open line, now complete)."""
        worker, start, cut = chunk.worker, chunk.start, chunk.cut
        ends = chunk.starts
        assert ends is not None
        line_start = self._positions[worker]
        first = self._open.pop(worker, None)
        if first is not None:
            self._ends.pop(first, None)
            self._cache.pop(first, None)
        # ends[0] is the chunk's start; ends[i] where its line i begins (and line i-1 ends).
        new = ends[1:-1] if first is not None else array("Q", [line_start]) + ends[1:-1]
        first_new = self._append(worker, new) if new else self._count
        first_length = ends[1] - 1 - line_start
        if first_length > VISIBLE_BYTES or chunk.longest > VISIBLE_BYTES:
            entries = ([first] if first is not None else []) + list(range(first_new, len(self)))
            begins = [line_start, *ends[1:-1]]
            for entry, begin, stop in zip(entries, begins, ends[1:], strict=True):
                if stop - 1 - begin > VISIBLE_BYTES:
                    self._ends[entry] = stop - 1
        if first is not None and self._passes_filter is not None:
            self._refilter(first)  # its text was partial when it was first tested
        self._positions[worker] = start + cut + 1
        tail = self._tails.pop(worker, None)  # the open line's bytes, if there was one
        if self.on_lines is not None:
            if first is None:
                self.on_lines(worker, chunk.head + chunk.rest)
            else:  # the completed line, then the lines after it as they are
                head = ends[1] - 1 - start  # the completed line's bytes in this chunk
                if tail is not None and len(tail) + head <= VISIBLE_BYTES:
                    completed = tail + chunk.data[:head] + b"\n"
                else:  # a long one, as it is shown
                    completed = self._raw(first).encode() + b"\n"
                select = self.select_lines
                self.on_lines(worker, (select(completed) if select else completed) + chunk.rest)
        return len(ends) - 1

    def _append(self, worker: int, starts: array) -> int:
        """The worker's next lines, at these offsets, as the newest entries: the first's."""
        first_new = self._count
        offsets = self._offsets_of[worker]
        if not self._run_worker or self._run_worker[-1] != worker:  # a run begins
            self._run_entry.append(first_new)
            self._run_worker.append(worker)
            self._run_line.append(len(offsets))
            self._runs_entry[worker].append(first_new)
            self._runs_line[worker].append(len(offsets))
        offsets.extend(starts)
        self._count += len(starts)
        self._extend_visible(worker, range(first_new, self._count))
        return first_new

    def _locate(self, entry: int) -> tuple[int, int]:
        """The entry's worker and which of that worker's lines it is."""
        run = bisect_right(self._run_entry, entry) - 1
        return self._run_worker[run], self._run_line[run] + entry - self._run_entry[run]

    def _offset(self, entry: int) -> int:
        worker, line = self._locate(entry)
        return self._offsets_of[worker][line]

    def _entry_of(self, worker: int, line: int) -> int:
        """The entry of the worker's line number `line`."""
        run = bisect_right(self._runs_line[worker], line) - 1
        return self._runs_entry[worker][run] + line - self._runs_line[worker][run]

    def _lines_before(self, worker: int, entry: int) -> int:
        """How many of the worker's lines are entries before `entry`."""
        runs_entry, runs_line = self._runs_entry[worker], self._runs_line[worker]
        run = bisect_right(runs_entry, entry) - 1
        if run < 0:
            return 0
        run_end = runs_line[run + 1] if run + 1 < len(runs_line) else len(self._offsets_of[worker])
        return min(runs_line[run] + entry - runs_entry[run], run_end)

    def _runs_from(self, entry: int) -> Iterator[tuple[int, range]]:
        """(worker, its entries) of each run from `entry` on, in order."""
        first = max(0, bisect_right(self._run_entry, entry) - 1)
        for run in range(first, len(self._run_entry)):
            end = self._run_entry[run + 1] if run + 1 < len(self._run_entry) else self._count
            if end > entry:
                yield self._run_worker[run], range(max(entry, self._run_entry[run]), end)

    def _worker_runs(self, workers: frozenset[int], upto: int) -> Iterator[range]:
        """The entries before `upto` of these workers, as ranges in order."""
        for run, first in enumerate(self._run_entry):
            if first >= upto:
                return
            if self._run_worker[run] in workers:
                end = self._run_entry[run + 1] if run + 1 < len(self._run_entry) else upto
                yield range(first, min(end, upto))

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
        self._tails.pop(worker, None)
        if entry is None:
            return
        self._cache.pop(entry, None)  # its end stays in _ends: it is read back as it is
        if self._passes_filter is not None:
            self._refilter(entry)
        if self.on_lines is not None:  # the matchers see it as they see every line
            last = self._raw(entry).encode() + b"\n"
            self.on_lines(worker, self.select_lines(last) if self.select_lines else last)

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
        if self.worker_of(entry) not in self.shown_workers:
            return False
        return self._passes_filter is None or self._passes_filter(self.text(entry))

    def _extend_visible(self, worker: int, entries: range) -> None:
        """New entries, all of one worker, into the view: nothing to do when all show."""
        if self._visible is None or worker not in self.shown_workers:
            return
        if self._passes_filter is None:
            self._visible.extend(entries)
        else:
            self._visible.extend(e for e in entries if self._passes(e))

    def _refilter(self, entry: int) -> None:
        """Test again a row whose text changed; put it in (or take it out of) the view."""
        visible = self._visible
        if visible is None:
            return  # every row shows
        at = bisect_left(visible, entry)
        present = at < len(visible) and visible[at] == entry
        if self._passes(entry) and not present:
            visible.insert(at, entry)
        elif present and not self._passes(entry):
            del visible[at]

    def set_view(
        self, workers: Iterable[int] | None = None, filter_text: str | None = None
    ) -> None:
        """Change the view at once, on the calling thread (see `filtered` for big logs)."""
        workers = self.shown_workers if workers is None else frozenset(workers)
        text = self.filter_text if filter_text is None else filter_text
        visible, upto = self.filtered(workers, text, Query("filter", text))
        self.install_view(workers, text, visible, upto)

    def filtered(
        self, workers: frozenset[int], text: str, query: Query
    ) -> tuple[Sequence[int], int]:
        """The rows a view would show among the entries indexed now, and how many those are.

        Safe on a thread while the index grows: it reads with its own file handles and only
        the entries that existed when it began. Raises QueryCancelled once `query.stop` is set.
        """
        upto = self._count
        workers = frozenset(workers) & frozenset(self.paths)
        if text:
            return self._matching(text, workers, upto, query), upto
        if workers == frozenset(self.paths):
            return range(upto), upto
        chosen = array("Q")
        for run in self._worker_runs(workers, upto):
            query.check()
            chosen.extend(run)
        return chosen, upto

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
            offsets = self._offsets_of[w]
            first = self._lines_before(w, after + 1)
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
                offsets = self._offsets_of[worker]
                count = self._lines_before(worker, upto)
                starts = _matching_line_starts(
                    self.paths[worker], begin, self._scanned[worker], needle, query
                )
                for line_start in starts:
                    at = bisect_left(offsets, line_start, at, count)
                    if at == count:
                        break
                    if offsets[at] != line_start:
                        continue
                    entry = self._entry_of(worker, at)
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
                    if self.worker_of(entry) in workers and passes(self._raw(entry, handles)):
                        found.append(entry)
        finally:
            for fh in handles.values():
                fh.close()
        return found

    def install_view(
        self, workers: frozenset[int], text: str, visible: Sequence[int], upto: int
    ) -> None:
        """Adopt a view made by `filtered`, with the rows indexed since it began added."""
        self.shown_workers = frozenset(workers)
        self.filter_text = text
        self._passes_filter = _matcher(text)
        if not text and self.shown_workers.issuperset(self.paths):
            self._visible = None  # every row: nothing to hold
        else:
            self._visible = visible if isinstance(visible, array) else array("Q", visible)
            for worker, entries in self._runs_from(upto):
                self._extend_visible(worker, entries)
        for entry in self._open.values():
            if entry < upto and self._passes_filter is not None:
                self._refilter(entry)  # grown since it was tested

    # ----- reading -----------------------------------------------------------------------------
    def worker_of(self, entry: int) -> int:
        return self._locate(entry)[0]

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
        worker, line = self._locate(entry)
        fh = handles.get(worker)
        if fh is None:
            fh = handles[worker] = open(self.paths[worker], "rb")  # noqa: SIM115
        offset = self._offsets_of[worker][line]
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
        return self.worker_of(entry), self.text(entry)

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
