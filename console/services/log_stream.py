"""One worker's job log followed from a byte offset, resumed after a drop: no line lost or twice.

Every byte fetched is appended to the local copy, so the copy is an exact prefix of the worker's
log and its size the offset to resume from, even after the console itself restarts.
"""

from __future__ import annotations

import asyncio
import queue
import shlex
import threading
from collections.abc import Callable
from pathlib import Path

from console.adapters.ssh_pool import SshPool, SshTarget
from console.models import SshError
from console.services.lines import LineSplitter, decode, open_last_line

LineSink = Callable[[int, str], None]
# Failures worth waiting out: the link, not the key or the host's identity.
TRANSIENT = {"lost", "refused", "timeout"}


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
                done.set()


_WRITER = _DiskWriter()


class LocalCopy:
    """Appends to the local copy through the disk-writer thread; `close` waits for the disk.

    A disk under write-back pressure can block write() for hundreds of milliseconds; on the
    event loop that froze the UI (bench/logtail.py).
    """

    def __init__(self, path: Path) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 - closed by the writer thread

    def write(self, data: bytes) -> None:
        _WRITER.put((self._file, data, None))

    async def close(self) -> None:
        done = threading.Event()
        _WRITER.put((self._file, None, done))
        await asyncio.to_thread(done.wait)


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
    ) -> None:
        self.pool = pool
        self.target = target
        self.job_id = job_id
        self.pid = pid
        self.local_path = local_path
        self.max_outage_s = max_outage_s
        self.reconnects = 0
        local_path.parent.mkdir(parents=True, exist_ok=True)
        self.offset = local_path.stat().st_size if local_path.exists() else 0

    @property
    def worker(self) -> int:
        return self.target.worker

    def resume_from(self, offset: int) -> None:
        """Start over at `offset`, dropping any local bytes past it."""
        with open(self.local_path, "ab") as fh:
            fh.truncate(offset)
        self.offset = offset

    def _command(self, follow: bool) -> str:
        log = f'"{job_dir(self.job_id)}/log"'
        start = f"+{self.offset + 1}"
        if follow and self.pid:
            # GNU tail ends by itself once the job's process is gone and the file is drained.
            return f"exec tail -c {start} -F --pid={int(self.pid)} -s 0.2 {log} 2>/dev/null"
        return f"exec tail -c {start} {log}"

    async def follow(self, on_line: LineSink | None = None, *, follow: bool = True) -> int | None:
        """Deliver lines until the job has ended (or, without follow, up to now); return its rc.

        Every byte goes to the local copy as it arrives, an open line too, so the copy's size
        is the offset to resume from and a line of any length costs no memory here: only its
        visible part is held (lines.VISIBLE_BYTES), and only while someone wants the lines.
        """
        splitter = LineSplitter(bounded=True)
        if on_line is not None:  # the copy may end in a line begun before: go on with it
            splitter.resume(await asyncio.to_thread(open_last_line, self.local_path))
        self._outage_started: float | None = None
        delay = 0.2
        loop = asyncio.get_running_loop()
        local = LocalCopy(self.local_path)
        try:

            def take(chunk: bytes) -> None:
                local.write(chunk)
                self.offset += len(chunk)
                self._outage_started = None  # data flows again: a later drop is a new outage
                if on_line is not None:
                    for line in splitter.feed(chunk):
                        on_line(self.worker, decode(line))

            while True:
                try:  # after a drop, on from the offset: the open line goes on where it was
                    await self.pool.run(self.target, self._command(follow), on_stdout=take)
                    break
                except SshError as exc:
                    if exc.kind not in TRANSIENT:
                        raise
                    now = loop.time()
                    self._outage_started = self._outage_started or now
                    if now - self._outage_started > self.max_outage_s:
                        raise
                    self.reconnects += 1
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            rc = await self.read_rc() if follow else None
            tail = splitter.flush()
            # A job that ended without a final newline: its last line is a line (and on disk).
            if tail is not None and (rc is not None or not follow) and on_line is not None:
                on_line(self.worker, decode(tail))
        finally:
            await local.close()
        return rc

    async def read_rc(self) -> int | None:
        out: list[bytes] = []
        cmd = f'cat "{job_dir(self.job_id)}/rc" 2>/dev/null || true'
        await self.pool.run(self.target, cmd, on_stdout=out.append)
        text = b"".join(out).strip()
        return int(text) if text.lstrip(b"-").isdigit() else None
