"""One worker's job log followed from a byte offset, resumed after a drop: no line lost or twice.

Only complete lines are delivered and appended to the local copy, so the local copy's size is
always the remote offset to resume from, even after the console itself restarts.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Callable
from pathlib import Path

from console.adapters.ssh_pool import SshPool, SshTarget
from console.models import SshError
from console.services.lines import LineSplitter, decode

LineSink = Callable[[int, str], None]
# Failures worth waiting out: the link, not the key or the host's identity.
TRANSIENT = {"lost", "refused", "timeout"}


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
        """Deliver lines until the job has ended (or, without follow, up to now); return its rc."""
        splitter = LineSplitter()
        self._outage_started: float | None = None
        delay = 0.2
        loop = asyncio.get_running_loop()
        with open(self.local_path, "ab") as local:

            def take(chunk: bytes) -> None:
                data = splitter.pending + chunk
                end = data.rfind(b"\n")
                if end < 0:
                    splitter.keep(data)
                    return
                complete, rest = data[: end + 1], data[end + 1 :]
                splitter.keep(rest)
                local.write(complete)  # whole lines only: local size == remote offset
                local.flush()
                self.offset += len(complete)
                self._outage_started = None  # data flows again: a later drop is a new outage
                if on_line is not None:
                    for line in complete[:-1].split(b"\n"):
                        on_line(self.worker, decode(line))

            while True:
                splitter.reset()  # a partial line is read again from the offset
                try:
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
            # A job that ended without a final newline: show it, but keep the offset honest.
            if tail is not None and (rc is not None or not follow) and on_line is not None:
                on_line(self.worker, decode(tail))
        return rc

    async def read_rc(self) -> int | None:
        out: list[bytes] = []
        cmd = f'cat "{job_dir(self.job_id)}/rc" 2>/dev/null || true'
        await self.pool.run(self.target, cmd, on_stdout=out.append)
        text = b"".join(out).strip()
        return int(text) if text.lstrip(b"-").isdigit() else None
