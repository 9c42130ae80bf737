"""One worker's job log followed from a byte offset, resumed after a drop: no line lost or twice.

Every byte fetched is appended to the local copy, so the copy is always an exact prefix of the
worker's log and its size the offset to resume from, even after the console restarts. Lines are
delivered in bounded memory: a line longer than lines.VISIBLE_BYTES as its visible part. One
follower per copy writes (it holds an flock on the copy, across processes); any other follower
of the same copy reads it from the disk as it grows, and takes over when the writer is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import shlex
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from console.adapters.ssh_pool import SshPool, SshTarget, backoff
from console.models import FleetError, NodeGone, SshError, SshLost
from console.services.lines import LineSplitter, decode

LineSink = Callable[[int, str], None]
# Where the worker is now: its node asked again (addresses, port, host keys), after a lost
# link. Raises NodeGone when the VM is no more, FleetError when the API cannot say.
Resolve = Callable[[], Awaitable[SshTarget]]
COPY_POLL_S = 0.1  # how often a follower that does not write looks for new bytes in the copy
COPY_PIECE = 1 << 20  # a reader's read from the copy: the lines of a piece are delivered at once


class _DiskWriter:
    """One thread that appends for every local copy, in order per file.

    One thread, not one per worker: each thread that wakes from a write competes for the GIL
    with the event loop, and sixteen of them made the UI stutter.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, item: tuple) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="log-copies", daemon=True)
                self._thread.start()
        self._queue.put(item)

    def _run(self) -> None:
        while True:
            fh, data, done = self._queue.get()
            if data is not None:
                fh.write(data)
                fh.flush()
            if done is not None:
                fh.close()
                done()


_WRITER = _DiskWriter()


class LocalCopy:
    """Appends to the local copy through the disk-writer thread; `close` waits for the disk.

    Opened only by the copy's one writer: `claim` takes an flock on the file itself, which
    `close` releases once every byte is on disk, so the next writer starts from its true size.
    A disk under write-back pressure can block write() for hundreds of milliseconds; on the
    event loop that froze the UI (bench/logtail.py).
    """

    def __init__(self, fh) -> None:
        self._file = fh

    @classmethod
    def claim(cls, path: Path) -> LocalCopy | None:
        """The writer's handle on the copy, or None while another follower writes it."""
        fh = open(path, "ab")  # noqa: SIM115 - closed by the writer thread
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        return cls(fh)

    @property
    def size(self) -> int:
        """The copy's size on disk (before anything this writer has queued lands)."""
        return os.fstat(self._file.fileno()).st_size

    def write(self, data: bytes) -> None:
        _WRITER.put((self._file, data, None))

    async def close(self) -> None:
        # Told from the writer thread, not waited for on one of the loop's threads: 256
        # followers ending together held every thread of asyncio's pool, and the log index's
        # reads queued behind them for seconds (bench/logtail.py at 256 workers).
        loop = asyncio.get_running_loop()
        closed = loop.create_future()

        def done() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: no one waits
                loop.call_soon_threadsafe(_settle, closed)

        _WRITER.put((self._file, None, done))
        await closed


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _read_piece(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(COPY_PIECE)
    except FileNotFoundError:
        return b""


def _line_start(path: Path, offset: int) -> int:
    """Where the line holding `offset` starts, so a follower never begins mid-line."""
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return 0
    with fh:
        end = offset
        while end > 0:
            begin = max(0, end - 65536)
            fh.seek(begin)
            cut = fh.read(end - begin).rfind(b"\n")
            if cut >= 0:
                return begin + cut + 1
            end = begin
        return 0


def parse_rc_file(text: bytes) -> tuple[int | None, float | None]:
    """The rc file and its mtime, one a line, as the worker printed them: status and when."""
    words = text.split()
    rc = int(words[0]) if words and words[0].lstrip(b"-").isdigit() else None
    when = float(words[1]) if rc is not None and len(words) > 1 and words[1].isdigit() else None
    return rc, when


def job_dir(job_id: str) -> str:
    """The job's folder on the worker, as shell text ($HOME expands there)."""
    return f"$HOME/.tpuconsole/jobs/{shlex.quote(job_id)}"


class LogStream:
    def __init__(
        self,
        pool: SshPool,
        target: SshTarget,
        job_id: str,
        pid: int,
        local_path: Path,
        *,
        max_outage_s: float = 300.0,
        resolve: Resolve | None = None,
    ) -> None:
        self.pool = pool
        self.target = target
        self.resolve = resolve
        self.job_id = job_id
        self.pid = pid
        self.local_path = local_path
        self.max_outage_s = max_outage_s
        self.reconnects = 0
        self.ended_at: float | None = None  # the rc file's mtime on the worker, once read
        local_path.parent.mkdir(parents=True, exist_ok=True)
        self.offset = local_path.stat().st_size if local_path.exists() else 0

    @property
    def worker(self) -> int:
        return self.target.worker

    def _command(self, follow: bool) -> str:
        log = f'"{job_dir(self.job_id)}/log"'
        start = f"+{self.offset + 1}"
        if follow and self.pid:
            # GNU tail ends by itself once the job's process is gone and the file is drained.
            return f"exec tail -c {start} -F --pid={int(self.pid)} -s 0.2 {log} 2>/dev/null"
        return f"exec tail -c {start} {log}"

    async def follow(
        self, on_line: LineSink | None = None, *, follow: bool = True, from_start: bool = False
    ) -> int | None:
        """Deliver lines until the job has ended (or, without follow, up to now); return its rc.

        Delivered: every line from the start of the copy with `from_start`, else every line
        from the one the copy ends in. While another follower writes the copy, its bytes are
        read from the disk; the rc comes from the worker once this follower writes.
        """
        splitter = LineSplitter(bounded=True)  # a long line: its visible part, held bounded
        size = self.local_path.stat().st_size if self.local_path.exists() else 0
        self._read = 0
        if not from_start:
            self._read = await asyncio.to_thread(_line_start, self.local_path, size)

        def deliver(chunk: bytes) -> None:
            if on_line is not None:
                for line in splitter.feed(chunk):
                    on_line(self.worker, decode(line))

        rc: int | None = None
        while True:
            local = LocalCopy.claim(self.local_path)
            if local is not None:
                try:
                    await self._replay_copy(deliver, on_line is not None)
                    rc = await self._fetch(local, deliver, follow)
                finally:
                    await local.close()
                break
            await self._replay_copy(deliver, on_line is not None)
            if not follow:
                break  # the other follower keeps the copy current: it is "up to now"
            await asyncio.sleep(COPY_POLL_S)
        tail = splitter.flush()
        # The job's last line without a newline: the log is final once the follow is over.
        if tail is not None and on_line is not None:
            on_line(self.worker, decode(tail))
        return rc

    async def _replay_copy(self, deliver: Callable[[bytes], None], wanted: bool) -> None:
        """What the copy holds beyond what this follower has delivered, up to its end now."""
        if not wanted:
            self._read = self.local_path.stat().st_size if self.local_path.exists() else 0
        while wanted:
            piece = await asyncio.to_thread(_read_piece, self.local_path, self._read)
            if not piece:
                break
            self._read += len(piece)
            deliver(piece)
        self.offset = self._read

    async def _fetch(
        self, local: LocalCopy, deliver: Callable[[bytes], None], follow: bool
    ) -> int | None:
        """As the copy's writer: the worker's bytes beyond the copy, into it, resumed on drops."""
        self._outage_started: float | None = None
        delays = backoff(0.2, 5.0)
        loop = asyncio.get_running_loop()
        # From the copy's true end: if it lost bytes since this follower read them (deleted
        # meanwhile), they are fetched again for the copy, not delivered twice.
        self.offset = local.size
        delivered = max(self._read, self.offset)

        def take(chunk: bytes) -> None:
            nonlocal delivered
            local.write(chunk)  # every byte, as it came: the copy stays an exact prefix
            start, self.offset = self.offset, self.offset + len(chunk)
            self._outage_started = None  # data flows again: a later drop is a new outage
            if self.offset > delivered:
                deliver(chunk[max(0, delivered - start) :])
                delivered = self.offset
            self._read = delivered

        while True:
            try:
                result = await self.pool.run(self.target, self._command(follow), on_stdout=take)
                if result.exit_signal is not None:  # killed, not ended: its VM is going away
                    raise SshLost(
                        f"{self.target.label}: the log's reader was killed "
                        f"(SIG{result.exit_signal}).",
                    )
                return await self.read_rc() if follow else None
            except SshError as exc:
                if not exc.transient:
                    raise
                now = loop.time()
                self._outage_started = self._outage_started or now
                if now - self._outage_started > self.max_outage_s:
                    raise
                self.reconnects += 1
                await asyncio.sleep(next(delays))
                await self._resolve_again()

    async def _resolve_again(self) -> None:
        """Ask where the worker is now: a sandbox served again listens elsewhere, a VM stopped
        and started has new addresses. A VM that is gone ends the follow (NodeGone)."""
        if self.resolve is None:
            return
        try:
            self.target = await self.resolve()
        except NodeGone:
            raise
        except FleetError:
            pass  # the API cannot say now either: dial where it was, within the outage budget

    async def read_rc(self) -> int | None:
        """The job's exit status on this worker; `ended_at` becomes when the rc was written."""
        out: list[bytes] = []
        rc = f'"{job_dir(self.job_id)}/rc"'
        cmd = f"cat {rc} 2>/dev/null && echo && stat -c %Y {rc} 2>/dev/null || true"
        await self.pool.run(self.target, cmd, on_stdout=out.append)
        status, ended_at = parse_rc_file(b"".join(out))
        self.ended_at = ended_at
        return status
