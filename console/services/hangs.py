"""Is a running job stuck? Its log is silent and its chips idle, worker by worker.

Before chip metrics the console judged by silence alone (ten minutes without output, in the log
view). A worker is now "stuck" when it printed nothing for `after_s` and its chips' duty cycle
stayed near zero all that time; a silent worker whose chips work (a long compile, a long step)
is not. Where the duty cycle is unknown (no metrics: the reason is kept), silence alone decides,
as before. The finding names the stuck workers and the others.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from console.models import ChipMetrics, Diagnosis, Job, format_age
from console.services.settings import DEFAULT_STUCK_AFTER_S

# DEFAULT_STUCK_AFTER_S (ten minutes, the log view's SILENT_S) is `stuck_after` in config.toml.
IDLE_DUTY_PCT = 1.0  # at or below this, a chip is doing nothing
COVERAGE = 0.8  # duty samples must span this much of the window to speak for it

TITLE = "Stuck? Silent, with idle chips"
CAUSE = (
    "No output and no work on the chips: the workers of a slice wait for each other, so one "
    "rank that is elsewhere (a barrier it never reaches, a collective it entered alone, an "
    "exception on one host only) leaves the others waiting at the next collective."
)
REMEDY = (
    "Take every worker's stacks (they land in the log and are compared side by side): the "
    "worker whose main thread is elsewhere than the rest is usually the cause. py-spy dump on "
    "the VM shows the same for programs that are not our runners."
)


@dataclass(frozen=True)
class HangSettings:
    after_s: float = DEFAULT_STUCK_AFTER_S
    idle_duty_pct: float = IDLE_DUTY_PCT


@dataclass(frozen=True)
class WorkerActivity:
    """One worker of a running job: how long it has been silent and what its chips did."""

    worker: int
    silent_s: float
    duty: str  # idle | busy | unknown
    peak_duty_pct: float | None  # the highest duty of its chips over the window
    stuck: bool
    why: str  # one line a person reads


@dataclass(frozen=True)
class HangFinding:
    job_id: str
    stuck: bool
    workers: tuple[WorkerActivity, ...]
    after_s: float

    @property
    def stuck_workers(self) -> tuple[int, ...]:
        return tuple(w.worker for w in self.workers if w.stuck)

    @property
    def not_stuck_workers(self) -> tuple[int, ...]:
        return tuple(w.worker for w in self.workers if not w.stuck)

    def summary(self) -> str:
        if not self.stuck:
            return "Not stuck: " + "; ".join(f"w{w.worker} {w.why}" for w in self.workers) + "."
        stuck = "; ".join(f"w{w.worker} {w.why}" for w in self.workers if w.stuck)
        rest = "; ".join(f"w{w.worker} {w.why}" for w in self.workers if not w.stuck)
        return f"Stuck? {stuck}" + (f". Not stuck: {rest}." if rest else ".")

    def diagnosis(self) -> Diagnosis:
        """For the job's findings and history, as the log view's other conditions are kept."""
        return Diagnosis("stuck", TITLE, self.summary(), CAUSE, REMEDY, None)


def _duty_over(
    samples: Iterable[tuple[float, float | None]], since: float, now: float, idle_pct: float
) -> tuple[str, float | None]:
    """idle, busy or unknown over [since, now], from (time, peak duty or None) samples.

    Busy at any moment of the window is busy; idle needs samples over most of the window.
    """
    known = [(t, d) for t, d in samples if d is not None and t >= since]
    if not known:
        return "unknown", None
    peak = max(d for _, d in known)
    if peak > idle_pct:
        return "busy", peak
    if now - known[0][0] < COVERAGE * (now - since):
        return "unknown", peak  # watched too briefly to call it idle
    return "idle", peak


def judge_hang(
    job_id: str,
    running: Iterable[int],
    now: float,
    last_output: dict[int, float],
    duty: Mapping[int, Iterable[tuple[float, float | None]]],
    settings: HangSettings | None = None,
    duty_notes: dict[int, str] | None = None,
) -> HangFinding:
    """The verdict on the running workers at `now` (all times from one clock, time.time())."""
    settings = settings or HangSettings()
    notes = duty_notes or {}
    activity = []
    for worker in sorted(running):
        silent = max(0.0, now - last_output.get(worker, now))
        if silent < settings.after_s:
            activity.append(
                WorkerActivity(
                    worker, silent, "unknown", None, False, f"printed {format_age(silent)} ago"
                )  # fmt: skip
            )
            continue
        since = now - settings.after_s
        state, peak = _duty_over(duty.get(worker, ()), since, now, settings.idle_duty_pct)
        quiet = f"silent {format_age(silent)}"
        if state == "busy":
            why = f"{quiet} but its chips work (duty up to {peak:.0f}%)"
        elif state == "idle":
            why = f"{quiet}, chips idle (duty at most {peak:.1f}%)"
        else:
            known = notes.get(worker) or "no metrics"
            why = f"{quiet}; duty cycle unknown ({known}): judged by silence alone"
        activity.append(WorkerActivity(worker, silent, state, peak, state != "busy", why))
    return HangFinding(job_id, any(a.stuck for a in activity), tuple(activity), settings.after_s)


class HangWatch:
    """What a view (or `tpuconsole logs -f`) keeps per job to ask, now and then, "stuck?".

    Fed with each worker's output as it arrives and with the node's chip metrics snapshots.
    """

    def __init__(self, job: Job, settings: HangSettings | None = None, *, clock=time.time) -> None:
        self.job = job
        self.settings = settings or HangSettings()
        self.clock = clock
        start = job.started_at.timestamp()
        self.last_output = {w.worker: start for w in job.workers if w.pid}
        self.running = set(self.last_output)
        self._duty: dict[int, deque[tuple[float, float | None]]] = {}
        self._notes: dict[int, str] = {}

    def saw_output(self, worker: int, at: float | None = None) -> None:
        self.last_output[worker] = self.clock() if at is None else at

    def ended(self, worker: int) -> None:
        self.running.discard(worker)

    def saw_metrics(self, snapshot: ChipMetrics) -> None:
        at = snapshot.taken_at.timestamp()
        for w in snapshot.workers:
            known = w.state in ("ok", "no_program") and not w.stale
            self._duty.setdefault(w.worker, deque()).append(
                (at, w.peak_duty_pct if known else None)
            )
            self._notes[w.worker] = "" if known else (w.reason or w.label)
            window = self._duty[w.worker]
            while window and at - window[0][0] > self.settings.after_s + 60:
                window.popleft()

    def measuring(self, worker: int) -> bool:
        """Duty numbers arrive for this worker: a verdict on it waits until they span the
        window, rather than fall back on silence alone while they are still too few."""
        return any(d is not None for _, d in self._duty.get(worker, ()))

    def settled(self, finding: HangFinding) -> bool:
        """No stuck worker is judged by silence alone while its chips' numbers are coming in."""
        return not any(
            w.stuck and w.duty == "unknown" and self.measuring(w.worker) for w in finding.workers
        )

    def verdict(self, now: float | None = None) -> HangFinding:
        return judge_hang(
            self.job.job_id,
            self.running,
            self.clock() if now is None else now,
            self.last_output,
            self._duty,
            self.settings,
            self._notes,
        )
