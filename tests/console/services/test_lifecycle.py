"""VM lifecycle through the real client against the emulator: progress, quota, automation."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from console.adapters.history_db import HistoryStore
from console.models import FleetError
from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from console.services.lifecycle import CreateRequest, LifecycleService, Progress, default_name
from console.services.remote import RemoteService
from tests.conftest import worker_output


@pytest.fixture
def history(tmp_path: Path):
    store = HistoryStore(tmp_path / "history.db")
    yield store
    store.close()


@pytest.fixture
def lifecycle(remote: RemoteService, history: HistoryStore) -> LifecycleService:
    return LifecycleService(remote.fleet, history, remote, poll_s=0.05)


async def test_create_reports_creating_then_ready_and_checks_ssh(
    lifecycle: LifecycleService, history: HistoryStore, sandbox: Sandbox
) -> None:
    seen: list[Progress] = []
    outcome = await lifecycle.create(
        CreateRequest("fresh-v4-16", "us-central2-b", "v4-16", labels={"team": "rl"}), seen.append
    )
    states = [p.state for p in seen if p.verb == "create" and not p.outcome]
    assert states[0] == "CREATING" and states[-1] == "READY"
    assert outcome.node.state == "READY" and outcome.ssh_ok == (0, 1) and not outcome.ssh_failed
    # Your key was in its metadata from the create on: no update was needed to get in.
    assert outcome.node.metadata["ssh-keys"] == lifecycle.remote.access.entry()
    assert lifecycle.remote.access.entry().startswith("tester:ssh-ed25519 ")
    assert sandbox.emulator.calls.get("UpdateNode", 0) == 0
    kinds = [e.kind for e in history.events_for("us-central2-b", "fresh-v4-16")]
    assert kinds[0] == "create" and "ssh" in kinds


async def test_spot_quota_refusal_names_the_quota_and_falls_back_when_asked(
    lifecycle: LifecycleService, history: HistoryStore
) -> None:
    request = CreateRequest("spot-try", "us-central2-b", "v4-8", spot=True)
    with pytest.raises(FleetError) as err:
        await lifecycle.create(request)
    assert "TPUV4sPreemptiblePodPerProjectPerRegionForTPUAPI" in err.value.reason
    assert "on-demand" in err.value.remedy
    outcome = await lifecycle.create(
        CreateRequest("spot-try", "us-central2-b", "v4-8", spot=True, fallback_on_demand=True)
    )
    assert not outcome.spot and not outcome.node.spot
    assert "created on-demand instead" in outcome.notes[0]
    assert "fallback" in [e.kind for e in history.events_for("us-central2-b", "spot-try")]


async def test_a_node_deleted_by_automation_marks_its_running_job_lost(
    lifecycle: LifecycleService,
    sandbox: Sandbox,
    remote: RemoteService,
    tmp_path: Path,
    history: HistoryStore,
) -> None:
    jobs = JobService(remote, history, tmp_path)
    node = await remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "sleep 30")
    assert lifecycle.observe(await remote.fleet.list_nodes()) == []
    sandbox.fleet.delete("us-central2-b", "demo-v4-8")  # not us: "automation"
    alerts = lifecycle.observe(await remote.fleet.list_nodes())
    assert len(alerts) == 1 and "demo-v4-8 is DELETING" in alerts[0]
    assert "automation" in alerts[0] and job.job_id in alerts[0]
    lost = jobs.get(job.job_id)
    assert lost.status == "lost"
    assert [d.key for d in lost.diagnoses] == ["node_left"]
    assert "demo-v4-8 went DELETING" in lost.diagnoses[0].evidence
    timeline = [(e.kind, e.detail) for e in history.events_for("us-central2-b", "demo-v4-8")]
    assert ("state", "READY → DELETING") in timeline


async def test_stop_then_start(lifecycle: LifecycleService, remote: RemoteService) -> None:
    node = await remote.fleet.find_node("demo-v4-8")
    stopped = await lifecycle.change("stop", node)
    assert stopped is not None and stopped.state == "STOPPED"
    started = await lifecycle.change("start", stopped)
    assert started is not None and started.state == "READY"
    assert await lifecycle.change("delete", started) is None


async def test_a_refused_change_is_in_the_history_with_its_code(
    lifecycle: LifecycleService, remote: RemoteService, history: HistoryStore
) -> None:
    node = await remote.fleet.find_node("demo-v4-8")
    with pytest.raises(FleetError):
        await lifecycle.change("start", node)  # it is READY already
    (event,) = [e for e in history.events_for("us-central2-b", "demo-v4-8") if e.kind == "failed"]
    assert event.detail.startswith("start [FAILED_PRECONDITION]: ")


async def test_unavailable_twice_mid_operation_is_survived(
    lifecycle: LifecycleService, sandbox: Sandbox
) -> None:
    sandbox.faults.inject("GetOperation", grpc.StatusCode.UNAVAILABLE, times=2)
    sandbox.faults.inject("GetNode", grpc.StatusCode.UNAVAILABLE, times=2)
    outcome = await lifecycle.create(CreateRequest("flaky", "us-central1-a", "v3-8"))
    assert outcome.node.state == "READY"
    assert sandbox.emulator.calls["GetOperation"] >= 3


def test_default_names_follow_the_seeds_pattern() -> None:
    from datetime import datetime

    assert (
        default_name("sgl", "v4-8", datetime(2026, 11, 23, 9, 5, 7)) == "sgl-v4-8-20261123-090507"
    )


async def test_bad_names_are_refused_before_any_call(lifecycle: LifecycleService) -> None:
    with pytest.raises(FleetError, match="lowercase letters"):
        await lifecycle.create(CreateRequest("Bad_Name", "us-central2-b", "v4-8"))


async def test_a_startup_bootstrap_runs_as_a_job_on_every_worker(
    remote: RemoteService, history: HistoryStore, tmp_path: Path
) -> None:
    jobs = JobService(remote, history, tmp_path)
    life = LifecycleService(remote.fleet, history, remote, poll_s=0.05, jobs=jobs)
    outcome = await life.create(
        CreateRequest("boot-v4-16", "us-central2-b", "v4-16", startup_command="echo bootstrapped")
    )
    job = jobs.get(outcome.startup_job)
    assert job.kind == "bootstrap" and [w.worker for w in job.workers] == [0, 1]
    lines: list[str] = []
    await jobs.follow(job, outcome.node, lambda w, text: lines.append(text))
    assert lines == ["bootstrapped", "bootstrapped"]


async def test_a_lost_job_keeps_what_its_logs_showed_until_the_vm_went(
    sandbox: Sandbox, remote: RemoteService, tmp_path: Path, history: HistoryStore
) -> None:
    import asyncio

    jobs = JobService(remote, history, tmp_path)
    lifecycle = LifecycleService(remote.fleet, history, remote, jobs=jobs)
    node = await remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "echo 'Train step 1 training loss: 0.5'; sleep 30")
    assert lifecycle.observe(await remote.fleet.list_nodes()) == []
    log = f".tpuconsole/jobs/{job.job_id}/log"
    await worker_output(remote, node, f"until grep -q 'Train step' {log}; do sleep 0.05; done")
    await jobs.follow(job, node, lambda w, t: None, follow=False)  # the line is in the copy
    sandbox.fleet.delete("us-central2-b", "demo-v4-8")
    lifecycle.observe(await remote.fleet.list_nodes())
    await asyncio.gather(*lifecycle._results_tasks)
    lost = jobs.get(job.job_id)
    assert lost.status == "lost" and lost.metrics["losses"] == {"0": [[1, 0.5]]}
    assert [d.key for d in lost.diagnoses] == ["node_left"]


# ----- the API as Google answers it (issue 12) -----------------------------------------------

STOCKOUT = 'There is no more capacity in the zone "europe-west4-a"'


def lines(seen: list[Progress]) -> list[str]:
    return [p.line() for p in seen]


async def test_a_spot_stockout_falls_back_to_on_demand_and_ends_ready(
    lifecycle: LifecycleService, history: HistoryStore, sandbox: Sandbox
) -> None:
    seen: list[Progress] = []
    outcome = await lifecycle.create(
        CreateRequest(
            "try-v5e", "europe-west4-a", "v5litepod-8", spot=True, fallback_on_demand=True
        ),
        seen.append,
    )
    assert outcome.node.state == "READY" and not outcome.spot and not outcome.node.spot
    assert "had no capacity in europe-west4-a" in outcome.notes[0]
    failed = next(p for p in seen if p.state == "FAILED")
    assert failed.attempt == "spot" and "[RESOURCE_EXHAUSTED]" in failed.message
    assert STOCKOUT in failed.message
    order = [(p.state, p.attempt) for p in seen if p.verb == "create"]
    spot_creating = order.index(("CREATING", "spot"))
    fallback = order.index(("FALLBACK", ""))
    assert spot_creating < order.index(("FAILED", "spot")) < fallback
    assert order.index(("CREATING", "on-demand")) > fallback
    assert order[-1] == ("READY", "on-demand")
    kinds = [e.kind for e in history.events_for("europe-west4-a", "try-v5e")]
    assert kinds.index("failed") < kinds.index("fallback") < len(kinds) - 1
    failed_event = next(
        e for e in history.events_for("europe-west4-a", "try-v5e") if e.kind == "failed"
    )
    assert "[RESOURCE_EXHAUSTED/stockout]" in failed_event.detail
    assert sandbox.emulator.calls["CreateNode"] == 2


async def test_without_the_fallback_a_stockout_names_the_stockout_and_the_zone(
    lifecycle: LifecycleService,
) -> None:
    with pytest.raises(FleetError) as err:
        await lifecycle.create(CreateRequest("try-v5e", "europe-west4-a", "v5litepod-8", spot=True))
    assert err.value.code == "RESOURCE_EXHAUSTED" and err.value.kind == "stockout"
    assert "No spot capacity for v5litepod-8 in europe-west4-a (stockout, code 8)" in (
        err.value.reason
    )
    assert STOCKOUT in err.value.reason and "on-demand" in err.value.remedy


async def test_a_failed_spot_node_still_there_is_deleted_before_the_on_demand_try(
    lifecycle: LifecycleService, sandbox: Sandbox
) -> None:
    """Whether a stockout can leave its node behind is not public: the console copes."""
    from console.sandbox.fleet_state import SandboxNode

    sandbox.fleet.add_node(
        SandboxNode(
            "left-over",
            "europe-west4-a",
            "v5litepod-8",
            "v2-alpha-tpuv5-lite",
            "CREATING",
            sandbox.fleet.new_node_id(),
            0.0,
            spot=True,
        )
    )
    stockout = FleetError("no room", code="RESOURCE_EXHAUSTED", kind="stockout")
    request = CreateRequest("left-over", "europe-west4-a", "v5litepod-8", spot=True)
    seen: list[Progress] = []
    await lifecycle._make_sure_gone(request, stockout, seen.append)
    assert "europe-west4-a/left-over" not in sandbox.fleet.nodes
    assert any("deleting the failed spot node" in line for line in lines(seen))


async def test_a_node_of_that_name_that_is_not_the_spot_try_is_left_alone(
    lifecycle: LifecycleService, sandbox: Sandbox
) -> None:
    stockout = FleetError("no room", code="RESOURCE_EXHAUSTED", kind="stockout")
    request = CreateRequest("demo-v5e-8", "europe-west4-a", "v5litepod-8", spot=True)
    with pytest.raises(FleetError) as err:
        await lifecycle._make_sure_gone(request, stockout, None)
    assert err.value.code == "ALREADY_EXISTS" and "not falling back" in err.value.reason
    assert sandbox.fleet.nodes["europe-west4-a/demo-v5e-8"].state == "READY"


async def test_a_rate_limited_create_is_retried_and_not_fallen_back(
    lifecycle: LifecycleService, history: HistoryStore, sandbox: Sandbox
) -> None:
    sandbox.fleet.create_rate.per_minute, sandbox.fleet.create_rate.burst = 300.0, 1.0
    await lifecycle.create(CreateRequest("first", "us-central1-a", "v3-8"), wait=False)
    seen: list[Progress] = []
    outcome = await lifecycle.create(
        CreateRequest("second", "us-central1-a", "v3-8", spot=True, fallback_on_demand=True),
        seen.append,
    )
    assert outcome.node.state == "READY" and outcome.spot and not outcome.notes
    limited = [p for p in seen if p.state == "RATE LIMITED"]
    assert limited and limited[0].attempt == "spot"
    assert "Maximum number of CreateNode requests per minute" in limited[0].message
    assert not any(p.state == "FALLBACK" for p in seen)
    assert "retry" in [e.kind for e in history.events_for("us-central1-a", "second")]


async def test_an_unknown_type_reports_the_apis_reason_in_the_history(
    lifecycle: LifecycleService, history: HistoryStore
) -> None:
    with pytest.raises(FleetError) as err:
        await lifecycle.create(
            CreateRequest("big", "us-central2-b", "v4-128", "tpu-ubuntu2204-base")
        )
    assert err.value.code == "INVALID_ARGUMENT"
    assert "the accelerator v4-128 was not found in zone us-central2-b" in err.value.reason
    (event,) = [e for e in history.events_for("us-central2-b", "big") if e.kind == "failed"]
    assert "[INVALID_ARGUMENT/unknown_type]" in event.detail


async def test_without_a_version_each_generation_gets_its_runtime(
    lifecycle: LifecycleService,
) -> None:
    seen: list[Progress] = []
    outcome = await lifecycle.create(
        CreateRequest("v5e-default", "us-central1-a", "v5litepod-8"), seen.append, wait=False
    )
    assert outcome.node.runtime_version == "v2-alpha-tpuv5-lite"
    assert any("v2-alpha-tpuv5-lite (default for v5e)" in line for line in lines(seen))
    v5p = await lifecycle.create(CreateRequest("v5p-default", "us-east5-a", "v5p-8"), wait=False)
    assert v5p.node.runtime_version == "v2-alpha-tpuv5"


async def test_stopping_a_pod_is_refused_before_any_call(
    lifecycle: LifecycleService, remote: RemoteService, sandbox: Sandbox
) -> None:
    node = await remote.fleet.find_node("demo-v4-16")
    for verb in ("stop", "start"):
        with pytest.raises(FleetError) as err:
            await lifecycle.change(verb, node)
        assert err.value.code == "FAILED_PRECONDITION" and err.value.kind == "pod_stop"
        assert "TPU VM pods cannot be stopped" in err.value.reason
    assert sandbox.emulator.calls.get("StopNode", 0) == 0
    assert sandbox.emulator.calls.get("StartNode", 0) == 0
    assert (await remote.fleet.get_node("us-central2-b", "demo-v4-16")).state == "READY"
