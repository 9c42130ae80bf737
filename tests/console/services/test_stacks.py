"""Stacks and hangs through the sandbox: a job that deadlocks on one of two workers."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from console.sandbox.runtime import Sandbox
from console.services.chip_metrics import ChipMetricsService, PollSettings
from console.services.diagnosis import Diagnoser
from console.services.hangs import HangSettings, HangWatch
from console.services.jobs import JobService
from console.services.metrics import JobMetrics
from console.services.probe import ProbeService
from console.services.stacks import StacksService
from console.services.templates import RUNNERS_PRELUDE
from tests.conftest import worker_output

ZONE = "us-central2-b"
PROGRAMS = Path(__file__).resolve().parents[2]


def place(sandbox: Sandbox, name: str, program: str) -> None:
    node = sandbox.fleet.get(ZONE, name)
    for w in range(node.hosts):
        where = sandbox.worker_place(node, w)
        where.materialise()
        shutil.copy(PROGRAMS / program, where.root / program)


async def wait_for_line(jobs: JobService, node, job, worker: int, text: str) -> None:
    log = f".tpuconsole/jobs/{job.job_id}/log"
    status, _ = await worker_output(
        jobs.remote,
        node,
        f"for i in $(seq 2400); do grep -q {text!r} {log} && exit 0; sleep 0.05; done; exit 1",
        worker,
    )
    assert status == 0, f"w{worker} never printed {text!r}: {jobs.log_path(job.job_id, worker)}"


@pytest.fixture
async def deadlocked(jobs: JobService, sandbox: Sandbox):
    """tests/stuck_barrier.py on both workers of demo-v4-16, once both are where they hang."""
    place(sandbox, "demo-v4-16", "stuck_barrier.py")
    node = await jobs.remote.fleet.find_node("demo-v4-16")
    command = f"{RUNNERS_PRELUDE}\npython3 -u stuck_barrier.py"
    job = await jobs.launch(node, "all", command, ship_runners=True)
    try:
        await wait_for_line(jobs, node, job, 0, "w0: preparing")
        await wait_for_line(jobs, node, job, 1, "w1: at the barrier")
        yield node, job
    finally:
        await jobs.stop(jobs.get(job.job_id), node, grace_s=1)


async def test_the_stacks_point_at_the_worker_that_never_reached_the_barrier(
    jobs: JobService, deadlocked
) -> None:
    node, job = deadlocked
    report = await StacksService(jobs.remote).collect(job, node)
    assert report.differing == (0,), report.workers
    w0, w1 = (w.main_stack for w in report.workers)
    assert w0 is not None and w1 is not None
    assert [f.function for f in w0][:2] == ["elsewhere", "main"]
    assert w1[0].function == "barrier" and w1[0].path == "~/stuck_barrier.py"
    assert {g.workers: g.at_sync_point for g in report.groups} == {(0,): False, (1,): True}
    assert report.verdict.startswith("w0 is elsewhere (w0 in elsewhere (~/stuck_barrier.py:")
    assert "while w1 waits in barrier (~/stuck_barrier.py:" in report.verdict
    assert all(p.method == "faulthandler" for w in report.workers for p in w.processes if p.python)
    # The dumps are in the logs, the jobs go on, and nothing in a dump reads as a failure.
    assert jobs.get(job.job_id).status == "running"
    for w in (0, 1):
        await jobs.follow(job, node, lambda *_: None, selection=str(w), follow=False)
        data = jobs.log_path(job.job_id, w).read_bytes()
        assert b"(most recent call first):" in data
        diagnoser, results = Diagnoser(), JobMetrics()
        assert diagnoser.feed_chunk(w, data) == [] and not results.feed_chunk(w, data)
    again = await StacksService(jobs.remote).collect(job, node)  # the processes are still there
    assert again.differing == (0,)


async def test_the_deadlock_is_stuck_on_the_waiting_worker_not_the_busy_one(
    jobs: JobService, deadlocked
) -> None:
    node, job = deadlocked
    job = jobs.get(job.job_id)
    watch = HangWatch(job, HangSettings(after_s=4.0))
    metrics = ChipMetricsService.for_remote(
        jobs.remote, ProbeService(jobs.remote), settings=PollSettings(interval_s=0.5)
    )
    follower = asyncio.ensure_future(
        jobs.follow(job, node, lambda w, _: watch.saw_output(w), from_start=True)
    )
    try:
        async with asyncio.timeout(120):
            async for snapshot in metrics.updates(node):
                watch.saw_metrics(snapshot)
                finding = watch.verdict()
                if finding.stuck and all(w.duty != "unknown" for w in finding.workers):
                    break
    finally:
        follower.cancel()
        await metrics.close()
    assert finding.stuck_workers == (1,) and finding.not_stuck_workers == (0,)
    w0, w1 = finding.workers
    assert w1.duty == "idle" and w0.duty == "busy" and w0.peak_duty_pct > 1
    assert finding.summary().startswith("Stuck? w1 silent")
    assert "Not stuck: w0 silent" in finding.summary() and "its chips work" in finding.summary()
    assert finding.diagnosis().key == "stuck"


async def test_a_python_program_that_is_no_runner_is_read_with_py_spy(
    jobs: JobService, sandbox: Sandbox
) -> None:
    if shutil.which("py-spy", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("py-spy is not installed in this environment (the dev extra has it)")
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    program = (
        "import time\ndef napping():\n    time.sleep(600)\nprint('napping', flush=True)\n"
        "napping()\n"
    )
    job = await jobs.launch(node, "0", f"python3 -u -c {shlex.quote(program)}")
    try:
        await wait_for_line(jobs, node, job, 0, "napping")
        report = await StacksService(jobs.remote).collect(job, node)
    finally:
        await jobs.stop(job, node, grace_s=1)
    (worker,) = report.workers
    main = worker.main
    assert main is not None and main.method == "py-spy", worker
    assert [f.function for f in worker.main_stack or ()] == ["napping", "<module>"]
    assert report.verdict.startswith("Every worker's main thread is at the same place: napping")
