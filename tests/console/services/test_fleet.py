"""The fleet across zones, listed concurrently; a failing zone is reported, not hidden."""

from __future__ import annotations

import grpc

from console.adapters.tpu_api import TpuApi
from console.sandbox.fleet_state import SANDBOX_PROJECT, SandboxNode
from console.sandbox.runtime import Sandbox
from console.services.fleet import FleetService
from tests.conftest import DEFAULT_NODES, QUICK_POLICY, fleet_for


async def test_all_zones_are_listed_and_sorted(sandbox: Sandbox) -> None:
    fleet = fleet_for(sandbox)
    try:
        snap = await fleet.list_nodes()
    finally:
        await fleet.close()
    assert {"europe-west4-a", "us-central1-a", "us-central2-b"} <= set(snap.zones)
    keys = [n.key for n in snap.nodes]
    assert keys == list(DEFAULT_NODES)  # sorted by zone, then name
    assert snap.unreachable == ()


async def test_a_failing_zone_is_unreachable_while_the_others_still_list(
    sandbox: Sandbox,
) -> None:
    sandbox.faults.inject(
        "ListNodes",
        grpc.StatusCode.UNAVAILABLE,
        zone="europe-west4-a",
        times=None,
        message="TPU API down",
    )
    fleet = fleet_for(sandbox)
    try:
        snap = await fleet.list_nodes()
    finally:
        await fleet.close()
    assert [f.zone for f in snap.unreachable] == ["europe-west4-a"]
    assert "TPU API down" in snap.unreachable[0].reason
    assert {n.key for n in snap.nodes} == {
        k for k in DEFAULT_NODES if not k.startswith("europe-west4-a/")
    }


async def test_configured_zones_limit_the_listing(sandbox: Sandbox) -> None:
    fleet = fleet_for(sandbox, zones=("europe-west4-a",))
    try:
        snap = await fleet.list_nodes()
    finally:
        await fleet.close()
    assert "demo-v5e-8" in [n.name for n in snap.nodes]
    assert {n.zone for n in snap.nodes} == {"europe-west4-a"}
    assert sandbox.emulator.calls.get("ListLocations", 0) == 0


async def test_a_discovered_zone_without_access_is_summarised_and_rarely_asked(
    sandbox: Sandbox,
) -> None:
    now = [1000.0]
    fleet = FleetService(
        lambda: TpuApi.for_sandbox(sandbox.api_address, SANDBOX_PROJECT, QUICK_POLICY),
        clock=lambda: now[0],
        recheck_s=600,
    )
    try:
        first = await fleet.list_nodes()
        assert first.unreachable == ()
        assert first.no_access == ("asia-east1-c",)
        assert "asia-east1-c" not in first.zones
        assert (
            first.access_summary()
            == f"TPU access in {len(first.zones)} of {len(first.zones) + 1} zones"
        )
        calls = sandbox.emulator.calls["ListNodes"]
        now[0] += 10  # the next refresh does not ask it again
        second = await fleet.list_nodes()
        assert sandbox.emulator.calls["ListNodes"] - calls == len(second.zones)
        assert second.no_access == ("asia-east1-c",)
        calls = sandbox.emulator.calls["ListNodes"]
        now[0] += 601  # ...until the re-check is due
        sandbox.fleet.no_access_zones = ()  # access was granted meanwhile
        third = await fleet.list_nodes()
        assert sandbox.emulator.calls["ListNodes"] - calls == len(second.zones) + 1
        assert third.no_access == () and "asia-east1-c" in third.zones
    finally:
        await fleet.close()


async def test_a_configured_zone_without_access_is_a_failure(sandbox: Sandbox) -> None:
    fleet = fleet_for(sandbox, zones=("asia-east1-c", "us-central2-b"))
    try:
        snap = await fleet.list_nodes()
    finally:
        await fleet.close()
    assert [f.zone for f in snap.unreachable] == ["asia-east1-c"]
    assert snap.unreachable[0].code == "PERMISSION_DENIED"
    assert "roles/tpu.viewer" in snap.unreachable[0].remedy
    assert snap.no_access == ()


async def test_when_no_zone_grants_access_every_zone_is_a_failure(sandbox: Sandbox) -> None:
    sandbox.faults.inject(
        "ListNodes", grpc.StatusCode.PERMISSION_DENIED, times=None, message="TPU API disabled"
    )
    fleet = fleet_for(sandbox)
    try:
        snap = await fleet.list_nodes()
    finally:
        await fleet.close()
    assert snap.no_access == ()
    assert {f.zone for f in snap.unreachable} == set(snap.zones)
    assert "TPU API disabled" in snap.unreachable[0].reason


async def test_legacy_v1_tpu_nodes_are_left_out_as_gcloud_does(sandbox: Sandbox) -> None:
    """gcloud's FilterTPUVMNodes drops nodes whose apiVersion starts with V1."""
    sandbox.fleet.add_node(
        SandboxNode(
            "old-tpu-node",
            "us-central2-b",
            "v4-8",
            "tpu-vm-tf-2.16.1-pjrt",
            "READY",
            sandbox.fleet.new_node_id(),
            0.0,
            api_version="V1",
        )
    )
    fleet = fleet_for(sandbox)
    try:
        snap = await fleet.list_nodes()
    finally:
        await fleet.close()
    assert "old-tpu-node" not in {n.name for n in snap.nodes}
    assert snap.legacy == ("us-central2-b/old-tpu-node",)
