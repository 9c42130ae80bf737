"""The TPU LOCK column's source: which READY nodes are due a probe, and what it found."""

from __future__ import annotations

from console.sandbox.runtime import Sandbox
from console.services.lock_watch import LockWatch
from console.services.probe import ProbeService
from console.services.remote import RemoteService


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def test_ready_nodes_are_due_once_per_interval_and_their_lock_is_read(
    sandbox: Sandbox, remote: RemoteService
) -> None:
    clock = Clock()
    watch = LockWatch(ProbeService(remote), clock=clock)
    nodes = (await remote.fleet.list_nodes()).nodes
    v48 = next(n for n in nodes if n.name == "demo-v4-8")
    due = watch.due(nodes, 30.0)
    assert v48 in due and all(n.state == "READY" for n in due)
    assert not any(n.name == "demo-spot-v4-8" for n in due)  # PREEMPTED: nothing to probe
    assert watch.status(v48) == "-"  # never probed
    sandbox.worker_place(sandbox.fleet.get(v48.zone, v48.name), 0).materialise()
    sandbox.worker_place(sandbox.fleet.get(v48.zone, v48.name), 0).lockfile.touch()
    assert await watch.probe([v48]) == []
    assert watch.status(v48) == "STALE LOCK"
    clock.now += 29
    assert v48 not in watch.due(nodes, 30.0)
    clock.now += 1
    assert v48 in watch.due(nodes, 30.0)
