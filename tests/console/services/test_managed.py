"""Managed jobs on the sandbox: a preempted spot node deleted, recreated, set up, resumed.

Everything real but the chips: the TPU API emulator's spot quota and preemption, loopback ssh
workers whose processes die with their node, Tunix's toy GRPO writing orbax checkpoints.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from console.adapters.history_db import HistoryStore
from console.models import accelerator_shape
from console.sandbox.runtime import Sandbox
from console.services.chip_metrics import ChipMetricsService, PollSettings
from console.services.jobs import JobService
from console.services.launch import LaunchService
from console.services.lifecycle import LifecycleService
from console.services.managed import ManagedService, ManagedSpec, NodeSpec, Step
from console.services.notify import Notifier
from console.services.probe import ProbeService
from console.services.remote import RemoteService

ZONE = "us-central2-b"
SPOT = "managed-spot-v4-8"
STEP = re.compile(r"Train step (\d+) training loss")
RESTORED = re.compile(r"Restoring checkpoint from \S+/actor/(\d+)")


async def eventually(condition: Callable[[], bool], limit_s: float = 300.0) -> None:
    """Wait on a condition (never a fixed sleep); the limit only turns a hang into a failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


class Hooks:
    """A `[notify] command` that appends its environment to a file, and a local webhook."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "hook.log"
        fields = "$TPUCONSOLE_EVENT $TPUCONSOLE_JOB $TPUCONSOLE_STATUS $TPUCONSOLE_NODE"
        self.command = f'echo "{fields}" >> {shlex.quote(str(self.log))}'
        self.posts: list[dict] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers["Content-Length"])
                posts.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split() for line in self.log.read_text().splitlines()]


@pytest.fixture
def hooks(tmp_path: Path) -> Iterator[Hooks]:
    h = Hooks(tmp_path)
    try:
        yield h
    finally:
        h.server.shutdown()


def managed_for(
    remote: RemoteService, jobs: JobService, history: HistoryStore, notifier: Notifier, **kw
) -> ManagedService:
    lifecycle = LifecycleService(
        remote.fleet, history, remote, poll_s=0.1, ssh_wait_s=30, jobs=jobs
    )
    launcher = LaunchService(jobs, ProbeService(remote))
    return ManagedService(
        remote.fleet, history, jobs, lifecycle, launcher, notifier, poll_s=0.2, **kw
    )


@pytest.fixture
async def managed(
    remote: RemoteService, jobs: JobService, hooks: Hooks
) -> AsyncIterator[ManagedService]:
    service = managed_for(remote, jobs, jobs.history, Notifier(hooks.command, hooks.url, say=print))
    try:
        yield service
    finally:
        await service.close()


async def free_the_spot_quota(managed: ManagedService) -> None:
    """The default fleet's preempted spot v4-8 holds the zone's spot chips: delete it."""
    node = await managed.fleet.get_node(ZONE, "demo-spot-v4-8")
    await managed.lifecycle.change("delete", node)


def worker_log(jobs: JobService, job_id: str) -> str:
    path = jobs.log_path(job_id, 0)
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
async def test_a_preempted_toy_grpo_job_is_recreated_set_up_and_resumed_from_its_checkpoint(
    sandbox: Sandbox, managed: ManagedService, jobs: JobService, hooks: Hooks, tmp_path: Path
) -> None:
    # The zone's spot quota is the 4 chips one spot v4-8 holds: a create while the preempted
    # node still exists is refused (RESOURCE_EXHAUSTED), so the recovery must delete it first.
    await free_the_spot_quota(managed)
    assert sandbox.fleet.spot_chip_quota[ZONE] == accelerator_shape("v4-8").chips == 4
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "reward.py").write_text("BONUS = 1\n")
    ckpt = tmp_path / "bucket" / "ckpt"  # outside every worker: stands in for gs://
    spec = ManagedSpec(
        node=NodeSpec(SPOT, (ZONE,), "v4-8", spot=True),
        setup=(Step("sync", values={"local_dir": str(plugins), "remote_dir": "plugins"}),),
        run=Step(
            "grpo",
            "toy",
            {
                "steps": 6,
                "checkpoint_dir": str(ckpt),
                "save_interval_steps": 1,
                "metrics_dir": str(tmp_path / "tb"),
            },
        ),
        max_recoveries=2,
    )
    first = await managed.launch(spec)
    before = sandbox.fleet.get(ZONE, SPOT).node_id
    watching = asyncio.ensure_future(managed.run_forever(until_done=True))
    await eventually(lambda: (ckpt / "actor" / "2").is_dir() or watching.done())
    assert not watching.done(), worker_log(jobs, first.job_id)
    sandbox.fleet.preempt(ZONE, SPOT)  # what `tpuconsole sandbox preempt` does
    await asyncio.wait_for(watching, 600)

    record = jobs.history.managed(first.job_id)
    assert record is not None and record.state == "succeeded", record
    assert record.recoveries == 1 and len(record.attempts) == 2
    assert jobs.history.get(first.job_id).recoveries == 1  # what the jobs table shows
    again = jobs.history.get(record.attempts[1])
    assert again.attempt_of == first.job_id and again.status == "succeeded"
    assert jobs.history.get(first.job_id).status == "lost"
    node = sandbox.fleet.get(ZONE, SPOT)
    assert node.node_id != before and node.spot  # a new VM, spot again
    # The order the quota needs: the preempted node's delete before the new create.
    kinds = [e.kind for e in jobs.history.events_for(ZONE, SPOT) if e.source == "console"]
    assert kinds.index("delete") < len(kinds) - 1 - kinds[::-1].index("create")
    # The setup ran again on the new VM (a fresh disk), before the run.
    root = sandbox.worker_place(node, 0).root
    assert (root / "plugins" / "reward.py").read_text() == "BONUS = 1\n"
    # Both attempts' logs stay readable; the second resumed from the last checkpoint the first
    # wrote (2 or later): its steps go on from there, they do not start again at 1.
    first_log, second_log = worker_log(jobs, first.job_id), worker_log(jobs, again.job_id)
    steps_before = [int(s) for s in STEP.findall(first_log)]
    steps_after = [int(s) for s in STEP.findall(second_log)]
    restored = [int(s) for s in RESTORED.findall(second_log)]
    assert steps_before[:2] == [1, 2], steps_before
    assert restored and restored[0] >= 2, second_log[-3000:]
    assert steps_after and steps_after[0] == restored[0] + 1, (restored, steps_after)
    assert steps_after == list(range(steps_after[0], steps_after[0] + len(steps_after)))
    assert "DONE: steps=" in second_log
    assert again.env.get("TPUCONSOLE_RECOVERY") == "1"
    # The hook heard the preemption, then the recovery, then the end; the webhook too.
    await managed.notifier.drain()
    events = [e[:2] for e in hooks.events()]
    assert events == [
        ["preempted", first.job_id],
        ["recovered", first.job_id],
        ["ended", first.job_id],
    ], events
    assert [p["tpuconsole_event"] for p in hooks.posts] == ["preempted", "recovered", "ended"]
    assert all(isinstance(p["text"], str) and first.job_id in p["text"] for p in hooks.posts)


async def _custom_managed(
    managed: ManagedService, script: str, codes: tuple[int, ...]
) -> ManagedService:
    spec = ManagedSpec(
        node=NodeSpec("demo-v4-8", ("us-central2-b",)),
        run=Step(command=script),
        max_recoveries=3,
        retry_on_exit=codes,
    )
    return await managed.launch(spec)


# Fails the first time (exit 75), succeeds on the retry: the attempt number is its environment.
FLAKY = 'echo "attempt ${TPUCONSOLE_RECOVERY} of job ${TPUCONSOLE_JOB}"; ' \
    '[ "$TPUCONSOLE_RECOVERY" = 0 ] && exit 75; echo fine'  # fmt: skip


async def test_a_listed_exit_code_is_retried_and_an_unlisted_one_is_not(
    managed: ManagedService, jobs: JobService, hooks: Hooks
) -> None:
    retried = await _custom_managed(managed, FLAKY, (75,))
    await managed.run_forever(until_done=True)
    record = jobs.history.managed(retried.job_id)
    assert record is not None and record.state == "succeeded" and record.recoveries == 1
    second = record.attempts[1]
    assert worker_log(jobs, second).splitlines() == [f"attempt 1 of job {retried.job_id}", "fine"]

    refused = await _custom_managed(managed, FLAKY, (1, 137))
    await managed.run_forever(until_done=True)
    record = jobs.history.managed(refused.job_id)
    assert record is not None and record.state == "failed" and record.recoveries == 0
    assert record.attempts == (refused.job_id,)
    assert "exit 75" in record.note and "not retried" in record.note
    await managed.notifier.drain()
    assert [e[0] for e in hooks.events()][-1] == "failed"


async def test_a_failing_hook_is_reported_and_the_job_goes_on(
    remote: RemoteService, jobs: JobService, tmp_path: Path
) -> None:
    said: list[str] = []
    notifier = Notifier(
        "echo 'no such channel' >&2; exit 3", "http://127.0.0.1:9/nothing-listens", say=said.append
    )
    managed = managed_for(remote, jobs, jobs.history, notifier)
    try:
        job = await _custom_managed(managed, "echo done", ())
        await managed.run_forever(until_done=True)
    finally:
        await managed.close()
    assert jobs.history.managed(job.job_id).state == "succeeded"
    assert any("[notify] command failed (exit 3): no such channel" in s for s in said), said
    assert any("[notify] webhook could not be reached" in s for s in said), said


async def test_two_watchers_never_recover_the_same_job_twice(
    sandbox: Sandbox, remote: RemoteService, jobs: JobService, hooks: Hooks, tmp_path: Path
) -> None:
    """Two processes' worth of watchers on one history file: one holds the lease and acts; the
    other takes over only once the holder is gone, and each preemption is recovered once."""
    other_history = HistoryStore(tmp_path / "history.db")
    first = managed_for(remote, jobs, jobs.history, Notifier(hooks.command), holder="a:1")
    other_jobs = JobService(remote, other_history, tmp_path / "home")
    second = managed_for(remote, other_jobs, other_history, Notifier(hooks.command), holder="b:2")
    try:
        await free_the_spot_quota(first)
        spec = ManagedSpec(
            node=NodeSpec(SPOT, (ZONE,), "v4-8", spot=True),
            run=Step(command='echo "run $TPUCONSOLE_RECOVERY"; sleep 600'),
            max_recoveries=2,
        )
        job = await first.launch(spec)
        sandbox.fleet.preempt(ZONE, SPOT)

        # Both look, again and again, until the job is running on its second attempt.
        def recovered() -> bool:
            record = jobs.history.managed(job.job_id)
            return record is not None and record.state == "running" and record.recoveries == 1

        while not recovered():
            await asyncio.gather(first.check(), second.check())
            await asyncio.sleep(0.1)
        assert other_history.lease_holder(f"managed:{job.job_id}") == "a:1"
        # Even a watcher that skipped the lease could not claim the attempt recovered already.
        assert not other_history.claim_recovery(job.job_id, 0)
        # The first watcher goes away (its lease released as it closes): the second takes over.
        await first.close()
        sandbox.fleet.preempt(ZONE, SPOT)

        def recovered_twice() -> bool:
            record = other_history.managed(job.job_id)
            return record is not None and record.state == "running" and record.recoveries == 2

        while not recovered_twice():
            await second.check()
            await asyncio.sleep(0.1)
        record = other_history.managed(job.job_id)
        assert record is not None and len(record.attempts) == 3
        # Its last attempt sleeps: stopped here, so that nothing outlives the test.
        other_history.set_managed(job.job_id, state="cancelled")
        last = other_jobs.get(record.current)
        await other_jobs.stop(last, await remote.fleet.get_node(ZONE, SPOT), grace_s=1)
        events = [e[0] for e in hooks.events()]
        assert events.count("preempted") == 2 and events.count("recovered") == 2, events
    finally:
        await first.close()
        await second.close()
        other_history.close()


def test_the_lease_of_a_dead_holder_is_taken_over_at_once(tmp_path: Path) -> None:
    import subprocess

    store = HistoryStore(tmp_path / "h.db")
    code = (
        "import sys; from pathlib import Path; from console.adapters.history_db import "
        "HistoryStore; s = HistoryStore(Path(sys.argv[1])); "
        "print(s.take_lease('managed:1-a', 'dead:1', 3600))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "h.db")], capture_output=True, text=True
    )
    assert out.stdout.strip() == "True", out.stderr
    assert store.lease_holder("managed:1-a") == "dead:1"
    assert store.take_lease("managed:1-a", "alive:2", 30)  # its process has exited
    assert store.lease_holder("managed:1-a") == "alive:2"
    assert not HistoryStore(tmp_path / "h.db").take_lease("managed:1-a", "third:3", 30)
    store.close()


async def test_a_node_someone_stopped_is_never_deleted_and_the_job_runs_again_once_started(
    sandbox: Sandbox, managed: ManagedService, jobs: JobService
) -> None:
    run = 'echo "attempt $TPUCONSOLE_RECOVERY"; [ "$TPUCONSOLE_RECOVERY" = 1 ] || sleep 600'
    job = await _custom_managed(managed, run, ())
    node_id = sandbox.fleet.get("us-central2-b", "demo-v4-8").node_id
    node = await managed.fleet.get_node("us-central2-b", "demo-v4-8")
    await managed.lifecycle.change("stop", node)
    for _ in range(5):  # looks while it is stopped: nothing is done to it
        await managed.check()
    assert sandbox.fleet.get("us-central2-b", "demo-v4-8").state == "STOPPED"
    assert jobs.history.managed(job.job_id).recoveries == 0
    await managed.lifecycle.change("start", await managed.fleet.get_node(*node.key.split("/")))
    await managed.run_forever(until_done=True)
    record = jobs.history.managed(job.job_id)
    assert record is not None and record.state == "succeeded" and record.recoveries == 1
    assert sandbox.fleet.get("us-central2-b", "demo-v4-8").node_id == node_id  # the same VM
    kinds = [e.kind for e in jobs.history.events_for("us-central2-b", "demo-v4-8")]
    assert "delete" not in kinds


async def test_a_managed_job_gone_silent_with_idle_chips_tells_the_hook_stuck_once(
    remote: RemoteService, jobs: JobService, hooks: Hooks
) -> None:
    """A run that printed one line and then waits, holding no chip (its duty cycle is zero):
    after `stuck_after` (2 s here) the hook hears `stuck`, and only once for the spell."""
    quick = PollSettings(interval_s=0.5, holders_every_s=1.5, recheck_holders_s=0.5)
    chips = ChipMetricsService.for_remote(
        remote, ProbeService(remote), settings=quick, standin=True
    )
    notifier = Notifier(hooks.command, hooks.url, say=print)
    managed = managed_for(remote, jobs, jobs.history, notifier, chips=chips, stuck_after_s=2.0)
    try:
        job = await _custom_managed(managed, "echo 'waiting for a peer'; sleep 600", ())
        watching = asyncio.ensure_future(managed.run_forever())

        def stuck_events() -> list[list[str]]:
            return [e for e in hooks.events() if e[0] == "stuck"]

        await eventually(lambda: bool(stuck_events()) or watching.done(), 120)
        assert not watching.done()
        assert stuck_events() == [["stuck", job.job_id, "running", "demo-v4-8"]]
        # Verdicts go on being made, the job still stuck: the hook is not called again.
        monitor = managed.monitors[job.job_id]
        seen = monitor.checks
        await eventually(lambda: monitor.checks >= seen + 5, 60)
        assert monitor.stuck_episode
        await managed.notifier.drain()
        assert len(stuck_events()) == 1
        [post] = [p for p in hooks.posts if p["tpuconsole_event"] == "stuck"]
        assert post["text"].startswith(f"job {job.job_id} on demo-v4-8: Stuck? w0 silent")
        assert "chips idle" in post["text"], post["text"]
        assert any(d.key == "stuck" for d in jobs.history.get(job.job_id).diagnoses)
        jobs.history.set_managed(job.job_id, state="cancelled")
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        node = await remote.fleet.get_node(ZONE, "demo-v4-8")
        await jobs.stop(jobs.get(job.job_id), node, grace_s=1)
    finally:
        await managed.close()
        await chips.close()
