"""Chips and stacks by key presses, through the sandbox: the fleet's HBM and DUTY columns filling
and changing in place, a row per chip in the node detail with the reason for missing numbers,
and a job deadlocked on one of two workers flagged stuck, its stacks pointing at the other one."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from console.models import Node
from console.sandbox.runtime import Sandbox
from console.services.chip_metrics import NO_PROGRAM, ChipMetricsService, PollSettings
from console.services.jobs import JobService
from console.services.session import Services
from console.services.templates import RUNNERS_PRELUDE
from console.ui.app import TpuConsoleApp
from console.ui.jobs_screen import JobsScreen
from console.ui.log_screen import LogScreen
from console.ui.node_detail import NodeDetailScreen
from console.ui.stacks_screen import StacksScreen
from console.ui.widgets.fleet_table import FleetTable
from tests.conftest import screen_text, until, worker_output

ZONE = "us-central2-b"
PROGRAMS = Path(__file__).resolve().parents[2]
QUICK = PollSettings(interval_s=0.5, holders_every_s=1.5, recheck_holders_s=0.5)


def place(sandbox: Sandbox, name: str, program: str) -> None:
    node = sandbox.fleet.get(ZONE, name)
    for w in range(node.hosts):
        where = sandbox.worker_place(node, w)
        where.materialise()
        shutil.copy(PROGRAMS / program, where.root / program)


async def printed(jobs: JobService, node: Node, job_id: str, worker: int, text: str) -> None:
    """Wait on the worker itself until its job's log has `text` (JAX starts slowly)."""
    log = f".tpuconsole/jobs/{job_id}/log"
    status, _ = await worker_output(
        jobs.remote,
        node,
        f"for i in $(seq 3600); do grep -q {text!r} {log} && exit 0; sleep 0.05; done; exit 1",
        worker,
    )
    assert status == 0, f"w{worker} never printed {text!r}"


@pytest.fixture
def quick(services: Services) -> Services:
    """The session's services with chips polled twice a second and "stuck?" after 4 s."""
    chips = ChipMetricsService.for_remote(
        services.remote, services.prober, settings=QUICK, standin=True
    )
    return dataclasses.replace(services, chips=chips, stuck_after_s=4.0)


@pytest.fixture
async def busy_v4_16(sandbox: Sandbox, quick: Services):
    """tests/busy_tpu.py holding the chips of both workers of demo-v4-16, stopped afterwards."""
    place(sandbox, "demo-v4-16", "busy_tpu.py")
    jobs = quick.jobs
    node = await quick.fleet.find_node("demo-v4-16")
    job = await jobs.launch(node, "all", "python3 busy_tpu.py")
    try:
        for w in (0, 1):
            await printed(jobs, node, job.job_id, w, "holding")
        yield node
    finally:
        await jobs.stop(jobs.get(job.job_id), node, grace_s=1)


def cell(table: FleetTable, key: str, column: str) -> str:
    return table.get_cell(key, column).plain


async def test_hbm_and_duty_fill_in_place_and_say_when_a_worker_has_no_numbers(
    sandbox: Sandbox, quick: Services, busy_v4_16: Node
) -> None:
    key = busy_v4_16.key
    app = TpuConsoleApp(quick, mode="SANDBOX")
    async with app.run_test(size=(200, 40)) as pilot:
        table = app.screen.query_one(FleetTable)
        await until(pilot, lambda: key in table.rows)
        assert table.move_to(key)
        await until(pilot, lambda: cell(table, key, "duty")[:1].isdigit())
        rows_before = [r.key.value for r in table.ordered_rows]
        hbm, duty = cell(table, key, "hbm"), cell(table, key, "duty")
        # min–max over the 8 chips: each holds a share of the process's memory, of 32G (v4).
        assert hbm.endswith("/32G") and hbm[0].isdigit() and hbm[0] != "0", hbm
        assert duty.endswith("%") and float(duty.split("–")[-1].rstrip("%")) > 0, duty
        # Idle READY nodes are not polled: nothing holds their chips, and they say so ("-").
        assert cell(table, "us-central2-b/demo-v4-8", "duty") == "-"

        sandbox.set_metrics_port_closed(ZONE, "demo-v4-16", 1, True)
        await until(pilot, lambda: cell(table, key, "duty").endswith("+1?"))
        # Changed in place: the same rows in the same order, the cursor still on the node.
        assert [r.key.value for r in table.ordered_rows] == rows_before
        assert table.cursor_node_key() == key
        assert cell(table, key, "hbm").endswith("/32G +1?")

        await pilot.press("enter")  # the node in full: a row per chip, the reason for w1
        detail = app.screen
        assert isinstance(detail, NodeDetailScreen)
        chips = detail.query_one("#chips")

        def w1_says_why() -> bool:
            m = detail.chip_metrics
            return (
                m is not None
                and m.workers[1].state == "port_closed"
                and m.workers[0].state == "ok"  # its first reading may come a poll later
                and chips.row_count == 8
            )

        await until(pilot, w1_says_why)
        rows = [[str(c) for c in chips.get_row(k)] for k in chips.rows]
        w0 = [r for r in rows if r[0] == "w0"]
        w1 = [r for r in rows if r[0] == "w1"]
        assert all(r[3].strip() and r[4].endswith("%") and r[6] != "-" for r in w0), w0
        assert all("busy_tpu.py" in r[7] for r in w0)
        assert all(r[2] == "-" and r[4] == "-" and r[8] == "metrics port closed" for r in w1)
        note = str(detail.query_one("#chips-note").render())
        assert "w1: metrics port closed" in note and "nothing answers on localhost:8431" in note
        assert "sandbox stand-in numbers" in note

        await pilot.press("escape")  # back on the fleet: its column watch resumes, in place
        await until(pilot, lambda: cell(table, key, "duty").endswith("+1?"))


async def test_an_idle_node_shows_zeros_and_that_no_program_uses_the_tpu(
    quick: Services,
) -> None:
    app = TpuConsoleApp(quick, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(200, 40)) as pilot:
        table = app.screen.query_one(FleetTable)
        key = "us-central2-b/demo-v4-8"
        await until(pilot, lambda: key in table.rows)
        assert table.move_to(key)
        await pilot.press("enter")
        detail = app.screen
        assert isinstance(detail, NodeDetailScreen)
        chips = detail.query_one("#chips")
        await until(pilot, lambda: chips.row_count == 4)
        rows = [[str(c) for c in chips.get_row(k)] for k in chips.rows]
        assert [(r[2], r[4], r[8]) for r in rows] == [("0", "0%", "no TPU program")] * 4
        assert NO_PROGRAM in str(detail.query_one("#chips-note").render())


async def test_a_deadlock_is_stuck_in_the_log_view_and_t_points_at_the_worker_that_differs(
    sandbox: Sandbox, quick: Services
) -> None:
    """tests/stuck_barrier.py: w1 waits in a barrier w0 never reaches (w0 computes elsewhere)."""
    place(sandbox, "demo-v4-16", "stuck_barrier.py")
    jobs = quick.jobs
    node = await quick.fleet.find_node("demo-v4-16")
    job = await jobs.launch(
        node, "all", f"{RUNNERS_PRELUDE}\npython3 -u stuck_barrier.py", ship_runners=True
    )
    app = TpuConsoleApp(quick, mode="SANDBOX", probe_interval_s=None)
    try:
        async with app.run_test(size=(200, 50)) as pilot:
            await pilot.press("j")
            assert isinstance(app.screen, JobsScreen)
            await until(pilot, lambda: app.screen.query_one("#jobs").row_count == 1)
            await pilot.press("enter")
            log = app.screen
            assert isinstance(log, LogScreen)

            # The finding is made once, when the chips' numbers span the window: not earlier,
            # by silence alone, which would call the busy w0 stuck too.
            await until(pilot, lambda: any(d.key == "stuck" for d in log.monitor.found), 6000)
            finding = next(d for d in log.monitor.found if d.key == "stuck")
            assert finding.evidence.startswith("Stuck? w1 silent"), finding.evidence
            assert "Not stuck: w0" in finding.evidence and "its chips work" in finding.evidence
            await until(pilot, lambda: "Stuck? w1 silent" in screen_text(app))
            # The duty sparkline per worker: w0 computes, w1 waits.
            await until(pilot, lambda: "w0 duty" in screen_text(app))
            assert "w1 duty" in screen_text(app)

            await pilot.press("t")
            stacks = app.screen
            assert isinstance(stacks, StacksScreen)
            await until(pilot, lambda: stacks.report is not None, limit=6000)
            assert stacks.report is not None and stacks.report.differing == (0,)
            text = screen_text(app)
            assert "w0 is elsewhere" in text and "while w1 waits in barrier" in text
            assert "◀ DIFFERS w0: 1 worker" in text and "w1: 1 worker (at a sync point)" in text
            assert "Look at w0 first" in text
    finally:
        await jobs.stop(jobs.get(job.job_id), node, grace_s=1)


async def test_the_log_view_stops_asking_for_the_chips_once_the_job_has_ended(
    sandbox: Sandbox, quick: Services
) -> None:
    """The sparklines keep their last numbers; the workers are no longer polled (a pod slice's
    256 would each be asked every second for a libtpu that no longer serves)."""
    jobs = quick.jobs
    node = await quick.fleet.find_node("demo-v4-8")
    hold = "import jax, time; jax.devices(); print('holding', flush=True); time.sleep(3)"
    job = await jobs.launch(node, "all", f"python3 -c {hold!r}")
    app = TpuConsoleApp(quick, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(200, 50)) as pilot:
        await app.push_screen(LogScreen(jobs.get(job.job_id)))
        log = app.screen
        assert isinstance(log, LogScreen)
        await until(pilot, lambda: "w0 duty" in screen_text(app), 6000)
        assert quick.chips.latest(node.key) is not None  # polled while the job runs
        await until(pilot, lambda: all(log.ended.values()), 6000)
        await until(pilot, lambda: quick.chips.latest(node.key) is None)
        assert "w0 duty" in screen_text(app)
