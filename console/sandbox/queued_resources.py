"""The sandbox's queued resources: requests for TPU VMs that wait in a queue, then provision.

The shapes are the v2 API's (google-cloud-tpu `tpu_v2.types.QueuedResource`, `QueuedResourceState`
and the Cloud TPU docs "Manage queued resources"); the fleet (fleet_state.py) moves them along.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.cloud.tpu_v2.types import cloud_tpu
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from console.models import accelerator_shape

# QueuedResourceState.State, in the order a request goes through them (the client's enum
# docstrings: CREATING "received", ACCEPTED "persisted in the queue", WAITING_FOR_RESOURCES
# "until there are sufficient free resources", PROVISIONING "selected", ACTIVE "provisioned").
QUEUE_STATES = ("CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE")
GONE = "GONE"  # a pending state meaning "the request disappears"
# DeleteQueuedResourceRequest.force's docstring: without force, "the queued resource will only
# be deleted if its nodes have already been deleted or the queued resource is in the ACCEPTED,
# FAILED, or SUSPENDED state."
DELETABLE_WITHOUT_FORCE = frozenset({"ACCEPTED", "FAILED", "SUSPENDED"})
# What keeps a request's chips counted against the project's quota: everything but DELETING
# (users lost hours to SUSPENDED and FAILED requests holding spot quota, issue #17).
HOLDS_QUOTA = frozenset(
    {"CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"}
    | {"SUSPENDING", "SUSPENDED", "FAILED"}
)
# The API's exact wording for these is not public; each says what the state's docstring says.
NOT_FORCED_TEXT = (
    "Queued resource {name} is {state} and still has nodes; delete it with force=true "
    "(gcloud: --force) to delete its nodes too."
)
RESET_TEXT = "Queued resource {name} is {state}; only a SUSPENDED queued resource can be reset."
EXPIRED_TEXT = (  # the FAILED docstring: "the 'valid until' start timing constraint expired"
    "The queued resource could not be provisioned before its 'valid until' time."
)
EXPIRED_CODE = 4  # DEADLINE_EXCEEDED


@dataclass
class SandboxQueuedResource:
    """One request, as the fleet keeps it (plain values, so it persists as JSON)."""

    name: str
    zone: str
    accelerator_type: str
    runtime_version: str
    state: str
    create_time: float
    tier: str = ""  # spot | guaranteed | "" (on-demand, no tier)
    node_id: str = ""  # a single node's name
    node_count: int = 1  # > 1: a multislice request (MultisliceParams.node_count)
    node_id_prefix: str = ""
    initiator: str = ""  # USER | SERVICE: who caused SUSPENDING/SUSPENDED (or DELETING)
    error_code: int = 0  # FailedData.error
    error_message: str = ""
    valid_until: float = 0.0  # epoch seconds; from valid_until_duration or _time
    valid_until_duration_s: float = 0.0  # as the user gave it, echoed back
    valid_after: float = 0.0
    reservation: str = ""
    min_duration_s: float = 0.0  # Guaranteed.min_duration
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    description: str = ""
    pending: list[tuple[float, str]] = field(default_factory=list)
    state_since: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.zone}/{self.name}"

    @property
    def multislice(self) -> bool:
        return self.node_count > 1

    @property
    def spot(self) -> bool:
        return self.tier == "spot"

    def node_names(self) -> list[str]:
        """MultisliceParams' rule: node_count 3, prefix "np" gives np-0, np-1, np-2; without a
        prefix the queued resource's id is the prefix."""
        if not self.multislice:
            return [self.node_id or self.name]
        prefix = self.node_id_prefix or self.name
        return [f"{prefix}-{i}" for i in range(self.node_count)]

    @property
    def chips(self) -> int:
        return accelerator_shape(self.accelerator_type).chips * self.node_count


def _duration(seconds: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def state_message(qr: SandboxQueuedResource) -> cloud_tpu.QueuedResourceState:
    """The state with its `state_data` oneof: `failed_data.error` for FAILED, the (empty)
    `suspending_data`/`suspended_data` and the `state_initiator` for a suspension."""
    state_cls = cloud_tpu.QueuedResourceState
    msg = state_cls(state=getattr(state_cls.State, qr.state))
    data = {
        "CREATING": ("creating_data", state_cls.CreatingData()),
        "ACCEPTED": ("accepted_data", state_cls.AcceptedData()),
        "PROVISIONING": ("provisioning_data", state_cls.ProvisioningData()),
        "ACTIVE": ("active_data", state_cls.ActiveData()),
        "DELETING": ("deleting_data", state_cls.DeletingData()),
        "SUSPENDING": ("suspending_data", state_cls.SuspendingData()),
        "SUSPENDED": ("suspended_data", state_cls.SuspendedData()),
        "FAILED": (
            "failed_data",
            state_cls.FailedData(
                error=status_pb2.Status(code=qr.error_code, message=qr.error_message)
            ),
        ),
    }.get(qr.state)
    if data is not None:
        setattr(msg, data[0], data[1])
    if qr.initiator:
        msg.state_initiator = getattr(state_cls.StateInitiator, qr.initiator)
    return msg


def queued_resource_message(qr: SandboxQueuedResource, project: str) -> cloud_tpu.QueuedResource:
    """A request as GetQueuedResource answers it: `tpu.node_spec[]` with the node, and for a
    multislice request `multislice_params` (node_count, node_id_prefix) instead of `node_id`."""
    parent = f"projects/{project}/locations/{qr.zone}"
    node = cloud_tpu.Node(
        accelerator_type=qr.accelerator_type,
        runtime_version=qr.runtime_version,
        labels=qr.labels,
        description=qr.description,
        scheduling_config=cloud_tpu.SchedulingConfig(spot=qr.spot),
    )
    spec = cloud_tpu.QueuedResource.Tpu.NodeSpec(parent=parent, node=node)
    if qr.multislice:
        spec.multislice_params = cloud_tpu.QueuedResource.Tpu.NodeSpec.MultisliceParams(
            node_count=qr.node_count, node_id_prefix=qr.node_id_prefix
        )
    else:
        spec.node_id = qr.node_id or qr.name
    msg = cloud_tpu.QueuedResource(
        name=f"{parent}/queuedResources/{qr.name}",
        tpu=cloud_tpu.QueuedResource.Tpu(node_spec=[spec]),
        state=state_message(qr),
        reservation_name=qr.reservation,
    )
    if qr.tier == "spot":
        msg.spot = cloud_tpu.QueuedResource.Spot()
    elif qr.tier == "guaranteed":
        guaranteed = cloud_tpu.QueuedResource.Guaranteed()
        if qr.min_duration_s:
            guaranteed.min_duration = _duration(qr.min_duration_s)
        msg.guaranteed = guaranteed
    policy = cloud_tpu.QueuedResource.QueueingPolicy()
    if qr.valid_until_duration_s:
        policy.valid_until_duration = _duration(qr.valid_until_duration_s)
    elif qr.valid_until:
        policy.valid_until_time = _when(qr.valid_until)
    elif qr.valid_after:
        policy.valid_after_time = _when(qr.valid_after)
    if qr.valid_until or qr.valid_after:
        msg.queueing_policy = policy
    cloud_tpu.QueuedResource.pb(msg).create_time.FromDatetime(_when(qr.create_time))
    return msg


def from_request(
    req: cloud_tpu.CreateQueuedResourceRequest, zone: str, now: float
) -> SandboxQueuedResource:
    """What CreateQueuedResource asks for, as the fleet keeps it; the fleet checks it."""
    body = req.queued_resource
    specs = list(body.tpu.node_spec)
    spec = specs[0] if specs else cloud_tpu.QueuedResource.Tpu.NodeSpec()
    node = spec.node
    policy = body.queueing_policy
    tier = "spot" if "spot" in body else "guaranteed" if "guaranteed" in body else ""
    multi = spec.multislice_params if "multislice_params" in spec else None
    until_s = policy.valid_until_duration.total_seconds() if "valid_until_duration" in policy else 0
    until = now + until_s if until_s else 0.0
    if "valid_until_time" in policy:
        until = policy.valid_until_time.timestamp()
    after = 0.0
    if "valid_after_duration" in policy:
        after = now + policy.valid_after_duration.total_seconds()
    elif "valid_after_time" in policy:
        after = policy.valid_after_time.timestamp()
    guaranteed = body.guaranteed if tier == "guaranteed" else None
    return SandboxQueuedResource(
        name=req.queued_resource_id,
        zone=zone,
        accelerator_type=node.accelerator_type,
        runtime_version=node.runtime_version or "tpu-ubuntu2204-base",
        state="CREATING",
        create_time=now,
        tier=tier,
        node_id="" if multi else spec.node_id,
        node_count=multi.node_count if multi else 1,
        node_id_prefix=multi.node_id_prefix if multi else "",
        valid_until=until,
        valid_until_duration_s=float(until_s),
        valid_after=after,
        reservation=body.reservation_name,
        min_duration_s=guaranteed.min_duration.total_seconds()
        if guaranteed is not None and "min_duration" in guaranteed
        else 0.0,
        labels=dict(node.labels),
        metadata=dict(node.metadata),
        description=node.description,
        state_since=now,
    )
