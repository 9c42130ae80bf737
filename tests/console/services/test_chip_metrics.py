"""Chip metrics through the sandbox: each worker's stand-in RuntimeMetricService on localhost:8431,
reached over the pooled ssh connection, with the chips' holders from the probe."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from console.models import ChipMetrics, Node
from console.sandbox.runtime import Sandbox
from console.services.chip_metrics import NO_PROGRAM, ChipMetricsService, PollSettings
from console.services.jobs import JobService
from console.services.probe import ProbeService
from console.services.remote import RemoteService

ZONE = "us-central2-b"
BUSY = Path(__file__).resolve().parents[2] / "busy_tpu.py"
QUICK = PollSettings(interval_s=0.5, holders_every_s=1.5, recheck_holders_s=0.5)


@pytest.fixture
async def chip_metrics(remote: RemoteService) -> AsyncIterator[ChipMetricsService]:
    service = ChipMetricsService.for_remote(
        remote, ProbeService(remote), settings=QUICK, standin=True
    )
    try:
        yield service
    finally:
        await service.close()


@pytest.fixture
async def launch(jobs: JobService, sandbox: Sandbox):
    """Jobs on sandbox workers (tests/busy_tpu.py in their HOME), all stopped afterwards."""
    started = []

    async def start(name: str, selection: str, command: str, **kw):
        node = await jobs.remote.fleet.find_node(name)
        for w in range(len(node.workers)):
            place = sandbox.worker_place(sandbox.fleet.get(ZONE, name), w)
            place.materialise()
            shutil.copy(BUSY, place.root / "busy_tpu.py")
        job = await jobs.launch(node, selection, command, **kw)
        started.append((job, node))
        return node, job

    try:
        yield start
    finally:
        for job, node in started:
            await jobs.stop(jobs.get(job.job_id), node, grace_s=1)


async def until_snapshot(
    service: ChipMetricsService, node: Node, condition: Callable[[ChipMetrics], bool]
) -> ChipMetrics:
    """Snapshots as the service publishes them, until one satisfies `condition` (the limit only
    turns a hang into a failure: JAX starts slowly on a loaded machine)."""
    last = None
    try:
        async with asyncio.timeout(180):
            async for snapshot in service.updates(node):
                last = snapshot
                if condition(snapshot):
                    return snapshot
    except TimeoutError:
        pass
    raise AssertionError(f"never reached; last snapshot: {last}")


def all_live(s: ChipMetrics) -> bool:
    return all(w.state == "ok" and not w.stale for w in s.workers)


async def test_an_idle_node_says_no_program_is_using_the_tpu(
    chip_metrics: ChipMetricsService, remote: RemoteService
) -> None:
    node = await remote.fleet.find_node("demo-v4-8")
    snapshot = await chip_metrics.snapshot(node)
    (worker,) = snapshot.workers
    assert worker.state == "no_program" and worker.reason == NO_PROGRAM
    assert [(c.chip, c.hbm_used, c.duty_pct) for c in worker.chips] == [
        (i, 0, 0.0) for i in range(4)
    ]
    assert snapshot.duty_range == (0.0, 0.0) and snapshot.standin


async def test_a_running_jax_job_moves_the_numbers_of_the_chips_it_holds(
    chip_metrics: ChipMetricsService, jobs: JobService, launch
) -> None:
    node, job = await launch("demo-v4-8", "0", "TPU_VISIBLE_CHIPS=0,1 python3 busy_tpu.py")

    def busy(s: ChipMetrics) -> bool:
        chips = s.workers[0].chips
        return all_live(s) and all(c.hbm_used and c.duty_pct and c.pid for c in chips[:2])

    snapshot = await until_snapshot(chip_metrics, node, busy)
    held, idle = snapshot.workers[0].chips[:2], snapshot.workers[0].chips[2:]
    assert all("busy_tpu.py" in c.command for c in held)
    assert all(c.hbm_total == 32 << 30 for c in held)  # a v4 chip's HBM
    assert [(c.hbm_used, c.duty_pct, c.pid) for c in idle] == [(0, 0.0, None)] * 2
    assert all(c.missing == "not in use by the TPU program" for c in idle)
    low, high = snapshot.hbm_used_range  # type: ignore[misc]
    assert low == 0 and high > 0 and snapshot.duty_range[1] > 0  # type: ignore[index]
    await jobs.stop(job, node, grace_s=1)
    after = await until_snapshot(chip_metrics, node, lambda s: s.workers[0].state != "ok")
    assert after.workers[0].reason == NO_PROGRAM or after.workers[0].state == "closed"
    after = await until_snapshot(chip_metrics, node, lambda s: s.workers[0].state == "no_program")
    assert after.workers[0].reason == NO_PROGRAM


async def test_a_closed_metrics_port_says_why_and_the_other_worker_still_shows(
    chip_metrics: ChipMetricsService, sandbox: Sandbox, launch
) -> None:
    node, _ = await launch("demo-v4-16", "all", "python3 busy_tpu.py")
    await until_snapshot(chip_metrics, node, all_live)
    sandbox.set_metrics_port_closed(ZONE, "demo-v4-16", 1, True)

    def split(s: ChipMetrics) -> bool:
        w0, w1 = s.workers
        return w0.state == "ok" and not w0.stale and w1.state == "port_closed"

    snapshot = await until_snapshot(chip_metrics, node, split)
    w0, w1 = snapshot.workers
    assert all(c.duty_pct and c.hbm_used for c in w0.chips)
    pid = w1.chips[0].pid
    assert pid and f"pid {pid} (python3 busy_tpu.py) holds the chips" in w1.reason
    assert "nothing answers on localhost:8431" in w1.reason
    assert all(c.hbm_used is None and c.duty_pct is None for c in w1.chips)
    assert [p.worker for p in snapshot.problems()] == [1]


async def test_a_closed_metrics_port_is_asked_at_most_once_a_poll(
    chip_metrics: ChipMetricsService, sandbox: Sandbox, launch
) -> None:
    """gRPC reconnects by itself every few hundred ms while the port is closed; each try must
    not become a channel the worker is asked for (on a pod slice they piled up by thousands)."""
    node, _ = await launch("demo-v4-16", "all", "python3 busy_tpu.py")
    await until_snapshot(chip_metrics, node, all_live)
    sandbox.set_metrics_port_closed(ZONE, "demo-v4-16", 1, True)
    await until_snapshot(chip_metrics, node, lambda s: s.workers[1].state == "port_closed")
    before, polls = sandbox.metrics_opens(ZONE, "demo-v4-16", 1), 0
    async for snapshot in chip_metrics.updates(node):
        assert snapshot.workers[1].state == "port_closed" and snapshot.workers[0].state == "ok"
        polls += 1
        if polls == 8:
            break
    asked = sandbox.metrics_opens(ZONE, "demo-v4-16", 1) - before
    assert 1 <= asked <= polls + 1, (asked, polls)


async def test_an_unreachable_worker_keeps_its_last_numbers_marked_stale(
    chip_metrics: ChipMetricsService, sandbox: Sandbox, launch
) -> None:
    node, _ = await launch("demo-v4-16", "all", "python3 busy_tpu.py")
    await until_snapshot(chip_metrics, node, all_live)
    sandbox.set_worker_down(ZONE, "demo-v4-16", 1, True)
    try:
        snapshot = await until_snapshot(
            chip_metrics, node, lambda s: s.workers[1].state == "unreachable"
        )
        w0, w1 = snapshot.workers
        assert w0.state == "ok" and w1.stale and all(c.hbm_used for c in w1.chips)
        assert all(c.stale_s > 0 and c.missing == w1.reason for c in w1.chips)
    finally:
        sandbox.set_worker_down(ZONE, "demo-v4-16", 1, False)


@pytest.mark.slow  # the real sgl-jax engines: minutes on this CPU
async def test_a_multi_engine_run_moves_the_numbers_of_its_engines_devices(
    chip_metrics: ChipMetricsService, jobs: JobService, launch
) -> None:
    from console.services.templates import template

    multi = template("multi-engine")
    values = multi.values(
        "tiny-llama", {"max_new_tokens": 32, "concurrency": 4, "warmup_sequential": True}
    )
    rendered = multi.render(values)
    node, job = await launch(
        "demo-v4-8", "0", rendered.shell(), kind="multi-engine", env=rendered.env,
        ship_runners=True,
    )  # fmt: skip
    watching = asyncio.ensure_future(jobs.watch(job, node))

    def engines_busy(s: ChipMetrics) -> bool:
        if watching.done():
            raise AssertionError(f"the run ended unseen: {jobs.get(job.job_id)}")
        chips = s.workers[0].chips
        return all_live(s) and all(c.hbm_used and c.duty_pct and c.pid for c in chips)

    try:
        snapshot = await until_snapshot(chip_metrics, node, engines_busy)
        assert all("-m remote.multi_engine" in c.command for c in snapshot.workers[0].chips)
        assert await watching == {0: 0}
    finally:
        watching.cancel()
    after = await until_snapshot(chip_metrics, node, lambda s: s.workers[0].state == "no_program")
    assert after.workers[0].reason == NO_PROGRAM


def test_watched_nodes_poll_in_slots_of_their_own_spread_over_the_second() -> None:
    """Sixteen watched nodes make sixteen small bursts of calls a second, not one big one that
    holds the console's event loop up (bench/metrics.py measures the stall)."""
    from console.services.chip_metrics import _NodePoller

    service = ChipMetricsService(None, None, None)  # type: ignore[arg-type]
    phases = sorted(service.next_phase() for _ in range(16))
    gaps = [b - a for a, b in zip(phases, [*phases[1:], phases[0] + 1], strict=True)]
    assert min(gaps) > 1 / (3 * 16)
    poller = _NodePoller(service, None)  # type: ignore[arg-type]
    for now in (10.0, 10.2, 10.3, 10.7, 11.24, 11.26):
        due = poller._next_due(now, 0.25)
        assert round(due - 0.25, 9) == round(due - 0.25) and 0.5 <= due - now < 1.5, now
