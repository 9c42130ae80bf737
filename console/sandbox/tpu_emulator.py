"""A gRPC emulator of the Cloud TPU v2 API and its long-running operations, on loopback.

The console's real `TpuAsyncClient` talks to it unchanged, so every call the console makes in the
sandbox goes through the same client, serialisation and retry code as against Google Cloud.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
from google.cloud.location import locations_pb2
from google.cloud.tpu_v2.types import cloud_tpu
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.rpc import status_pb2

from console.sandbox.fleet_state import (
    SANDBOX_PROJECT,
    SANDBOX_PROJECT_NUMBER,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NoAccess,
    NotFound,
    QuotaExceeded,
    RateLimited,
    SandboxFleet,
    SandboxNode,
    SandboxOperation,
    UnknownLocation,
    check_labels,
    loopback,
)
from console.sandbox.queued_resources import from_request, queued_resource_message

DEFAULT_PAGE_SIZE = 50
# The TPU runtime's port, on every endpoint of every real node (PerfKitBenchmarker's and other
# public fixtures: {"ipAddress": "10.0.0.1", "accessConfig": {...}, "port": 8470}). Not ssh.
RUNTIME_PORT = 8470
HostKeys = Callable[[SandboxNode, int], dict[str, str]]
# A worker's (external, internal) address, as the sandbox placed its sshd.
WorkerAddress = Callable[[SandboxNode, int], tuple[str, str]]


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Fault:
    method: str
    code: grpc.StatusCode
    zone: str = ""
    times: int | None = 1  # None: until cleared
    message: str = "injected by the sandbox"


@dataclass
class FaultPlan:
    """Errors to return instead of answering, so tests see the client's retries and our banners."""

    faults: list[Fault] = field(default_factory=list)
    latency_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(
        self,
        method: str,
        code: grpc.StatusCode,
        *,
        zone: str = "",
        times: int | None = 1,
        message: str = "injected by the sandbox",
    ) -> None:
        with self._lock:
            self.faults.append(Fault(method, code, zone, times, message))

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def take(self, method: str, zone: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method == method and fault.zone in ("", zone):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    return fault
        return None


def _parse(name: str, *, expect: str) -> tuple[str, str]:
    """Split `projects/P/locations/Z[/nodes/N]` into (zone, node or "")."""
    parts = name.split("/")
    if len(parts) < 4 or parts[0] != "projects" or parts[2] != "locations":
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed resource name {name!r}.")
    if parts[1] != SANDBOX_PROJECT:
        raise _Abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"Permission denied on project {parts[1]!r} (the sandbox serves {SANDBOX_PROJECT}).",
        )
    rest = parts[4:]
    if expect == "queuedResource":
        if len(rest) != 2 or rest[0] != "queuedResources":
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"Expected a queued resource name, got {name!r}."
            )
        return parts[3], rest[1]
    if expect == "node":
        if len(rest) != 2 or rest[0] != "nodes":
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"Expected a node name, got {name!r}.")
        return parts[3], rest[1]
    return parts[3], ""


def _timestamp(epoch: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime.fromtimestamp(epoch, tz=UTC))
    return ts


class TpuEmulator:
    """Serves `google.cloud.tpu.v2.Tpu`, `google.longrunning.Operations` and Locations."""

    def __init__(
        self,
        fleet: SandboxFleet,
        *,
        worker_address: WorkerAddress | None = None,
        host_keys: HostKeys | None = None,
    ) -> None:
        self.fleet = fleet
        self.faults = FaultPlan()
        self.worker_address = worker_address or (
            lambda node, w: (loopback(node.node_id, w, -1), loopback(node.node_id, w, 0))
        )
        self.host_keys = host_keys or (lambda node, w: {})
        # More gRPC services on the same server (OS Login): name -> methods, as in handlers().
        self.services: dict[str, dict[str, tuple]] = {}
        self.calls: dict[str, int] = {}
        self._server: grpc.aio.Server | None = None
        self.address = ""

    # ----- conversions -------------------------------------------------------------------------
    def endpoints(self, node: SandboxNode) -> list[cloud_tpu.NetworkEndpoint]:
        """Every network's endpoint of worker 0, then of worker 1, ...: gcloud takes every
        `len(networkConfigs)`-th as a worker. Only the first network has an external IP."""
        reachable = node.state in {"READY", "CREATING", "STARTING", "STOPPING"}
        out = []
        for w in range(node.hosts):
            external, internal = self.worker_address(node, w)
            for nic in range(node.networks):
                out.append(
                    cloud_tpu.NetworkEndpoint(
                        ip_address=internal if nic == 0 else loopback(node.node_id, w, nic),
                        port=RUNTIME_PORT,
                        access_config=cloud_tpu.AccessConfig(
                            external_ip=external if reachable and nic == 0 else ""
                        ),
                    )
                )
        return out

    def network_configs(self, node: SandboxNode) -> list[cloud_tpu.NetworkConfig]:
        base = f"projects/{SANDBOX_PROJECT}"
        return [
            cloud_tpu.NetworkConfig(
                network=f"{base}/global/networks/{'default' if k == 0 else f'net-{k}'}",
                subnetwork=f"{base}/regions/{node.zone.rsplit('-', 1)[0]}/subnetworks/"
                + ("default" if k == 0 else f"net-{k}"),
                enable_external_ips=k == 0,
            )
            for k in range(node.networks)
        ]

    def node_message(self, node: SandboxNode) -> cloud_tpu.Node:
        """A node as the API publishes it (fields as `gcloud ... describe` shows a TPU VM)."""
        endpoints = self.endpoints(node)
        msg = cloud_tpu.Node(
            name=f"projects/{SANDBOX_PROJECT}/locations/{node.zone}/nodes/{node.name}",
            description=node.description,
            accelerator_type=node.accelerator_type,
            runtime_version=node.runtime_version,
            scheduling_config=cloud_tpu.SchedulingConfig(
                spot=node.spot, preemptible=node.preemptible, reserved=node.reserved
            ),
            network_endpoints=endpoints,
            # The default compute service account, as `gcloud compute tpus tpu-vm create`
            # gives a TPU VM without --service-account.
            service_account=cloud_tpu.ServiceAccount(
                email=f"{SANDBOX_PROJECT_NUMBER}-compute@developer.gserviceaccount.com",
                scope=["https://www.googleapis.com/auth/cloud-platform"],
            ),
            tags=node.tags,
            api_version=getattr(cloud_tpu.Node.ApiVersion, node.api_version),
            labels=node.labels,
            metadata=node.metadata,
            id=node.node_id,
            symptoms=[
                cloud_tpu.Symptom(
                    symptom_type=cloud_tpu.Symptom.SymptomType.LOW_MEMORY
                    if "memory" in s.lower()
                    else 0,
                    details=s,
                )
                for s in node.symptoms
            ],
        )
        if node.state.isdigit():  # a state newer than the client: its number goes on the wire
            cloud_tpu.Node.pb(msg).state = int(node.state)
        else:
            msg.state = getattr(cloud_tpu.Node.State, node.state)
        if node.networks > 1:  # the v2 Node's repeated `network_configs`, one per network
            msg.network_configs = self.network_configs(node)
        else:
            msg.network_config = self.network_configs(node)[0]
        if node.health:
            msg.health = getattr(cloud_tpu.Node.Health, node.health)
        if node.queued_resource:  # Node.queued_resource: "the QueuedResource that requested it"
            msg.queued_resource = (
                f"projects/{SANDBOX_PROJECT}/locations/{node.zone}/queuedResources/"
                f"{node.queued_resource}"
            )
            msg.multislice_node = node.multislice
        msg.create_time = datetime.fromtimestamp(node.create_time, tz=UTC)
        return msg

    def operation_message(self, op: SandboxOperation) -> operations_pb2.Operation:
        meta = cloud_tpu.OperationMetadata(
            target=f"projects/{SANDBOX_PROJECT}/locations/{op.zone}/{op.resource}/{op.node_name}",
            verb=op.verb,
            api_version="v2",
        )
        meta_pb = cloud_tpu.OperationMetadata.pb(meta)
        meta_pb.create_time.CopyFrom(_timestamp(op.create_time))
        if op.end_time:
            meta_pb.end_time.CopyFrom(_timestamp(op.end_time))
        result = operations_pb2.Operation(name=op.name, done=bool(op.end_time))
        result.metadata.Pack(meta_pb)
        if op.error:  # an error inside the operation keeps its code (8 for a stockout)
            result.error.CopyFrom(status_pb2.Status(code=op.error_code, message=op.error))
        elif op.end_time:
            payload = any_pb2.Any()
            if op.verb == "delete":
                payload.Pack(empty_pb2.Empty())
            elif op.resource == "queuedResources":  # create and reset answer the request
                qr = self.fleet.queued.get(f"{op.zone}/{op.node_name}")
                if qr is not None:
                    message = queued_resource_message(qr, SANDBOX_PROJECT)
                    payload.Pack(cloud_tpu.QueuedResource.pb(message))
            else:
                node = self.fleet.nodes.get(f"{op.zone}/{op.node_name}")
                if node is not None:
                    payload.Pack(cloud_tpu.Node.pb(self.node_message(node)))
            result.response.CopyFrom(payload)
        return result

    # ----- the Tpu service ---------------------------------------------------------------------
    def _access(self, name: str, permission: str, *, expect: str) -> tuple[str, str]:
        """Parse a resource name, refusing it as Google does in a zone without TPU access."""
        zone, node = _parse(name, expect=expect)
        self.fleet.check_access(zone, permission, name)
        return zone, node

    def list_nodes(self, req: cloud_tpu.ListNodesRequest) -> cloud_tpu.ListNodesResponse:
        zone, _ = self._access(f"{req.parent}/nodes", "tpu.nodes.list", expect="parent")
        nodes = self.fleet.list(zone)
        start = int(req.page_token or 0)
        size = req.page_size or DEFAULT_PAGE_SIZE
        page = nodes[start : start + size]
        token = str(start + size) if start + size < len(nodes) else ""
        return cloud_tpu.ListNodesResponse(
            nodes=[self.node_message(n) for n in page], next_page_token=token
        )

    def get_node(self, req: cloud_tpu.GetNodeRequest) -> cloud_tpu.Node:
        zone, name = self._access(req.name, "tpu.nodes.get", expect="node")
        return self.node_message(self.fleet.get(zone, name))

    def create_node(self, req: cloud_tpu.CreateNodeRequest) -> operations_pb2.Operation:
        zone, _ = self._access(f"{req.parent}/nodes", "tpu.nodes.create", expect="parent")
        if not req.node_id:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id is required.")
        sched = req.node.scheduling_config
        op = self.fleet.create(
            zone,
            req.node_id,
            req.node.accelerator_type,
            req.node.runtime_version or "tpu-ubuntu2204-base",
            spot=sched.spot,
            preemptible=sched.preemptible,
            labels=dict(req.node.labels),
            description=req.node.description,
            metadata=dict(req.node.metadata),
            networks=len(req.node.network_configs),
        )
        return self.operation_message(op)

    def update_node(self, req: cloud_tpu.UpdateNodeRequest) -> operations_pb2.Operation:
        """Only the paths named in `update_mask` change; the API refuses an empty mask."""
        zone, name = _parse(req.node.name, expect="node")
        paths = list(req.update_mask.paths)
        if not paths:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "update_mask must name a field.")
        unknown = sorted(set(paths) - {"metadata", "labels", "description"})
        if unknown:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"Cannot update field(s) {', '.join(unknown)}."
            )
        node = self.fleet.get(zone, name)
        if "labels" in paths:
            check_labels(dict(req.node.labels))
            node.labels = dict(req.node.labels)
        if "description" in paths:
            node.description = req.node.description
        metadata = dict(req.node.metadata) if "metadata" in paths else dict(node.metadata)
        return self.operation_message(self.fleet.update_metadata(zone, name, metadata))

    def _node_verb(self, verb: str, name: str) -> operations_pb2.Operation:
        zone, node = self._access(name, f"tpu.nodes.{verb}", expect="node")
        op = getattr(self.fleet, verb)(zone, node)
        return self.operation_message(op)

    # ----- queued resources ----------------------------------------------------------------------
    def list_queued_resources(
        self, req: cloud_tpu.ListQueuedResourcesRequest
    ) -> cloud_tpu.ListQueuedResourcesResponse:
        zone, _ = self._access(
            f"{req.parent}/queuedResources", "tpu.queuedresources.list", expect="parent"
        )
        found = self.fleet.list_queued(zone)
        start = int(req.page_token or 0)
        size = req.page_size or DEFAULT_PAGE_SIZE
        token = str(start + size) if start + size < len(found) else ""
        return cloud_tpu.ListQueuedResourcesResponse(
            queued_resources=[
                queued_resource_message(q, SANDBOX_PROJECT) for q in found[start : start + size]
            ],
            next_page_token=token,
        )

    def get_queued_resource(
        self, req: cloud_tpu.GetQueuedResourceRequest
    ) -> cloud_tpu.QueuedResource:
        zone, name = self._access(req.name, "tpu.queuedresources.get", expect="queuedResource")
        return queued_resource_message(self.fleet.get_queued(zone, name), SANDBOX_PROJECT)

    def create_queued_resource(
        self, req: cloud_tpu.CreateQueuedResourceRequest
    ) -> operations_pb2.Operation:
        zone, _ = self._access(
            f"{req.parent}/queuedResources", "tpu.queuedresources.create", expect="parent"
        )
        specs = list(req.queued_resource.tpu.node_spec)
        if len(specs) != 1:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, "Exactly one tpu.node_spec is supported."
            )
        multi = specs[0].multislice_params if "multislice_params" in specs[0] else None
        if multi is not None and multi.node_count < 2:  # MultisliceParams: "needs to be > 1"
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "node_count needs to be > 1.")
        qr = from_request(req, zone, time.time())
        return self.operation_message(self.fleet.create_queued(qr))

    def delete_queued_resource(
        self, req: cloud_tpu.DeleteQueuedResourceRequest
    ) -> operations_pb2.Operation:
        zone, name = self._access(req.name, "tpu.queuedresources.delete", expect="queuedResource")
        return self.operation_message(self.fleet.delete_queued(zone, name, force=req.force))

    def reset_queued_resource(
        self, req: cloud_tpu.ResetQueuedResourceRequest
    ) -> operations_pb2.Operation:
        zone, name = self._access(req.name, "tpu.queuedresources.reset", expect="queuedResource")
        return self.operation_message(self.fleet.reset_queued(zone, name))

    def get_guest_attributes(
        self, req: cloud_tpu.GetGuestAttributesRequest
    ) -> cloud_tpu.GetGuestAttributesResponse:
        zone, name = _parse(req.name, expect="node")
        node = self.fleet.get(zone, name)
        if node.state != "READY":
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Node {name} is {node.state}; guest attributes need a running VM.",
            )
        wanted = {int(w) for w in req.worker_ids if w != ""} or set(range(node.hosts))
        namespace, _, only_key = req.query_path.partition("/")
        out = []
        for w in sorted(wanted):
            items = [
                entry
                for entry in self.guest_attributes(node, w)
                if (not req.query_path or entry.namespace == namespace)
                and (not only_key or entry.key == only_key)
            ]
            out.append(
                cloud_tpu.GuestAttributes(
                    query_path=req.query_path or "",
                    query_value=cloud_tpu.GuestAttributesValue(items=items),
                )
            )
        return cloud_tpu.GetGuestAttributesResponse(guest_attributes=out)

    def guest_attributes(self, node: SandboxNode, worker: int) -> list:
        """What a TPU VM worker publishes, in the writers' own shapes.

        `hostkeys/<type>` = the bare base64 blob, one per host key: the guest agent splits each
        `.pub` line on spaces and writes `writeGuestAttributes("hostkeys/"+vals[0], vals[1])`
        (GoogleCloudPlatform/guest-agent, google_guest_agent/instance_setup.go).
        `hostname` = the worker's instance name, which gcloud's IAP path reads by key alone
        (gcloud tpu_vm/ssh.py GetFromGuestAttributes(..., 'hostname'), any namespace); it is
        not the guest agent's, no public source names its namespace, so it has none here.
        """
        entry = cloud_tpu.GuestAttributesEntry
        published = self.host_keys(node, worker)
        keys = [entry(namespace="hostkeys", key=k, value=v) for k, v in published.items()]
        return [*keys, entry(namespace="", key="hostname", value=node.hostname(worker))]

    def list_accelerator_types(
        self, req: cloud_tpu.ListAcceleratorTypesRequest
    ) -> cloud_tpu.ListAcceleratorTypesResponse:
        zone, _ = self._access(
            f"{req.parent}/acceleratorTypes", "tpu.acceleratortypes.list", expect="parent"
        )
        return cloud_tpu.ListAcceleratorTypesResponse(
            accelerator_types=[
                cloud_tpu.AcceleratorType(name=f"{req.parent}/acceleratorTypes/{t}", type_=t)
                for t in self.fleet.accelerator_types(zone)
            ]
        )

    def list_runtime_versions(
        self, req: cloud_tpu.ListRuntimeVersionsRequest
    ) -> cloud_tpu.ListRuntimeVersionsResponse:
        zone, _ = self._access(
            f"{req.parent}/runtimeVersions", "tpu.runtimeversions.list", expect="parent"
        )
        return cloud_tpu.ListRuntimeVersionsResponse(
            runtime_versions=[
                cloud_tpu.RuntimeVersion(name=f"{req.parent}/runtimeVersions/{v}", version=v)
                for v in self.fleet.runtime_versions(zone)
            ]
        )

    # ----- operations and locations ------------------------------------------------------------
    def _op_id(self, name: str) -> int:
        try:
            return int(name.rsplit("operation-", 1)[1])
        except (IndexError, ValueError):
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Operation {name!r} not found.") from None

    def get_operation(self, req: operations_pb2.GetOperationRequest) -> operations_pb2.Operation:
        return self.operation_message(self.fleet.operation(self._op_id(req.name)))

    def list_operations(
        self, req: operations_pb2.ListOperationsRequest
    ) -> operations_pb2.ListOperationsResponse:
        zone, _ = _parse(req.name, expect="parent")
        self.fleet.advance()
        ops = [self.operation_message(o) for o in self.fleet.operations.values() if o.zone == zone]
        return operations_pb2.ListOperationsResponse(operations=ops)

    def list_locations(
        self, req: locations_pb2.ListLocationsRequest
    ) -> locations_pb2.ListLocationsResponse:
        return locations_pb2.ListLocationsResponse(
            locations=[
                locations_pb2.Location(name=f"{req.name}/locations/{z}", location_id=z)
                for z in self.fleet.zones
            ]
        )

    # ----- serving -----------------------------------------------------------------------------
    def _handler(self, method: str, fn: Callable, zone_of: Callable[[object], str]):
        async def handle(request, context: grpc.aio.ServicerContext):
            self.calls[method] = self.calls.get(method, 0) + 1
            if self.faults.latency_s:
                await asyncio.sleep(self.faults.latency_s)
            try:
                zone = zone_of(request)
            except Exception:
                zone = ""
            fault = self.faults.take(method, zone)
            if fault is not None:
                await context.abort(fault.code, fault.message)
            try:
                return fn(request)
            except _Abort as exc:
                await context.abort(exc.code, exc.message)
            except NotFound as exc:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            except AlreadyExists as exc:
                await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
            except FailedPrecondition as exc:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            except (QuotaExceeded, RateLimited) as exc:  # HTTP 429 on Google's REST face
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except InvalidArgument as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except (NoAccess, UnknownLocation) as exc:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            except Exception as exc:  # other services' errors carry their own status code
                code = getattr(exc, "code", None)
                if not isinstance(code, grpc.StatusCode):
                    raise
                await context.abort(code, getattr(exc, "message", str(exc)))

        return handle

    def _service(self, service: str, methods: dict[str, tuple]) -> grpc.GenericRpcHandler:
        handlers = {}
        for method, (fn, req_type, resp_serializer, zone_of) in methods.items():
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                self._handler(method, fn, zone_of),
                request_deserializer=req_type,
                response_serializer=resp_serializer,
            )
        return grpc.method_handlers_generic_handler(service, handlers)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def proto_plus(cls):
            return cls.deserialize

        def zone_of(field_name: str):
            return lambda req: getattr(req, field_name).split("/")[3]

        op_ser = operations_pb2.Operation.SerializeToString
        tpu = {
            "ListNodes": (
                self.list_nodes,
                proto_plus(cloud_tpu.ListNodesRequest),
                cloud_tpu.ListNodesResponse.serialize,
                zone_of("parent"),
            ),
            "GetNode": (
                self.get_node,
                proto_plus(cloud_tpu.GetNodeRequest),
                cloud_tpu.Node.serialize,
                zone_of("name"),
            ),
            "CreateNode": (
                self.create_node,
                proto_plus(cloud_tpu.CreateNodeRequest),
                op_ser,
                zone_of("parent"),
            ),
            "DeleteNode": (
                lambda r: self._node_verb("delete", r.name),
                proto_plus(cloud_tpu.DeleteNodeRequest),
                op_ser,
                zone_of("name"),
            ),
            "StopNode": (
                lambda r: self._node_verb("stop", r.name),
                proto_plus(cloud_tpu.StopNodeRequest),
                op_ser,
                zone_of("name"),
            ),
            "StartNode": (
                lambda r: self._node_verb("start", r.name),
                proto_plus(cloud_tpu.StartNodeRequest),
                op_ser,
                zone_of("name"),
            ),
            "GetGuestAttributes": (
                self.get_guest_attributes,
                proto_plus(cloud_tpu.GetGuestAttributesRequest),
                cloud_tpu.GetGuestAttributesResponse.serialize,
                zone_of("name"),
            ),
            "ListAcceleratorTypes": (
                self.list_accelerator_types,
                proto_plus(cloud_tpu.ListAcceleratorTypesRequest),
                cloud_tpu.ListAcceleratorTypesResponse.serialize,
                zone_of("parent"),
            ),
            "ListRuntimeVersions": (
                self.list_runtime_versions,
                proto_plus(cloud_tpu.ListRuntimeVersionsRequest),
                cloud_tpu.ListRuntimeVersionsResponse.serialize,
                zone_of("parent"),
            ),
        }
        ops = {
            "GetOperation": (
                self.get_operation,
                operations_pb2.GetOperationRequest.FromString,
                op_ser,
                zone_of("name"),
            ),
            "ListOperations": (
                self.list_operations,
                operations_pb2.ListOperationsRequest.FromString,
                operations_pb2.ListOperationsResponse.SerializeToString,
                zone_of("name"),
            ),
        }
        locations = {
            "ListLocations": (
                self.list_locations,
                locations_pb2.ListLocationsRequest.FromString,
                locations_pb2.ListLocationsResponse.SerializeToString,
                lambda r: "",
            ),
        }
        tpu["ListQueuedResources"] = (
            self.list_queued_resources,
            proto_plus(cloud_tpu.ListQueuedResourcesRequest),
            cloud_tpu.ListQueuedResourcesResponse.serialize,
            zone_of("parent"),
        )
        tpu["GetQueuedResource"] = (
            self.get_queued_resource,
            proto_plus(cloud_tpu.GetQueuedResourceRequest),
            cloud_tpu.QueuedResource.serialize,
            zone_of("name"),
        )
        for method, fn, req_type, field_name in (
            (
                "CreateQueuedResource",
                self.create_queued_resource,
                cloud_tpu.CreateQueuedResourceRequest,
                "parent",
            ),
            (
                "DeleteQueuedResource",
                self.delete_queued_resource,
                cloud_tpu.DeleteQueuedResourceRequest,
                "name",
            ),
            (
                "ResetQueuedResource",
                self.reset_queued_resource,
                cloud_tpu.ResetQueuedResourceRequest,
                "name",
            ),
        ):
            tpu[method] = (fn, proto_plus(req_type), op_ser, zone_of(field_name))
        tpu["UpdateNode"] = (
            self.update_node,
            proto_plus(cloud_tpu.UpdateNodeRequest),
            op_ser,
            lambda r: r.node.name.split("/")[3],
        )
        return [
            self._service("google.cloud.tpu.v2.Tpu", tpu),
            self._service("google.longrunning.Operations", ops),
            self._service("google.cloud.location.Locations", locations),
            *(self._service(name, methods) for name, methods in self.services.items()),
        ]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers(self.handlers())
        bound = self._server.add_insecure_port(f"{host}:{port}")
        await self._server.start()
        self.address = f"{host}:{bound}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.2)
            self._server = None
