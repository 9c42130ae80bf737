"""The job monitor without a screen: hang after DONE, silence, findings recorded elsewhere."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from console.adapters.history_db import HistoryStore
from console.models import Job, JobWorker
from console.services import job_monitor
from console.services.diagnosis import from_condition
from console.services.hangs import HangSettings, HangWatch
from console.services.job_monitor import JobMonitor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def history(tmp_path: Path):
    store = HistoryStore(tmp_path / "history.db")
    store.record_launch(
        Job(
            "1-abc123", "demo-v4-16", "us-central2-b", "python run.py", datetime.now(UTC),
            workers=(JobWorker(0), JobWorker(1)), status="running",
        )
    )  # fmt: skip
    yield store
    store.close()


def keys(monitor: JobMonitor) -> list[tuple[str, int | None]]:
    return [(d.key, d.worker) for d in monitor.found]


def test_a_worker_alive_a_minute_after_done_is_a_hang_recorded_once(history) -> None:
    clock = Clock()
    monitor = JobMonitor("1-abc123", history, clock=clock)
    assert monitor.feed(0, b"DONE: engines=4 wall_sec=1.5\n")
    running = {0: "", 1: ""}
    clock.now += job_monitor.HANG_AFTER_DONE_S - 1
    assert monitor.check(True, running) == []
    clock.now += 2
    [hang] = monitor.check(True, running)
    assert (hang.key, hang.worker) == ("hang_after_done", 0)
    assert monitor.check(True, running) == []  # once
    assert [(d.key, d.worker) for d in history.get("1-abc123").diagnoses] == [
        ("hang_after_done", 0)
    ]


def test_a_worker_that_ended_after_done_is_no_hang_and_an_ended_job_is_never_judged(
    history,
) -> None:
    clock = Clock()
    monitor = JobMonitor("1-abc123", history, clock=clock)
    monitor.feed(0, b"DONE: steps=10 elapsed_sec=3\n")
    clock.now += job_monitor.SILENT_S + job_monitor.HANG_AFTER_DONE_S
    assert monitor.check(True, {0: "rc=0", 1: "rc=0"}) == []
    assert monitor.check(False, {0: "", 1: ""}) == []
    assert history.get("1-abc123").diagnoses == ()


def test_silence_counts_from_the_last_bytes_not_the_last_line(history) -> None:
    clock = Clock()
    monitor = JobMonitor("1-abc123", history, clock=clock)
    clock.now += job_monitor.SILENT_S - 5
    monitor.output_seen()  # a progress bar redrew itself: no newline, still output
    clock.now += 10
    assert monitor.check(True, {0: ""}) == []
    clock.now += job_monitor.SILENT_S
    assert [d.key for d in monitor.check(True, {0: ""})] == ["silent"]


async def test_findings_recorded_elsewhere_and_the_status_arrive_by_sync(history) -> None:
    clock = Clock()
    monitor = JobMonitor("1-abc123", history, clock=clock)
    left = from_condition("node_left", "demo-v4-16 went DELETING")
    history.set_results("1-abc123", diagnoses=[left])
    history.set_status("1-abc123", "lost")
    assert monitor.sync_due()
    record, changed = await monitor.sync()
    assert changed and keys(monitor) == [("node_left", None)]
    assert record is not None and record.status == "lost"
    assert not monitor.sync_due()  # not again before RECORD_SYNC_S
    clock.now += job_monitor.RECORD_SYNC_S
    assert monitor.sync_due()
    _, changed = await monitor.sync()
    assert not changed  # nothing new: the panel is not redrawn


def test_a_stuck_job_is_told_once_per_stuck_spell_not_at_every_check(history) -> None:
    job = history.get("1-abc123")
    job = dataclasses.replace(job, workers=(JobWorker(0, pid=41), JobWorker(1, pid=42)))
    clock = Clock()
    clock.now = job.started_at.timestamp()
    told: list[tuple[int, ...]] = []
    watch = HangWatch(job, HangSettings(after_s=10.0), clock=clock)
    monitor = JobMonitor(
        job.job_id,
        history,
        clock=clock,
        hang=watch,
        on_stuck=lambda f: told.append(f.stuck_workers),
    )
    running = {0: "", 1: ""}
    clock.now += 5
    monitor.worker_output(1, clock.now)  # w1 printed; w0 never did
    clock.now += 6
    monitor.check(True, running)
    assert told == [(0,)]
    for _ in range(5):  # still stuck, look after look: not told again
        clock.now += 1
        monitor.check(True, running)
    assert told == [(0,)]
    monitor.worker_output(0, clock.now)  # life again: the spell is over
    monitor.worker_output(1, clock.now)
    monitor.check(True, running)
    assert told == [(0,)] and not monitor.stuck_episode
    clock.now += 11
    monitor.check(True, running)  # silent again: a new spell, told again
    assert told == [(0,), (0, 1)]
