"""The emulator's queued resources through the real google-cloud-tpu v2 client.

Shapes from `google.cloud.tpu_v2.types.QueuedResource`/`QueuedResourceState` (their docstrings
say what each state and field means) and the Cloud TPU docs "Manage queued resources".
"""

from __future__ import annotations

import asyncio

import pytest

from console.adapters.tpu_api import TpuApi
from console.models import QUEUE_PROGRESS, FleetError
from console.sandbox.runtime import Sandbox

ZONE = "us-central2-b"


async def _states_until(api: TpuApi, zone: str, name: str, final: str) -> list[str]:
    seen: list[str] = []
    for _ in range(400):  # a condition, not a sleep: the limit turns a hang into a failure
        state = (await api.get_queued_resource(zone, name)).state
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == final:
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} never reached {final}: {seen}")


async def test_a_request_goes_through_the_queue_to_active_with_its_node(
    api: TpuApi, sandbox: Sandbox
) -> None:
    await api.create_queued_resource(
        ZONE, "qr-one", "v4-8", "tpu-ubuntu2204-base", valid_for_s=6 * 3600
    )
    seen = await _states_until(api, ZONE, "qr-one", "ACTIVE")
    # In the docstrings' order, none skipped but CREATING (it may be over by the first look).
    assert [s for s in QUEUE_PROGRESS if s in seen] == seen
    assert seen[-4:] == ["ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"]
    qr = await api.get_queued_resource(ZONE, "qr-one")
    assert qr.valid_until_s == 6 * 3600 and qr.node_names == ("qr-one",)
    node = await api.get_node(ZONE, "qr-one")
    assert node.state == "READY" and node.queued_resource == "qr-one"
    assert not node.multislice_node


async def test_the_wire_shapes_are_the_v2_apis(api: TpuApi) -> None:
    raw = api.client
    failed = await raw.get_queued_resource(
        name="projects/tpuconsole-sandbox/locations/europe-west4-a/queuedResources/demo-queue-failed"
    )
    assert failed.state.state.name == "FAILED" and "failed_data" in failed.state
    assert failed.state.failed_data.error.code == 8
    assert "no more capacity" in failed.state.failed_data.error.message
    assert "spot" in failed and "guaranteed" not in failed
    assert failed.queueing_policy.valid_until_duration.total_seconds() == 6 * 3600
    multi = await raw.get_queued_resource(
        name=f"projects/tpuconsole-sandbox/locations/{ZONE}/queuedResources/demo-multislice"
    )
    spec = multi.tpu.node_spec[0]
    assert (
        spec.multislice_params.node_count == 2
        and spec.multislice_params.node_id_prefix == "demo-ms"
    )
    assert spec.node_id == ""  # a oneof with multislice_params (name_strategy)
    node = await raw.get_node(name=f"projects/tpuconsole-sandbox/locations/{ZONE}/nodes/demo-ms-1")
    assert node.queued_resource.endswith(f"/locations/{ZONE}/queuedResources/demo-multislice")
    assert node.multislice_node


async def test_the_default_fleet_has_a_failed_request_a_waiting_one_and_a_multislice_group(
    api: TpuApi,
) -> None:
    failed = await api.get_queued_resource("europe-west4-a", "demo-queue-failed")
    assert failed.state == "FAILED" and failed.tier == "spot" and failed.chips == 8
    waiting = await api.get_queued_resource("us-east5-a", "demo-queue-v5p")
    assert waiting.state == "WAITING_FOR_RESOURCES" and waiting.wait_bound() == "valid for 6h"
    group = await api.get_queued_resource(ZONE, "demo-multislice")
    assert group.state == "ACTIVE" and group.multislice
    assert group.node_names == ("demo-ms-0", "demo-ms-1")
    listed = [q.name for q in await api.list_queued_resources(ZONE)]
    assert listed == ["demo-multislice"]


async def test_preempting_a_queued_spot_node_suspends_the_request_by_the_service(
    api: TpuApi, sandbox: Sandbox
) -> None:
    sandbox.fleet.spot_chip_quota[ZONE] = 8  # room for the request beside demo-spot-v4-8
    await api.create_queued_resource(ZONE, "qr-spot", "v4-8", "tpu-ubuntu2204-base", tier="spot")
    await _states_until(api, ZONE, "qr-spot", "ACTIVE")
    sandbox.fleet.preempt(ZONE, "qr-spot")
    seen = await _states_until(api, ZONE, "qr-spot", "SUSPENDED")
    assert seen[0] == "SUSPENDING"
    qr = await api.get_queued_resource(ZONE, "qr-spot")
    assert qr.state_initiator == "SERVICE" and qr.reclaimed
    with pytest.raises(FleetError) as gone:
        await api.get_node(ZONE, "qr-spot")
    assert gone.value.code == "NOT_FOUND"
    # SUSPENDED still holds its 4 chips of the 8: no room for 4 more.
    with pytest.raises(FleetError) as refused:
        await api.create_node(ZONE, "more-spot", "v4-8", "tpu-ubuntu2204-base", spot=True)
    assert refused.value.kind == "quota"
    # A suspended request can be queued again (ResetQueuedResource).
    await api.wait_operation(await api.reset_queued_resource(ZONE, "qr-spot"), poll_s=0.05)
    await _states_until(api, ZONE, "qr-spot", "ACTIVE")


async def test_delete_without_force_is_refused_while_it_has_nodes_and_with_force_takes_them(
    api: TpuApi,
) -> None:
    with pytest.raises(FleetError) as refused:
        await api.delete_queued_resource(ZONE, "demo-multislice")
    assert refused.value.code == "FAILED_PRECONDITION" and "force" in refused.value.reason
    op = await api.delete_queued_resource(ZONE, "demo-multislice", force=True)
    assert (await api.get_node(ZONE, "demo-ms-0")).state == "DELETING"
    await api.wait_operation(op, poll_s=0.05)
    for name in ("demo-ms-0", "demo-ms-1"):
        with pytest.raises(FleetError):
            await api.get_node(ZONE, name)
    assert await api.list_queued_resources(ZONE) == []


async def test_a_failed_request_holds_spot_quota_until_it_is_deleted(api: TpuApi) -> None:
    zone = "europe-west4-a"
    with pytest.raises(FleetError) as refused:
        await api.create_node(zone, "spot-v6e", "v6e-8", "v2-alpha-tpuv6e", spot=True)
    assert "TPUV6EPreemptiblePerProjectPerRegionForTPUAPI" in refused.value.reason
    # FAILED: deletable without force (the `force` field's docstring).
    await api.wait_operation(
        await api.delete_queued_resource(zone, "demo-queue-failed"), poll_s=0.05
    )
    await api.wait_operation(
        await api.create_node(zone, "spot-v6e", "v6e-8", "v2-alpha-tpuv6e", spot=True), poll_s=0.05
    )


async def test_a_request_that_outwaits_its_bound_fails_with_the_reason(
    api: TpuApi, sandbox: Sandbox
) -> None:
    """europe-west4-a has no spot v5e capacity: the request waits, then its bound runs out."""
    zone = "europe-west4-a"
    await api.create_queued_resource(
        zone, "qr-wait", "v5litepod-4", "v2-alpha-tpuv5-lite", tier="spot", valid_for_s=2
    )
    seen = await _states_until(api, zone, "qr-wait", "FAILED")
    assert "WAITING_FOR_RESOURCES" in seen and "PROVISIONING" not in seen
    qr = await api.get_queued_resource(zone, "qr-wait")
    assert qr.error_code == 4 and "valid until" in qr.error_message
