"""The stuck? verdict and the grouping of stacks, on the numbers and stacks a job gives them."""

from __future__ import annotations

from datetime import UTC, datetime

from console.models import (
    ChipMetrics,
    ChipReading,
    Frame,
    Job,
    JobWorker,
    ProcessStacks,
    ThreadStack,
    WorkerChips,
    WorkerStacks,
)
from console.services.hangs import HangSettings, HangWatch, judge_hang
from console.services.stacks import group_workers, parse_faulthandler, parse_py_spy

T0 = 1_000_000.0
TEN_MIN = HangSettings(after_s=600)


def samples(duty: float | None, start: float = T0, end: float = T0 + 700, step: float = 1.0):
    return [(start + i * step, duty) for i in range(int((end - start) / step))]


def test_a_silent_worker_with_idle_chips_is_stuck_and_a_busy_one_is_not() -> None:
    finding = judge_hang(
        "7-abc",
        [0, 1],
        T0 + 700,
        {0: T0, 1: T0},
        {0: samples(0.2), 1: samples(35.0)},
        TEN_MIN,
    )
    assert finding.stuck and finding.stuck_workers == (0,) and finding.not_stuck_workers == (1,)
    assert finding.summary() == (
        "Stuck? w0 silent 11m40s, chips idle (duty at most 0.2%). "
        "Not stuck: w1 silent 11m40s but its chips work (duty up to 35%)."
    )


def test_silence_alone_decides_when_the_duty_cycle_is_unknown_and_says_why() -> None:
    finding = judge_hang(
        "7-abc", [0], T0 + 700, {0: T0}, {0: samples(None)}, TEN_MIN,
        duty_notes={0: "metrics port closed"},
    )  # fmt: skip
    (w0,) = finding.workers
    assert finding.stuck and w0.duty == "unknown"
    assert w0.why == (
        "silent 11m40s; duty cycle unknown (metrics port closed): judged by silence alone"
    )


def test_a_worker_that_printed_lately_or_was_busy_within_the_window_is_not_stuck() -> None:
    busy_then_idle = samples(50.0, T0, T0 + 200) + samples(0.0, T0 + 200, T0 + 700)
    finding = judge_hang(
        "7-abc", [0, 1], T0 + 700, {0: T0 + 650, 1: T0}, {0: [], 1: busy_then_idle}, TEN_MIN
    )
    assert not finding.stuck
    assert [w.why for w in finding.workers][0] == "printed 50s ago"
    # Idle for 500 s of a 600 s window, busy before: not yet ten minutes of idle chips.
    assert finding.workers[1].duty == "busy"


def test_idle_chips_seen_only_briefly_are_not_called_idle() -> None:
    late = samples(0.0, T0 + 650, T0 + 700)  # the metrics watch began 50 s ago
    finding = judge_hang("7-abc", [0], T0 + 700, {0: T0}, {0: late}, TEN_MIN)
    assert finding.workers[0].duty == "unknown" and finding.stuck  # silence alone, as before


def _snapshot(at: float, duties: list[float | None]) -> ChipMetrics:
    workers = tuple(
        WorkerChips(w, "ok", (ChipReading(w, 0, 1, 2, d),)) if d is not None
        else WorkerChips(w, "unreachable", (), "w1: gone")
        for w, d in enumerate(duties)
    )  # fmt: skip
    return ChipMetrics("z/n", "n", datetime.fromtimestamp(at, UTC), workers)


def test_a_hang_watch_fed_with_output_and_snapshots_gives_the_same_verdict() -> None:
    job = Job(
        "7-abc", "n", "z", "python3 x.py", datetime.fromtimestamp(T0, UTC),
        workers=(JobWorker(0, pid=11), JobWorker(1, pid=12), JobWorker(2)),
    )  # fmt: skip
    watch = HangWatch(job, HangSettings(after_s=60), clock=lambda: T0 + 100)
    for i in range(100):
        watch.saw_metrics(_snapshot(T0 + i, [0.0, None]))
    watch.saw_output(1, at=T0 + 90)
    finding = watch.verdict()
    assert [(w.worker, w.stuck) for w in finding.workers] == [(0, True), (1, False)]
    watch.ended(0)
    assert not watch.verdict().stuck


def test_a_worker_whose_numbers_just_began_is_not_called_stuck_by_silence_alone() -> None:
    """Silent for the window, but its duty watched for 10 s of 60: wait, do not guess."""
    job = Job(
        "8-abc", "n", "z", "python3 x.py", datetime.fromtimestamp(T0, UTC),
        workers=(JobWorker(0, pid=11), JobWorker(1, pid=12)),
    )  # fmt: skip
    now = [T0 + 100]
    watch = HangWatch(job, HangSettings(after_s=60), clock=lambda: now[0])
    for i in range(90, 100):
        watch.saw_metrics(_snapshot(T0 + i, [0.0, None]))  # w1: no numbers at all
    finding = watch.verdict()
    assert [(w.worker, w.duty, w.stuck) for w in finding.workers] == [
        (0, "unknown", True),
        (1, "unknown", True),
    ]
    assert not watch.settled(finding)  # w0's numbers are coming in: not yet
    now[0] = T0 + 160
    for i in range(100, 160):
        watch.saw_metrics(_snapshot(T0 + i, [0.0, None]))
    finding = watch.verdict()
    assert [w.duty for w in finding.workers] == ["idle", "unknown"]
    assert watch.settled(finding)  # w1 has none to wait for: silence alone decides


# ----- stacks --------------------------------------------------------------------------------
FAULTHANDLER = """Thread 0x00007f1 (most recent call first):
  File "/home/u/.tpuconsole/runners/remote/x.py", line 4 in spin
  File "/usr/lib/python3.11/threading.py", line 982 in run

Current thread 0x00007f2 (most recent call first):
  File "/home/u/train.py", line 9 in step
  File "/home/u/train.py", line 11 in <module>"""

PY_SPY = """Process 19798: python3 train.py
Python v3.11.7 (/usr/bin/python3.11)

Thread 19798 (idle): "MainThread"
    wait (threading.py:320)
    barrier (/home/u/train.py:20)
    <module> (/home/u/train.py:30)
Thread 19799 (active): "Thread-1"
    spin (/home/u/train.py:4)
"""


def test_faulthandler_and_py_spy_dumps_are_read_with_the_main_thread_marked() -> None:
    threads = parse_faulthandler(FAULTHANDLER, home="/home/u")
    assert [(t.main, t.current, t.frames[0].function) for t in threads] == [
        (False, False, "spin"),
        (True, True, "step"),
    ]
    assert threads[1].frames[0] == Frame("~/train.py", 9, "step")
    spy = parse_py_spy(PY_SPY, home="/home/u")
    assert [(t.name, t.main, t.state) for t in spy] == [
        ("MainThread", True, "idle"),
        ("Thread-1", False, "active"),
    ]
    assert [str(f) for f in spy[0].frames] == [
        "wait (threading.py:320)",
        "barrier (~/train.py:20)",
        "<module> (~/train.py:30)",
    ]


def _worker(w: int, *functions: str, line: int = 1) -> WorkerStacks:
    frames = tuple(Frame("~/train.py", line + i, f) for i, f in enumerate(functions))
    thread = ThreadStack("MainThread", frames, main=True)
    return WorkerStacks(w, (ProcessStacks(100 + w, "python3 train.py", "py-spy", (thread,)),))


def test_the_workers_away_from_the_majority_are_named() -> None:
    workers = [_worker(w, "all_reduce", "step", line=w) for w in (0, 1, 3)]
    workers.append(_worker(2, "load_batch", "step"))
    groups, differing, verdict = group_workers(workers)
    assert [g.workers for g in groups] == [(0, 1, 3), (2,)]  # lines differ, places do not
    assert differing == (2,)
    assert verdict == (
        "w2 is elsewhere (w2 in load_batch (~/train.py:1)) while w0, w1, w3 wait in "
        "all_reduce (~/train.py:0)."
    )


def test_an_even_split_names_no_one_unless_one_side_waits_at_a_barrier() -> None:
    groups, differing, verdict = group_workers([_worker(0, "a"), _worker(1, "b")])
    assert differing == () and verdict.startswith("No majority: w0 in a")
    _, differing, _ = group_workers([_worker(0, "a"), _worker(1, "barrier", "main")])
    assert differing == (0,)
    _, differing, verdict = group_workers([_worker(0, "a"), _worker(1, "a")])
    assert differing == () and verdict.startswith("Every worker's main thread")
