"""Progress of a command on many workers, told as MaxText's multihost runner tells it:
"k/N done, slowest: w17 (12 s)" while it runs, the slowest and the failed named at the end.

Why: on a 256-host slice one worker that hangs or refuses is the whole story, and a bare
spinner hides which one it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

SLOWEST_NAMED = 3  # at the end: this many of the slowest workers
FAILED_NAMED = 8  # at the end: this many failed workers by name, then "+N more"


@dataclass
class FanoutProgress:
    """Counts and clocks of one fan-out; `line()` for the live state, `closing()` at the end."""

    total: int
    clock: Callable[[], float] = time.monotonic
    started_at: float = field(default=0.0)
    _running: dict[int, float] = field(default_factory=dict)
    durations: dict[int, float] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started_at = self.clock()

    def start(self, worker: int) -> None:
        self._running[worker] = self.clock()

    def finish(self, worker: int, failure: str = "") -> None:
        begun = self._running.pop(worker, self.started_at)
        self.durations[worker] = self.clock() - begun
        if failure:
            self.failures[worker] = failure

    @property
    def done(self) -> int:
        return len(self.durations)

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def slowest_running(self) -> tuple[int, float] | None:
        """The worker that has been running longest, and for how long."""
        if not self._running:
            return None
        worker, begun = min(self._running.items(), key=lambda item: (item[1], item[0]))
        return worker, self.clock() - begun

    def line(self) -> str:
        """`k/N done, slowest: w17 (12 s)`, and how many failed so far."""
        text = f"{self.done}/{self.total} done"
        if self.failures:
            text += f", {len(self.failures)} failed"
        slowest = self.slowest_running()
        if slowest is not None:
            text += f", slowest: w{slowest[0]} ({_seconds(slowest[1])})"
        return text

    def closing(self) -> str:
        """All done: the time, the slowest workers and every failed one (the first few named)."""
        elapsed = self.clock() - self.started_at
        ok = self.done - len(self.failures)
        text = f"{ok}/{self.total} ok in {_seconds(elapsed)}"
        ranked = sorted(self.durations.items(), key=lambda item: (-item[1], item[0]))
        if len(ranked) > 1:
            named = ", ".join(f"w{w} ({_seconds(s)})" for w, s in ranked[:SLOWEST_NAMED])
            text += f"; slowest: {named}"
        if self.failures:
            failed = sorted(self.failures.items())
            named = ", ".join(f"w{w} ({why})" for w, why in failed[:FAILED_NAMED])
            more = len(failed) - FAILED_NAMED
            text += f"; failed: {named}" + (f" +{more} more" if more > 0 else "")
        return text


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"


ProgressSink = Callable[[FanoutProgress], None]

# A fan-out in one of several stages (a launch ships the runners, then starts): the stage's
# name with its progress.
StageSink = Callable[[str, FanoutProgress], None]


def staged(sink: StageSink | None) -> Callable[[str], ProgressSink | None]:
    """`stage("starting")` is a ProgressSink telling `sink` which stage it is; None if none."""

    def stage(name: str) -> ProgressSink | None:
        if sink is None:
            return None
        return lambda progress: sink(name, progress)

    return stage
