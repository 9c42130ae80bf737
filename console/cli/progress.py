"""A fan-out's progress on the terminal: one line rewritten in place on stderr while it runs
("k/N done, slowest: w17 (12 s)"), then the closing line (slowest and failed workers named).

Only a terminal gets the live line (a pipe or a file would fill with carriage returns); every
fan-out to more than one worker ends with its closing line, as a note on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator

from console.services.fanout_progress import FanoutProgress

TICK_S = 0.5  # the slowest worker's seconds move even when no worker ends


class ProgressLine:
    def __init__(self, label: str, stream=None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.progress: FanoutProgress | None = None
        self._shown_at = 0.0
        self._showing = False

    def __call__(self, progress: FanoutProgress) -> None:
        """The fan-out's sink: redraw at most ten times a second, and when it is done."""
        self.progress = progress
        now = time.monotonic()
        if self.live and (now - self._shown_at >= 0.1 or progress.finished):
            self._draw()

    def _draw(self) -> None:
        if self.progress is None or not self.live:
            return
        self._shown_at = time.monotonic()
        self._showing = True
        self.stream.write(f"\r\x1b[K{self.label}: {self.progress.line()}")
        self.stream.flush()

    def clear(self) -> None:
        """Before a worker's line is printed, so it does not land after the progress text."""
        if self._showing:
            self.stream.write("\r\x1b[K")
            self._showing = False

    @contextlib.asynccontextmanager
    async def ticking(self) -> AsyncIterator[ProgressLine]:
        ticker = asyncio.ensure_future(self._tick()) if self.live else None
        try:
            yield self
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            self.clear()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._draw()
