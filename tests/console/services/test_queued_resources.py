"""Queued resources as the console uses them, through the real client against the emulator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from console.adapters.history_db import HistoryStore
from console.models import FleetError
from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from console.services.lifecycle import CreateRequest, LifecycleService, Progress
from console.services.preflight import preflight
from console.services.queued_resources import (
    QueuedCreateRequest,
    QueuedResourceService,
    group_of,
    groups,
    parse_duration,
    quota_findings,
)
from console.services.remote import RemoteService
from console.services.templates import CUSTOM
from tests.conftest import worker_output

ZONE = "us-central2-b"


@pytest.fixture
def history(tmp_path: Path):
    store = HistoryStore(tmp_path / "history.db")
    yield store
    store.close()


@pytest.fixture
def lifecycle(remote: RemoteService, history: HistoryStore) -> LifecycleService:
    return LifecycleService(remote.fleet, history, remote, poll_s=0.05)


@pytest.fixture
def queued(remote: RemoteService, lifecycle: LifecycleService) -> QueuedResourceService:
    return QueuedResourceService(remote.fleet, lifecycle, poll_s=0.05)


async def test_the_listing_reads_requests_in_the_same_pass_and_groups_their_nodes(
    remote: RemoteService, sandbox: Sandbox
) -> None:
    snapshot = await remote.fleet.list_nodes()
    assert sandbox.emulator.calls["ListQueuedResources"] == len(snapshot.zones) + len(
        snapshot.no_access
    )
    found = {g.request.name: g for g in groups(snapshot)}
    assert set(found) == {"demo-queue-failed", "demo-multislice", "demo-queue-v5p"}
    multi = found["demo-multislice"]
    assert [n.name for n in multi.nodes] == ["demo-ms-0", "demo-ms-1"] and multi.ready
    waiting = found["demo-queue-v5p"]
    assert waiting.nodes == () and waiting.missing == ("demo-queue-v5p",)
    line = waiting.summary(snapshot.taken_at)
    assert line.startswith("WAITING_FOR_RESOURCES, spot, 0/1 nodes, waited 2")
    assert "valid for 6h" in line
    assert "error 8: There is no more capacity" in found["demo-queue-failed"].summary(
        snapshot.taken_at
    )


async def test_create_through_the_queue_waits_and_ends_ready_with_ssh(
    queued: QueuedResourceService, sandbox: Sandbox
) -> None:
    # Each state long enough for a loaded machine's polls to see it (a late look skips one).
    sandbox.fleet.timing = replace(sandbox.fleet.timing, queue_accept_s=1.0, queue_wait_s=2.0)
    seen: list[Progress] = []
    outcome = await queued.create(
        QueuedCreateRequest("queued-v4", ZONE, "v4-16", valid_for_s=3600), seen.append
    )
    states = [p.state for p in seen if p.verb == "queue"]
    assert states[-1] == "ACTIVE"
    for state in ("WAITING_FOR_RESOURCES", "PROVISIONING"):
        assert state in states
    assert [n.state for n in outcome.nodes] == ["READY"]
    assert outcome.ssh_ok == ("queued-v4 w0", "queued-v4 w1") and not outcome.ssh_failed
    assert seen[-1].verb == "ssh" and seen[-1].state == "READY"
    waited = [p.elapsed_s for p in seen if p.verb == "queue"]
    assert waited == sorted(waited) and waited[-1] > 0.5  # the time waited, growing


async def test_a_request_that_fails_says_why(queued: QueuedResourceService) -> None:
    with pytest.raises(FleetError) as failed:
        await queued.create(
            QueuedCreateRequest(
                "no-room", "europe-west4-a", "v5litepod-4", tier="spot", valid_for_s=1
            )
        )
    assert "FAILED: [4]" in failed.value.reason and "valid until" in failed.value.reason
    assert "holds its quota" in failed.value.remedy


async def test_deleting_a_queued_node_deletes_its_request_with_force(
    queued: QueuedResourceService, remote: RemoteService
) -> None:
    node = await remote.fleet.get_node(ZONE, "demo-ms-1")
    qr = await queued.request_of(node)
    assert qr is not None
    question = queued.delete_question(node, qr)
    assert "demo-ms-1 belongs to queued resource demo-multislice" in question
    assert "with force: its nodes (demo-ms-0, demo-ms-1) are deleted too" in question
    assert await queued.delete_node(node) == "demo-multislice"
    snapshot = await remote.fleet.list_nodes()
    assert not [n for n in snapshot.nodes if n.name.startswith("demo-ms-")]
    assert snapshot.queued(f"{ZONE}/demo-multislice") is None


async def test_the_failed_request_is_a_finding_and_its_cleanup_frees_the_quota(
    queued: QueuedResourceService, lifecycle: LifecycleService, remote: RemoteService
) -> None:
    spot = CreateRequest("spot-v6e", "europe-west4-a", "v6e-8", spot=True)
    with pytest.raises(FleetError) as refused:
        await lifecycle.create(spot, wait=False)
    assert refused.value.kind == "quota"
    findings = quota_findings(await remote.fleet.list_nodes())
    assert [f.request.name for f in findings] == ["demo-queue-failed"]
    assert "is FAILED and holds 8 chips of spot quota since " in findings[0].text
    await queued.cleanup(findings[0])
    assert quota_findings(await remote.fleet.list_nodes()) == []
    outcome = await lifecycle.create(spot)
    assert outcome.node.state == "READY" and outcome.node.spot


async def test_a_reclaimed_node_is_explained_as_the_services_doing_on_it_and_its_job(
    queued: QueuedResourceService,
    lifecycle: LifecycleService,
    remote: RemoteService,
    sandbox: Sandbox,
    history: HistoryStore,
    tmp_path: Path,
) -> None:
    sandbox.fleet.spot_chip_quota[ZONE] = 8
    outcome = await queued.create(QueuedCreateRequest("spot-q", ZONE, "v4-8", tier="spot"))
    jobs = JobService(remote, history, tmp_path)
    job = await jobs.launch(outcome.nodes[0], "all", "sleep 30")
    assert lifecycle.observe(await remote.fleet.list_nodes()) == []
    sandbox.fleet.preempt(ZONE, "spot-q")
    alerts = lifecycle.observe(await remote.fleet.list_nodes())
    assert len(alerts) == 1 and "spot-q is DELETING" in alerts[0]
    assert "spot capacity reclaimed by the TPU service" in alerts[0]
    assert "initiated by SERVICE" in alerts[0] and "another user" not in alerts[0]
    lost = jobs.get(job.job_id)
    assert lost.status == "lost" and "reclaimed by the TPU service" in lost.note
    timeline = [e.detail for e in history.events_for(ZONE, "spot-q") if e.kind == "alert"]
    assert timeline and "reclaimed by the TPU service" in timeline[0]


async def test_a_multislice_launch_gives_every_worker_of_both_slices_its_megascale_values(
    queued: QueuedResourceService, remote: RemoteService, history: HistoryStore, tmp_path: Path
) -> None:
    snapshot = await remote.fleet.list_nodes()
    group = next(g for g in groups(snapshot) if g.request.name == "demo-multislice")
    jobs = JobService(remote, history, tmp_path)
    command = (
        'echo "$MEGASCALE_COORDINATOR_ADDRESS $MEGASCALE_NUM_SLICES $MEGASCALE_SLICE_ID '
        '$MEGASCALE_PORT" > ~/megascale'
    )
    launched = await queued.launch_group(jobs, group, command)
    assert [j.node for j in launched] == ["demo-ms-0", "demo-ms-1"]
    coordinator = group.nodes[0].workers[0].internal_ip
    for slice_id, node in enumerate(group.nodes):
        for worker in range(node.hosts):
            status, text = await worker_output(
                remote,
                node,
                "for i in $(seq 200); do [ -s ~/megascale ] && break; sleep 0.05; done; "
                "cat ~/megascale",
                worker,
            )
            assert status == 0 and text == f"{coordinator}:8080 2 {slice_id} 8080", (
                node.name,
                worker,
            )


async def test_preflight_refuses_a_launch_on_one_slice_of_a_group(remote: RemoteService) -> None:
    snapshot = await remote.fleet.list_nodes()
    node = next(n for n in snapshot.nodes if n.name == "demo-ms-0")
    template = CUSTOM
    checks = preflight(template, {"command": "python train.py"}, node, "all")
    assert checks[0].level == "refuse"
    assert "one slice of multislice request demo-multislice" in checks[0].message
    assert "launch on the group" in checks[0].remedy.lower()
    group = group_of(snapshot, node)
    assert group is not None and QueuedResourceService.launch_refusal(group, node)
    on_group = preflight(template, {"command": "python train.py"}, node, "all", in_group=True)
    assert not [c for c in on_group if c.level == "refuse"]


def test_wait_bounds_are_read_as_gcloud_spells_them() -> None:
    assert parse_duration("6h") == 21600 and parse_duration("1d12h") == 129600
    assert parse_duration("90m") == 5400
    with pytest.raises(FleetError, match="not like 6h"):
        parse_duration("six hours")


def test_a_queued_request_is_checked_as_a_plain_create_is_then_for_the_queue() -> None:
    bad = QueuedCreateRequest("Bad Name", "", "v4-8", labels={"Team": "rl"}, count=0, tier="x")
    said = bad.problems()
    plain = CreateRequest("Bad Name", "", "v4-8", labels={"Team": "rl"}).problems()
    assert said[: len(plain)] == plain and len(plain) == 3  # name, zone, label key
    assert said[len(plain) :] == [
        "--count 0: a request asks for at least one node.",
        "Tier 'x': spot, guaranteed (reserved) or none (on-demand).",
    ]
    assert QueuedCreateRequest("ok-name", ZONE, "v4-8", tier="spot").problems() == []
