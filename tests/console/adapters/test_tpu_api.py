"""The real google-cloud-tpu client against the sandbox's gRPC emulator."""

from __future__ import annotations

import grpc
import pytest

from console.adapters.tpu_api import TpuApi
from console.models import FleetError
from console.sandbox.fleet_state import SandboxNode
from console.sandbox.runtime import Sandbox

ZONE = "us-central2-b"


async def test_default_fleet_lists_with_states_and_provisioning(api: TpuApi) -> None:
    nodes = {n.name: n for n in await api.list_nodes(ZONE)}
    assert {"demo-v4-8", "demo-v4-16", "demo-spot-v4-8", "demo-v3-8"} <= set(nodes)
    assert nodes["demo-v4-8"].state == "READY" and nodes["demo-v4-8"].health == "HEALTHY"
    assert nodes["demo-spot-v4-8"].state == "PREEMPTED" and nodes["demo-spot-v4-8"].spot
    assert nodes["demo-v3-8"].accelerator_version == "v3"
    assert len(nodes["demo-v4-16"].workers) == 2
    assert nodes["demo-v4-16"].labels == {"team": "rl"}
    assert nodes["demo-v4-16"].create_time is not None
    v5e = {n.name: n for n in await api.list_nodes("europe-west4-a")}["demo-v5e-8"]
    assert (v5e.name, v5e.accelerator_version, v5e.shape.device_kind) == (
        "demo-v5e-8",
        "v5e",
        "vfio",
    )


async def test_listing_follows_pages_to_the_last_node(sandbox: Sandbox, api: TpuApi) -> None:
    for i in range(23):
        sandbox.fleet.add_node(
            SandboxNode(
                f"bulk-{i:02d}",
                "us-central1-a",
                "v3-8",
                "tpu-vm-tf-2.16.1-pjrt",
                "READY",
                sandbox.fleet.new_node_id(),
                0.0,
            )
        )
    before = sandbox.emulator.calls.get("ListNodes", 0)
    nodes = await api.list_nodes("us-central1-a", page_size=5)
    assert [n.name for n in nodes] == [f"bulk-{i:02d}" for i in range(23)]
    assert sandbox.emulator.calls["ListNodes"] - before == 5  # 5+5+5+5+3


async def test_missing_node_is_a_not_found_error_with_a_remedy(api: TpuApi) -> None:
    with pytest.raises(FleetError) as err:
        await api.get_node(ZONE, "no-such-node")
    assert err.value.code == "NOT_FOUND"
    assert "no-such-node" in err.value.reason
    assert "refresh" in err.value.remedy


async def test_create_goes_from_creating_to_ready_through_the_operation(api: TpuApi) -> None:
    op = await api.create_node("us-central1-a", "fresh-v3", "v3-8", "tpu-ubuntu2204-base")
    assert (await api.get_node("us-central1-a", "fresh-v3")).state == "CREATING"
    assert op.operation.name.startswith("projects/tpuconsole-sandbox/locations/us-central1-a/")
    result = await api.wait_operation(op, poll_s=0.05, timeout_s=10)
    assert result.state.name == "READY"
    node = await api.get_node("us-central1-a", "fresh-v3")
    assert node.state == "READY" and node.health == "HEALTHY"
    assert node.workers[0].external_ip and node.workers[0].runtime_port == 8470


async def test_spot_create_beyond_quota_names_the_exhausted_quota(api: TpuApi) -> None:
    with pytest.raises(FleetError) as err:
        await api.create_node(ZONE, "more-spot", "v4-8", "tpu-ubuntu2204-base", spot=True)
    assert err.value.code == "RESOURCE_EXHAUSTED"
    assert "TPUV4sPreemptiblePodPerProjectPerRegionForTPUAPI" in err.value.reason
    assert "on-demand" in err.value.remedy


async def test_a_spot_node_can_be_preempted(sandbox: Sandbox, api: TpuApi) -> None:
    op = await api.create_node(
        "europe-west4-a", "spot-v5e", "v5litepod-8", "v2-alpha-tpuv5-lite", spot=True
    )
    await api.wait_operation(op, poll_s=0.05, timeout_s=10)
    sandbox.fleet.preempt("europe-west4-a", "spot-v5e")
    node = await api.get_node("europe-west4-a", "spot-v5e")
    assert node.state == "PREEMPTED" and node.spot
    assert any("preempted" in s for s in node.symptoms)


async def test_stop_start_and_delete_run_to_their_end_states(api: TpuApi) -> None:
    await api.wait_operation(await api.stop_node(ZONE, "demo-v4-8"), poll_s=0.05)
    assert (await api.get_node(ZONE, "demo-v4-8")).state == "STOPPED"
    await api.wait_operation(await api.start_node(ZONE, "demo-v4-8"), poll_s=0.05)
    assert (await api.get_node(ZONE, "demo-v4-8")).state == "READY"
    await api.wait_operation(await api.delete_node(ZONE, "demo-v4-8"), poll_s=0.05)
    with pytest.raises(FleetError):
        await api.get_node(ZONE, "demo-v4-8")


async def test_starting_a_ready_node_is_refused_with_the_reason(api: TpuApi) -> None:
    with pytest.raises(FleetError) as err:
        await api.start_node(ZONE, "demo-v4-8")
    assert err.value.code == "FAILED_PRECONDITION" and "READY" in err.value.reason


async def test_unavailable_twice_is_survived_by_retries(sandbox: Sandbox, api: TpuApi) -> None:
    sandbox.faults.inject("ListNodes", grpc.StatusCode.UNAVAILABLE, zone=ZONE, times=2)
    before = sandbox.emulator.calls.get("ListNodes", 0)
    nodes = await api.list_nodes(ZONE)
    assert "demo-v4-16" in {n.name for n in nodes}
    assert sandbox.emulator.calls["ListNodes"] - before == 3


async def test_lasting_unavailability_gives_up_with_a_clear_error(
    sandbox: Sandbox, api: TpuApi
) -> None:
    sandbox.faults.inject("GetNode", grpc.StatusCode.UNAVAILABLE, times=None)
    with pytest.raises(FleetError) as err:
        await api.get_node(ZONE, "demo-v4-8")
    assert "gave up after retries" in err.value.reason
    assert "network" in err.value.remedy


async def test_accelerator_types_runtime_versions_and_zones(api: TpuApi) -> None:
    types = [t.name for t in await api.accelerator_types(ZONE)]
    assert "v4-16" in types
    assert "tpu-ubuntu2204-base" in await api.runtime_versions(ZONE)
    assert await api.list_zones() == ["europe-west4-a", "us-central1-a", "us-central2-b"]
