"""The fleet across zones, listed concurrently; a failing zone is reported, not hidden."""

from __future__ import annotations

import grpc

from console.sandbox.runtime import Sandbox
from tests.conftest import DEFAULT_NODES, fleet_for


async def test_all_zones_are_listed_and_sorted(sandbox: Sandbox) -> None:
    fleet = fleet_for(sandbox)
    try:
        snap = await fleet.list_nodes()
    finally:
        await fleet.close()
    assert snap.zones == ("europe-west4-a", "us-central1-a", "us-central2-b")
    keys = [n.key for n in snap.nodes]
    assert keys == sorted(keys)
    assert {
        "europe-west4-a/demo-v5e-8",
        "us-central2-b/demo-spot-v4-8",
        "us-central2-b/demo-v3-8",
        "us-central2-b/demo-v4-16",
        "us-central2-b/demo-v4-8",
    } <= set(keys)
    assert snap.unreachable == ()


async def test_a_failing_zone_is_unreachable_while_the_others_still_list(
    sandbox: Sandbox,
) -> None:
    sandbox.faults.inject(
        "ListNodes",
        grpc.StatusCode.PERMISSION_DENIED,
        zone="europe-west4-a",
        times=None,
        message="TPU API disabled",
    )
    fleet = fleet_for(sandbox)
    try:
        snap = await fleet.list_nodes()
    finally:
        await fleet.close()
    assert [f.zone for f in snap.unreachable] == ["europe-west4-a"]
    assert "TPU API disabled" in snap.unreachable[0].reason
    assert "roles/tpu.viewer" in snap.unreachable[0].remedy
    assert {n.key for n in snap.nodes} == {
        k for k in DEFAULT_NODES if not k.startswith("europe-west4-a/")
    }


async def test_configured_zones_limit_the_listing(sandbox: Sandbox) -> None:
    fleet = fleet_for(sandbox, zones=("europe-west4-a",))
    try:
        snap = await fleet.list_nodes()
    finally:
        await fleet.close()
    assert [n.name for n in snap.nodes] == ["demo-v5e-8"]
    assert sandbox.emulator.calls.get("ListLocations", 0) == 0
