"""What a followed job's lines do not say by themselves: a hang after DONE, a long silence, and
findings or a status recorded elsewhere (a refresh that saw the VM leave READY, another console).

Plain asyncio and no widgets: a screen feeds it the lines it indexed and asks it, once a frame,
what changed; the history is read on a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from console.adapters.history_db import HistoryStore
from console.models import ChipMetrics, Diagnosis, Job
from console.services.diagnosis import Diagnoser, from_condition
from console.services.hangs import HangFinding, HangWatch
from console.services.metrics import JobMetrics

HANG_AFTER_DONE_S = 60.0  # DONE printed, process still alive this long: the seeds' hang
SILENT_S = 600.0  # no output at all this long while running
RECORD_SYNC_S = 2.0  # how often the job record is re-read (status, findings made elsewhere)


class JobMonitor:
    """One job's findings (log signatures, results, conditions), kept and recorded once each."""

    def __init__(
        self,
        job_id: str,
        history: HistoryStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        hang: HangWatch | None = None,
        on_stuck: Callable[[HangFinding], None] | None = None,
    ) -> None:
        """`hang`: judge "stuck?" per worker by silence and the chips' duty cycle (issue 18)
        rather than by the whole job's silence alone. `on_stuck`: told once when the verdict
        turns stuck, and again only after the job showed life in between (a new episode)."""
        self.job_id = job_id
        self.hang = hang
        self.hang_verdict: HangFinding | None = None
        self.on_stuck = on_stuck
        self.stuck_episode = False  # told of the current stuck spell already
        self.checks = 0  # verdicts made: what a test waits on, never a clock
        self.history = history
        self.diagnoser = Diagnoser()
        self.metrics = JobMetrics()
        self._clock = clock
        self.last_data = clock()
        self._done_at: dict[int, float] = {}
        self._synced_at = -RECORD_SYNC_S
        self._syncing = False

    @property
    def found(self) -> list[Diagnosis]:
        return self.diagnoser.found

    def output_seen(self) -> None:
        """Bytes arrived (a progress bar that grows is output too, lines or not)."""
        self.last_data = self._clock()

    def feed(self, worker: int, data: bytes) -> bool:
        """Newly indexed complete lines of one worker; True if the findings changed."""
        self.output_seen()
        if self.hang is not None:
            self.hang.saw_output(worker)
        changed = bool(self.diagnoser.feed_chunk(worker, data))
        if self.metrics.feed_chunk(worker, data):
            changed = True
            for w in self.metrics.done:
                self._done_at.setdefault(w, self._clock())
        return changed

    def saw_metrics(self, snapshot: ChipMetrics) -> None:
        """A poll of the job's node's chips: what the hang verdict weighs against silence."""
        if self.hang is not None:
            self.hang.saw_metrics(snapshot)

    def check(self, job_open: bool, ended: Mapping[int, str]) -> list[Diagnosis]:
        """Hang after DONE and silence, about a job still running; the new ones, recorded.

        `ended` maps each worker to how it ended ("" while it runs).
        """
        if not job_open:
            return []
        self.checks += 1
        now = self._clock()
        conditions = [
            from_condition(
                "hang_after_done",
                f"w{worker} printed DONE {now - at:.0f} s ago and is still running",
                worker,
            )
            for worker, at in self._done_at.items()
            if not ended.get(worker) and now - at > HANG_AFTER_DONE_S
        ]
        running = [w for w, state in ended.items() if not state]
        if self.hang is not None:
            for worker, state in ended.items():
                if state:
                    self.hang.ended(worker)
            self.hang_verdict = self.hang.verdict() if running else None
            verdict = self.hang_verdict
            if verdict is not None and verdict.stuck and self.hang.settled(verdict):
                conditions.append(verdict.diagnosis())
                self._stuck(verdict)
            elif verdict is None or not verdict.stuck:
                self.stuck_episode = False  # output again (or nothing runs): the spell is over
        elif running and now - self.last_data > SILENT_S:
            conditions.append(
                from_condition("silent", f"no output for {now - self.last_data:.0f} s")
            )
        new = [d for d in conditions if self.diagnoser.add(d)]
        if new:  # a finding no log line carries: kept with the job in the history
            self.history.set_results(self.job_id, diagnoses=new)
        return new

    def _stuck(self, verdict: HangFinding) -> None:
        if not self.stuck_episode:
            self.stuck_episode = True
            if self.on_stuck is not None:
                self.on_stuck(verdict)

    def worker_output(self, worker: int, at: float | None = None) -> None:
        """Output of one worker seen without its bytes (a local copy that grew, at its mtime)."""
        self.output_seen()
        if self.hang is not None:
            self.hang.saw_output(worker, at)

    def sync_due(self) -> bool:
        return not self._syncing and self._clock() - self._synced_at >= RECORD_SYNC_S

    async def sync(self) -> tuple[Job | None, bool]:
        """The job's record, read on a thread; and whether it brought findings not seen here."""
        self._synced_at = self._clock()
        self._syncing = True
        try:
            record = await asyncio.to_thread(self.history.get, self.job_id)
        finally:
            self._syncing = False
        if record is None:
            return None, False
        changed = False
        for d in record.diagnoses:
            if self.diagnoser.add(d):
                changed = True
        return record, changed
