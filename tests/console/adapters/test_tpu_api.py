"""The real google-cloud-tpu client against the sandbox's gRPC emulator."""

from __future__ import annotations

import grpc
import pytest

from console.adapters.tpu_api import CallPolicy, TpuApi, node_from_message
from console.models import FleetError
from console.sandbox.fleet_state import SandboxNode
from console.sandbox.runtime import Sandbox
from console.services.runtimes import default_runtime

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
                "us-east5-a",  # a zone without default nodes
                "v5p-8",
                "v2-alpha-tpuv5",
                "READY",
                sandbox.fleet.new_node_id(),
                0.0,
            )
        )
    before = sandbox.emulator.calls.get("ListNodes", 0)
    nodes = await api.list_nodes("us-east5-a", page_size=5)
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
        "us-central1-a", "spot-v5e", "v5litepod-8", "v2-alpha-tpuv5-lite", spot=True
    )
    await api.wait_operation(op, poll_s=0.05, timeout_s=10)
    sandbox.fleet.preempt("us-central1-a", "spot-v5e")
    node = await api.get_node("us-central1-a", "spot-v5e")
    assert node.state == "PREEMPTED" and node.spot
    assert any("preempted" in str(s) for s in node.symptoms)


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
    assert "demo-v4-8" in {n.name for n in nodes}
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
    zones = await api.list_zones()
    assert {"europe-west4-a", "us-central1-a", "us-central2-b", "asia-east1-c"} <= set(zones)
    assert zones == sorted(zones)


# ----- the API as Google answers it (issue 12) -----------------------------------------------


async def test_a_stockout_arrives_inside_the_operation_with_code_8_and_googles_text(
    api: TpuApi,
) -> None:
    """terraform-provider-google#10222: `Error code 8, message: There is no more capacity in
    the zone "us-central1-b"; you can try in another zone where Cloud TPU Nodes are offered
    (see https://cloud.google.com/tpu/docs/regions)` — after CreateNode was accepted."""
    op = await api.create_node(
        "europe-west4-a", "no-room", "v5litepod-8", "v2-alpha-tpuv5-lite", spot=True
    )
    assert (await api.get_node("europe-west4-a", "no-room")).state == "CREATING"
    with pytest.raises(FleetError) as err:
        await api.wait_operation(op, poll_s=0.05, timeout_s=10, what="Creating no-room")
    assert op.operation.error.code == 8  # on the wire, as Google sends it
    assert err.value.code == "RESOURCE_EXHAUSTED" and err.value.kind == "stockout"
    assert err.value.reason == (
        'Creating no-room: There is no more capacity in the zone "europe-west4-a"; you can try '
        "in another zone where Cloud TPU Nodes are offered "
        "(see https://cloud.google.com/tpu/docs/regions)"
    )
    assert "another zone" in err.value.remedy
    with pytest.raises(FleetError) as gone:  # the failed create leaves no node behind
        await api.get_node("europe-west4-a", "no-room")
    assert gone.value.code == "NOT_FOUND"


async def test_on_demand_in_the_stockout_zone_has_capacity(api: TpuApi) -> None:
    op = await api.create_node("europe-west4-a", "od-v5e", "v5litepod-8", "v2-alpha-tpuv5-lite")
    result = await api.wait_operation(op, poll_s=0.05, timeout_s=10)
    assert result.state.name == "READY"


async def test_an_unknown_type_is_refused_with_the_apis_reason(api: TpuApi) -> None:
    """skypilot#3840: `Cloud TPU received a bad request. the accelerator v4-128 was not found in
    zone us-central2-b`; SkyPilot's code shows it answers CreateNode itself (HTTP 400)."""
    with pytest.raises(FleetError) as err:
        await api.create_node(ZONE, "too-big", "v4-128", "tpu-ubuntu2204-base")
    assert err.value.code == "INVALID_ARGUMENT" and err.value.kind == "unknown_type"
    assert "the accelerator v4-128 was not found in zone us-central2-b" in err.value.reason
    assert "Choose a type the zone offers" in err.value.remedy


async def test_a_rate_limited_create_is_retried_with_backoff(sandbox: Sandbox, api: TpuApi) -> None:
    """marin-community/marin#6198: "Maximum number of CreateNode requests per minute"."""
    sandbox.fleet.create_rate.per_minute, sandbox.fleet.create_rate.burst = 600.0, 1.0
    await api.create_node("us-central1-a", "first", "v3-8", "tpu-ubuntu2204-base")
    heard: list[FleetError] = []
    before = sandbox.emulator.calls["CreateNode"]
    op = await api.create_node(
        "us-central1-a", "second", "v3-8", "tpu-ubuntu2204-base", on_retry=heard.append
    )
    assert op.operation.name
    assert heard and all(e.kind == "rate_limit" for e in heard)
    assert "Maximum number of CreateNode requests per minute" in heard[0].reason
    assert sandbox.emulator.calls["CreateNode"] - before == len(heard) + 1


async def test_a_rate_limit_that_lasts_gives_up_as_a_rate_limit(
    sandbox: Sandbox, api: TpuApi
) -> None:
    sandbox.fleet.create_rate.per_minute, sandbox.fleet.create_rate.burst = 0.001, 1.0
    await api.create_node("us-central1-a", "first", "v3-8", "tpu-ubuntu2204-base")
    api.policy = CallPolicy(rate_initial_s=0.01, rate_max_s=0.02, rate_total_s=0.2)
    with pytest.raises(FleetError) as err:
        await api.create_node("us-central1-a", "second", "v3-8", "tpu-ubuntu2204-base")
    assert err.value.code == "RESOURCE_EXHAUSTED" and err.value.kind == "rate_limit"
    assert "still rate-limited" in err.value.reason and "wait a minute" in err.value.remedy


async def test_the_api_refuses_to_stop_a_pod_and_it_stays_ready(api: TpuApi) -> None:
    with pytest.raises(FleetError) as err:
        await api.stop_node(ZONE, "demo-v4-16")
    assert err.value.code == "FAILED_PRECONDITION"
    assert "TPU VM pods cannot be stopped" in err.value.reason
    assert (await api.get_node(ZONE, "demo-v4-16")).state == "READY"


async def test_a_zone_without_tpu_access_answers_permission_denied(api: TpuApi) -> None:
    with pytest.raises(FleetError) as err:
        await api.list_nodes("asia-east1-c")
    assert err.value.code == "PERMISSION_DENIED"
    assert err.value.reason.endswith(
        "Permission 'tpu.nodes.list' denied on "
        "'projects/tpuconsole-sandbox/locations/asia-east1-c/nodes'"
    )


async def test_runtime_versions_and_quota_names_are_per_generation(api: TpuApi) -> None:
    assert "v2-alpha-tpuv5" in await api.runtime_versions("us-east5-a")
    assert "tpu-ubuntu2204-base" not in await api.runtime_versions("us-east5-a")
    europe = await api.runtime_versions("europe-west4-a")
    assert {"v2-alpha-tpuv5-lite", "v2-alpha-tpuv6e"} <= set(europe)
    assert "tpu-vm-v4-base" not in europe


async def test_spot_quota_refusals_name_each_generations_metric(
    sandbox: Sandbox, api: TpuApi
) -> None:
    """Metric names as the API quotes them (marin-community/marin#87 and #1612)."""
    for zone, kind, version, metric in [
        (
            "europe-west4-a",
            "v6e-8",
            "v2-alpha-tpuv6e",
            "TPUV6EPreemptiblePerProjectPerRegionForTPUAPI",
        ),
        (
            "us-central1-a",
            "v5litepod-8",
            "v2-alpha-tpuv5-lite",
            "TPUV5sPreemptibleLitepodPerProjectPerRegionForTPUAPI",
        ),
    ]:
        sandbox.fleet.spot_chip_quota[zone] = 0
        version = default_runtime(kind)  # a version the zone lists: the quota is what refuses
        with pytest.raises(FleetError) as err:
            await api.create_node(zone, "spotty", kind, version, spot=True)
        region = zone.rsplit("-", 1)[0]
        assert err.value.reason.endswith(
            f"Quota limit '{metric}' has been exceeded. Limit: 0 in region {region}."
        )
        assert err.value.kind == "quota" and metric in err.value.remedy


async def test_the_fields_an_operator_looks_for_are_read(api: TpuApi) -> None:
    reserved = await api.get_node(ZONE, "demo-reserved-v4-8")
    assert reserved.reserved and reserved.provisioning == "reserved"
    assert reserved.api_version == "V2"
    assert reserved.network == "projects/tpuconsole-sandbox/global/networks/default"
    assert reserved.subnetwork.endswith("/regions/us-central2/subnetworks/default")
    assert reserved.external_ips is True
    assert reserved.service_account.endswith("-compute@developer.gserviceaccount.com")
    assert reserved.service_account_scopes == ("https://www.googleapis.com/auth/cloud-platform",)
    timeout = await api.get_node("us-central1-a", "demo-v5e-timeout")
    assert timeout.health == "TIMEOUT" and timeout.needs_attention


async def test_a_state_newer_than_the_client_is_listed_as_its_number(api: TpuApi) -> None:
    nodes = {n.name: n for n in await api.list_nodes("europe-west4-a")}
    assert nodes["demo-v6e-next"].state == "17"
    assert nodes["demo-v6e-next"].needs_attention


def test_unknown_enums_config_shapes_disks_and_worker_symptoms_from_a_message() -> None:
    """A Node message as the API could send it: enum values past the client's, no
    acceleratorType but an acceleratorConfig, a data disk, a symptom on one worker."""
    from google.cloud import tpu_v2

    msg = tpu_v2.Node(
        name="projects/p/locations/us-central2-b/nodes/cfg",
        accelerator_config=tpu_v2.AcceleratorConfig(
            type_=tpu_v2.AcceleratorConfig.Type.V4, topology="2x2x2"
        ),
        data_disks=[
            tpu_v2.AttachedDisk(
                source_disk="projects/p/zones/us-central2-b/disks/data",
                mode=tpu_v2.AttachedDisk.DiskMode.READ_ONLY,
            )
        ],
        symptoms=[tpu_v2.Symptom(details="HBM out of memory", worker_id="1")],
        metadata={"startup-script": "echo hi"},
        tags=["tpu", "ssh"],
    )
    pb = tpu_v2.Node.pb(msg)
    pb.health, pb.state, pb.symptoms[0].symptom_type = 9, 2, 40
    node = node_from_message(tpu_v2.Node.deserialize(tpu_v2.Node.serialize(msg)))
    assert (node.accelerator_type, node.type_from_config) == ("v4-16", True)
    assert (node.shape.chips, node.hosts, node.multi_host) == (8, 2, True)
    assert node.health == "9" and node.needs_attention
    assert node.data_disks[0].mode == "READ_ONLY"
    assert str(node.symptoms[0]) == "worker 1: HBM out of memory"
    assert node.symptoms[0].kind == "40"
    assert node.metadata == {"startup-script": "echo hi"} and node.tags == ("tpu", "ssh")
    assert node.api_version == "" and not node.legacy
