"""The Cloud TPU v2 API through google-cloud-tpu's `TpuAsyncClient`, turned into our models.

Every call carries a deadline and a retry on UNAVAILABLE (and DEADLINE_EXCEEDED for reads),
writes are retried with backoff through a rate limit, and every failure leaves here as a
`FleetError` with the API's gRPC code, what it means (quota, stockout, ...) and what to do.
"""

from __future__ import annotations

import asyncio
import re
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.retry import if_exception_type
from google.api_core.retry_async import AsyncRetry
from google.cloud import tpu_v2
from google.cloud.tpu_v2.services.tpu.transports import TpuGrpcAsyncIOTransport
from google.protobuf import duration_pb2, field_mask_pb2

from console.models import (
    AcceleratorTypeInfo,
    DataDisk,
    FleetError,
    Node,
    QueuedResource,
    Symptom,
    Worker,
    type_from_config,
)

T = TypeVar("T")
RetryNote = Callable[[FleetError], None]

# proto-plus warns once per unknown enum value it passes on as an int; we show the number.
warnings.filterwarnings("ignore", message=r"Unrecognized .* enum value", category=UserWarning)

QUOTA_RE = re.compile(r"Quota (?:limit )?'([^']+)'")


@dataclass(frozen=True)
class CallPolicy:
    """Deadline per attempt and the retry budget; the API client has neither by default."""

    timeout_s: float = 15.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 3.0
    retry_total_s: float = 30.0
    # A per-minute rate limit on writes ("Maximum number of CreateNode requests per minute")
    # clears within a minute: back off from 2 s up to 30 s, for up to three minutes.
    rate_initial_s: float = 2.0
    rate_max_s: float = 30.0
    rate_total_s: float = 180.0


def _retry(policy: CallPolicy, *, read: bool) -> AsyncRetry:
    transient = (
        (gexc.ServiceUnavailable, gexc.DeadlineExceeded) if read else (gexc.ServiceUnavailable,)
    )
    return AsyncRetry(
        predicate=if_exception_type(*transient),
        initial=policy.retry_initial_s,
        maximum=policy.retry_max_s,
        multiplier=2.0,
        timeout=policy.retry_total_s,
    )


def error_kind(exc: gexc.GoogleAPICallError) -> str:
    """What an API error means for the console, from its code and Google's own wording.

    Sources of each text: the stockout ("There is no more capacity in the zone", code 8 inside
    the create operation: terraform-provider-google#10222, GoogleCloudPlatform/magic-modules
    #7297), reserved capacity ("Insufficient reserved capacity", code 8: skypilot#4579), the
    CreateNode rate limit ("Maximum number of CreateNode requests per minute":
    marin-community/marin#6198), spot quota ("Quota limit 'TPUV6EPreemptible...' has been
    exceeded", HTTP 429: marin#1612), an unknown type ("the accelerator v4-128 was not found
    in zone": skypilot#3840; "received an invalid AcceleratorType": SkyPilot's TPU Node code).
    """
    text = (exc.message or "").lower()
    if isinstance(exc, gexc.ResourceExhausted):
        if "no more capacity" in text:
            return "stockout"
        if "insufficient reserved capacity" in text:
            return "reserved_capacity"
        if "requests per minute" in text or getattr(exc, "reason", "") == "RATE_LIMIT_EXCEEDED":
            return "rate_limit"
        return "quota"
    if "was not found in zone" in text or "invalid acceleratortype" in text:
        return "unknown_type"
    return ""


def is_rate_limit(exc: BaseException) -> bool:
    return isinstance(exc, gexc.ResourceExhausted) and error_kind(exc) == "rate_limit"


def _kind_remedy(kind: str, exc: gexc.GoogleAPICallError) -> str:
    if kind == "stockout":
        return (
            "The zone has no free capacity of this type now: try another zone that offers it, "
            "on-demand instead of spot, or later."
        )
    if kind == "reserved_capacity":
        return (
            "The reservation has no room left: create without it (on-demand or spot), try "
            "another zone, or ask Google Cloud support to grow the reservation."
        )
    if kind == "rate_limit":
        return (
            "Too many create requests in this project this minute (retried with backoff); "
            "wait a minute and try again."
        )
    if kind == "quota":
        metric = QUOTA_RE.search(exc.message or "")
        where = f" ({metric.group(1)})" if metric else ""
        return f"Use on-demand capacity, another region, or ask for more quota{where}."
    if kind == "unknown_type":
        return (
            "Choose a type the zone offers: the create form lists them, as does "
            "`gcloud compute tpus accelerator-types list --zone Z`."
        )
    return ""


def _remedy(exc: gexc.GoogleAPICallError, project: str) -> str:
    kind = error_kind(exc)
    if kind:
        return _kind_remedy(kind, exc) or _generic_remedy(exc, project)
    return _generic_remedy(exc, project)


def _generic_remedy(exc: gexc.GoogleAPICallError, project: str) -> str:
    if isinstance(exc, gexc.PermissionDenied) and "is not found or access" in str(exc.message):
        return "Check the zone's name: `tpuconsole ls` lists the zones your project sees."
    if isinstance(exc, gexc.InvalidArgument) and "RuntimeVersion" in str(exc.message):
        return (
            "Choose a version the zone offers (the create form lists them; gcloud compute tpus "
            "tpu-vm versions list --zone ZONE)."
        )
    if isinstance(exc, gexc.PermissionDenied):
        return (
            f"Check that project {project!r} is right and that your account may use the TPU "
            "API there (roles/tpu.viewer), and that the API is enabled."
        )
    if isinstance(exc, gexc.Unauthenticated):
        return "Run `gcloud auth application-default login` and try again."
    if isinstance(exc, (gexc.ServiceUnavailable, gexc.DeadlineExceeded)):
        return "The API did not answer after retries; check your network and press r to retry."
    if isinstance(exc, gexc.ResourceExhausted):
        return "Use on-demand capacity, another zone, or ask for more quota."
    if isinstance(exc, gexc.NotFound):
        return "It may have been deleted; refresh the fleet."
    return ""


def fleet_error(exc: BaseException, project: str, what: str) -> FleetError:
    """Turn the client's exceptions into the console's one error type."""
    if isinstance(exc, gexc.RetryError):
        cause = exc.cause if isinstance(exc.cause, gexc.GoogleAPICallError) else None
        if cause is not None and is_rate_limit(cause):
            return FleetError(
                f"{what}: still rate-limited after retrying with backoff: {cause.message}",
                _kind_remedy("rate_limit", cause),
                code="RESOURCE_EXHAUSTED",
                kind="rate_limit",
            )
        reason = f"{what}: gave up after retries ({exc.cause or exc})."
        return FleetError(
            reason,
            _remedy(cause, project) if cause else "Check your network and try again.",
            code="RETRY",
        )
    if isinstance(exc, gexc.GoogleAPICallError):
        code = exc.grpc_status_code.name if exc.grpc_status_code else str(exc.code)
        return FleetError(
            f"{what}: {exc.message}", _remedy(exc, project), code=code, kind=error_kind(exc)
        )
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return FleetError(
            f"{what}: timed out.", "Check your network and try again.", code="DEADLINE_EXCEEDED"
        )
    return FleetError(f"{what}: {exc}", code=type(exc).__name__)


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def enum_name(value: Any, unspecified: str = "") -> str:
    """An enum's name; a value newer than the client (proto-plus passes an int) as its number."""
    name = getattr(value, "name", None)
    if name is None:
        return str(int(value))
    return "" if name == unspecified else name


def _time(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) and value.year > 1970 else None


def worker_endpoints(msg: Any) -> list[Any]:
    """One endpoint per worker: a node on N networks lists N endpoints per worker, in order.

    gcloud's rule (`tpu_vm/ssh.py` ParseWorkerFlag): the workers are the endpoints at indexes
    `i % max(1, len(networkConfigs)) == 0`; a node with the single `network_config` has one each.
    """
    nets = max(1, len(msg.network_configs))
    return [ep for i, ep in enumerate(msg.network_endpoints) if i % nets == 0]


def _pb_enum(message: Any, field: str, unspecified: str = "") -> str:
    """A raw protobuf enum field's name; a value newer than the client as its number."""
    number = getattr(message, field)
    value = message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number.get(number)
    if value is None:
        return str(number)
    return "" if value.name == unspecified else value.name


def _pb_time(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC) if stamp.seconds > 0 else None


def node_from_message(msg: tpu_v2.Node) -> Node:
    """Our Node from the API's; zone and project come from the resource name.

    Read from the raw protobuf under the proto-plus wrapper: each proto-plus attribute costs
    a marshal lookup (38 a node: 2 s of CPU for 3,000 nodes, most of a fleet listing's time),
    a raw one is a C field read. Every enum goes through `_pb_enum`, so a state or health
    added to the API after this client was built shows as its number instead of crashing.
    """
    pb = tpu_v2.Node.pb(msg)
    parts = pb.name.split("/")
    project, zone = (parts[1], parts[3]) if len(parts) >= 6 else ("", "")
    workers = tuple(
        Worker(
            index=i,
            internal_ip=ep.ip_address,
            external_ip=ep.access_config.external_ip,
            runtime_port=ep.port,
        )
        for i, ep in enumerate(worker_endpoints(pb))
    )
    has_config = pb.HasField("accelerator_config")
    config = pb.accelerator_config
    # proto-plus renames the field `type` to `type_` in the descriptor it builds, too.
    config_type = _pb_enum(config, "type_", "TYPE_UNSPECIFIED") if has_config else ""
    topology = config.topology if has_config else ""
    derived = "" if pb.accelerator_type else type_from_config(config_type, topology)
    sched = pb.scheduling_config
    # One network: `network_config`; several (multi-NIC): the first of `network_configs`.
    net = pb.network_config if pb.HasField("network_config") else None
    if net is None and pb.network_configs:
        net = pb.network_configs[0]
    account = pb.service_account if pb.HasField("service_account") else None
    return Node(
        name=_short(pb.name),
        zone=zone,
        project=project,
        accelerator_type=pb.accelerator_type or derived,
        state=_pb_enum(pb, "state") or "STATE_UNSPECIFIED",
        health=_pb_enum(pb, "health", "HEALTH_UNSPECIFIED"),
        spot=sched.spot,
        preemptible=sched.preemptible,
        reserved=sched.reserved,
        runtime_version=pb.runtime_version,
        workers=workers,
        labels=dict(pb.labels),
        create_time=_pb_time(pb, "create_time"),
        symptoms=tuple(
            Symptom(
                kind=_pb_enum(s, "symptom_type", "SYMPTOM_TYPE_UNSPECIFIED"),
                details=s.details,
                worker_id=s.worker_id,
                create_time=_pb_time(s, "create_time"),
            )
            for s in pb.symptoms
        ),
        node_id=pb.id,
        description=pb.description,
        health_description=pb.health_description,
        topology=topology,
        accelerator_config_type=config_type,
        type_from_config=bool(derived),
        api_version=_pb_enum(pb, "api_version", "API_VERSION_UNSPECIFIED"),
        network=net.network if net is not None else "",
        subnetwork=net.subnetwork if net is not None else "",
        external_ips=net.enable_external_ips if net is not None else None,
        service_account=account.email if account is not None else "",
        service_account_scopes=tuple(account.scope) if account is not None else (),
        data_disks=tuple(
            DataDisk(d.source_disk, _pb_enum(d, "mode", "DISK_MODE_UNSPECIFIED"))
            for d in pb.data_disks
        ),
        metadata=dict(pb.metadata),
        tags=tuple(pb.tags),
        queued_resource=_short(pb.queued_resource) if pb.queued_resource else "",
        multislice_node=pb.multislice_node,
    )


def _seconds(value: Any) -> float:
    return value.total_seconds() if hasattr(value, "total_seconds") else 0.0


def queued_resource_from_message(msg: tpu_v2.QueuedResource) -> QueuedResource:
    """Our QueuedResource from the v2 API's (tpu_v2.types.QueuedResource): the first
    `tpu.node_spec` says what it asks for; `multislice_params` makes it several nodes named
    `<prefix>-0..` (its docstring's rule, the request's id when no prefix is given)."""
    parts = msg.name.split("/")
    project, zone = (parts[1], parts[3]) if len(parts) >= 6 else ("", "")
    name = _short(msg.name)
    specs = list(msg.tpu.node_spec) if "tpu" in msg else []
    spec = specs[0] if specs else None
    node = spec.node if spec is not None else tpu_v2.Node()
    multi = spec.multislice_params if spec is not None and "multislice_params" in spec else None
    count = multi.node_count if multi is not None else 1
    if multi is not None:
        prefix = multi.node_id_prefix or name
        names = tuple(f"{prefix}-{i}" for i in range(count))
    else:
        prefix = ""
        names = (spec.node_id or name,) if spec is not None else ()
    state = msg.state
    failed = state.failed_data if "failed_data" in state else None
    policy = msg.queueing_policy
    tier = "spot" if "spot" in msg else "guaranteed" if "guaranteed" in msg else ""
    return QueuedResource(
        name=name,
        zone=zone,
        project=project,
        state=enum_name(state.state) or "STATE_UNSPECIFIED",
        accelerator_type=node.accelerator_type,
        runtime_version=node.runtime_version,
        tier=tier,
        state_initiator=enum_name(state.state_initiator, "STATE_INITIATOR_UNSPECIFIED"),
        node_count=count,
        node_id_prefix=prefix,
        node_names=names,
        create_time=_time(msg.create_time),
        valid_until=_time(policy.valid_until_time) if "valid_until_time" in policy else None,
        valid_until_s=_seconds(policy.valid_until_duration)
        if "valid_until_duration" in policy
        else 0.0,
        valid_after=_time(policy.valid_after_time) if "valid_after_time" in policy else None,
        error_code=failed.error.code if failed is not None else 0,
        error_message=failed.error.message if failed is not None else "",
        reservation=msg.reservation_name,
        labels=dict(node.labels),
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(seconds))


@dataclass(frozen=True)
class WorkerAttributes:
    """What one worker's VM published about itself in its guest attributes."""

    host_keys: tuple[tuple[str, str], ...] = ()  # (key type, base64 blob), ssh-* and ecdsa-* only
    hostname: str = ""  # its Compute Engine instance name, e.g. t1v-n-d86a1b40-w-0 (for IAP)


def _host_key_types_ok(key_type: str) -> bool:
    return key_type.startswith(("ssh-", "ecdsa-"))


def worker_attributes(entries: dict[tuple[str, str], str]) -> WorkerAttributes:
    """Read guest attributes as gcloud does.

    The guest agent writes one attribute per host key, `hostkeys/<type>` = the bare base64 blob
    (guest-agent `instance_setup.go`: the `.pub` line split on spaces, `vals[0]`/`vals[1]`).
    gcloud (`tpu_vm/ssh.py` GetFromGuestAttributes) finds `hostname` by key alone, whatever its
    namespace; so do we. A value that is not one bare blob is not a key and is left out.
    """
    keys = []
    hostname = ""
    for (namespace, key), value in sorted(entries.items()):
        value = value.strip()
        if namespace == "hostkeys":
            if _host_key_types_ok(key) and value and " " not in value:
                keys.append((key, value))
        elif key == "hostname" and not hostname:
            hostname = value
    return WorkerAttributes(tuple(keys), hostname)


class TpuApi:
    """One project's TPU VMs. Build with `for_sandbox` or `for_google`; close with `close()`."""

    def __init__(
        self, client: tpu_v2.TpuAsyncClient, project: str, policy: CallPolicy | None = None
    ) -> None:
        self.client = client
        self.project = project
        self.policy = policy or CallPolicy()
        self._read = _retry(self.policy, read=True)
        self._write = _retry(self.policy, read=False)

    @classmethod
    def for_sandbox(cls, address: str, project: str, policy: CallPolicy | None = None) -> TpuApi:
        """The same client as for Google Cloud, over an insecure loopback channel."""
        from google.auth.credentials import AnonymousCredentials

        channel = grpc.aio.insecure_channel(address)
        transport = TpuGrpcAsyncIOTransport(channel=channel, credentials=AnonymousCredentials())
        return cls(tpu_v2.TpuAsyncClient(transport=transport), project, policy)

    @classmethod
    def for_google(
        cls, project: str, *, endpoint: str = "", policy: CallPolicy | None = None
    ) -> TpuApi:
        """Application Default Credentials, as gcloud's `auth application-default login` sets."""
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            credentials, _ = google.auth.default(
                scopes=["https://www.googleapis.com/auth/cloud-platform"]
            )
        except DefaultCredentialsError as exc:
            raise FleetError(
                f"No Google Cloud credentials found ({exc}).",
                "Run `gcloud auth application-default login`, or set "
                "GOOGLE_APPLICATION_CREDENTIALS to a service account key file.",
                code="UNAUTHENTICATED",
            ) from None
        options = ClientOptions(api_endpoint=endpoint) if endpoint else None
        client = tpu_v2.TpuAsyncClient(credentials=credentials, client_options=options)
        return cls(client, project, policy)

    async def close(self) -> None:
        await self.client.transport.close()

    def _parent(self, zone: str) -> str:
        return f"projects/{self.project}/locations/{zone}"

    def _node_name(self, zone: str, name: str) -> str:
        return f"{self._parent(zone)}/nodes/{name}"

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (gexc.GoogleAPICallError, gexc.RetryError, TimeoutError) as exc:
            raise fleet_error(exc, self.project, what) from exc

    def _through_rate_limit(
        self, what: str, fn: Callable[[], Awaitable[T]], on_retry: RetryNote | None
    ) -> Callable[[], Awaitable[T]]:
        """A write retried with backoff while the API rate-limits it (google-api-core's retry).

        Only the rate limit: a quota or a stockout is an answer, not a reason to ask again.
        """

        def note(exc: Exception) -> None:
            if on_retry is not None and isinstance(exc, gexc.GoogleAPICallError):
                on_retry(fleet_error(exc, self.project, what))

        retry = AsyncRetry(
            predicate=is_rate_limit,
            initial=self.policy.rate_initial_s,
            maximum=self.policy.rate_max_s,
            multiplier=2.0,
            timeout=self.policy.rate_total_s,
        )
        return retry(fn, on_error=note)

    # ----- reads -------------------------------------------------------------------------------
    async def list_zones(self) -> list[str]:
        async def go() -> list[str]:
            resp = await self.client.list_locations(
                request={"name": f"projects/{self.project}"},
                retry=self._read,
                timeout=self.policy.timeout_s,
            )
            return sorted(loc.location_id for loc in resp.locations)

        return await self._call("Listing TPU locations", go)

    async def list_nodes(self, zone: str, page_size: int = 0) -> list[Node]:
        async def go() -> list[Node]:
            request = tpu_v2.ListNodesRequest(parent=self._parent(zone), page_size=page_size)
            pager = await self.client.list_nodes(
                request=request, retry=self._read, timeout=self.policy.timeout_s
            )
            return [node_from_message(msg) async for msg in pager]

        return await self._call(f"Listing nodes in {zone}", go)

    async def get_node(self, zone: str, name: str) -> Node:
        async def go() -> Node:
            msg = await self.client.get_node(
                name=self._node_name(zone, name), retry=self._read, timeout=self.policy.timeout_s
            )
            return node_from_message(msg)

        return await self._call(f"Getting node {name} in {zone}", go)

    async def guest_attributes(
        self, zone: str, name: str, query_path: str = ""
    ) -> list[dict[tuple[str, str], str]]:
        """One mapping (namespace, key) -> value per worker, in worker order."""

        async def go() -> list[dict[tuple[str, str], str]]:
            resp = await self.client.get_guest_attributes(
                request=tpu_v2.GetGuestAttributesRequest(
                    name=self._node_name(zone, name), query_path=query_path
                ),
                retry=self._read,
                timeout=self.policy.timeout_s,
            )
            return [
                {(e.namespace, e.key): e.value for e in ga.query_value.items}
                for ga in resp.guest_attributes
            ]

        return await self._call(f"Reading guest attributes of {name}", go)

    async def worker_attributes(self, zone: str, name: str) -> list[WorkerAttributes]:
        """Each worker's host keys and hostname, in worker order, in one call (as gcloud)."""
        return [worker_attributes(w) for w in await self.guest_attributes(zone, name)]

    async def accelerator_types(self, zone: str) -> list[AcceleratorTypeInfo]:
        async def go() -> list[AcceleratorTypeInfo]:
            pager = await self.client.list_accelerator_types(
                parent=self._parent(zone), retry=self._read, timeout=self.policy.timeout_s
            )
            return [AcceleratorTypeInfo(a.type_) async for a in pager]

        return await self._call(f"Listing accelerator types in {zone}", go)

    async def runtime_versions(self, zone: str) -> list[str]:
        async def go() -> list[str]:
            pager = await self.client.list_runtime_versions(
                parent=self._parent(zone), retry=self._read, timeout=self.policy.timeout_s
            )
            return [v.version async for v in pager]

        return await self._call(f"Listing runtime versions in {zone}", go)

    # ----- long-running changes ----------------------------------------------------------------
    async def create_node(
        self,
        zone: str,
        name: str,
        accelerator_type: str,
        runtime_version: str,
        *,
        spot: bool = False,
        labels: dict[str, str] | None = None,
        description: str = "",
        on_retry: RetryNote | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Any:
        """The create operation; `on_retry` hears of each rate-limited attempt before its retry."""
        node = tpu_v2.Node(
            accelerator_type=accelerator_type,
            runtime_version=runtime_version,
            scheduling_config=tpu_v2.SchedulingConfig(spot=spot),
            labels=labels or {},
            description=description,
            metadata=metadata or {},
        )

        async def go() -> Any:
            return await self.client.create_node(
                parent=self._parent(zone),
                node_id=name,
                node=node,
                retry=self._write,
                timeout=self.policy.timeout_s,
            )

        what = f"Creating node {name} in {zone}"
        return await self._call(what, self._through_rate_limit(what, go, on_retry))

    # ----- queued resources --------------------------------------------------------------------
    def _queued_name(self, zone: str, name: str) -> str:
        return f"{self._parent(zone)}/queuedResources/{name}"

    async def list_queued_resources(self, zone: str) -> list[QueuedResource]:
        async def go() -> list[QueuedResource]:
            pager = await self.client.list_queued_resources(
                request=tpu_v2.ListQueuedResourcesRequest(parent=self._parent(zone)),
                retry=self._read,
                timeout=self.policy.timeout_s,
            )
            return [queued_resource_from_message(msg) async for msg in pager]

        return await self._call(f"Listing queued resources in {zone}", go)

    async def get_queued_resource(self, zone: str, name: str) -> QueuedResource:
        async def go() -> QueuedResource:
            msg = await self.client.get_queued_resource(
                name=self._queued_name(zone, name), retry=self._read, timeout=self.policy.timeout_s
            )
            return queued_resource_from_message(msg)

        return await self._call(f"Getting queued resource {name} in {zone}", go)

    async def create_queued_resource(
        self,
        zone: str,
        name: str,
        accelerator_type: str,
        runtime_version: str,
        *,
        tier: str = "",
        valid_for_s: float = 0.0,
        node_count: int = 1,
        labels: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        on_retry: RetryNote | None = None,
    ) -> Any:
        """CreateQueuedResource, as `gcloud compute tpus queued-resources create` builds it:
        one node spec (`node_id`, or `multislice_params` for several nodes), `spot` or
        `guaranteed` as the tier, `valid_until_duration` as the wait bound."""
        node = tpu_v2.Node(
            accelerator_type=accelerator_type,
            runtime_version=runtime_version,
            scheduling_config=tpu_v2.SchedulingConfig(spot=tier == "spot"),
            labels=labels or {},
            metadata=metadata or {},
        )
        spec = tpu_v2.QueuedResource.Tpu.NodeSpec(parent=self._parent(zone), node=node)
        if node_count > 1:
            spec.multislice_params = tpu_v2.QueuedResource.Tpu.NodeSpec.MultisliceParams(
                node_count=node_count, node_id_prefix=name
            )
        else:
            spec.node_id = name
        body = tpu_v2.QueuedResource(tpu=tpu_v2.QueuedResource.Tpu(node_spec=[spec]))
        if tier == "spot":
            body.spot = tpu_v2.QueuedResource.Spot()
        elif tier == "guaranteed":
            body.guaranteed = tpu_v2.QueuedResource.Guaranteed()
        if valid_for_s:
            body.queueing_policy = tpu_v2.QueuedResource.QueueingPolicy(
                valid_until_duration=_duration(valid_for_s)
            )

        async def go() -> Any:
            return await self.client.create_queued_resource(
                parent=self._parent(zone),
                queued_resource_id=name,
                queued_resource=body,
                retry=self._write,
                timeout=self.policy.timeout_s,
            )

        what = f"Creating queued resource {name} in {zone}"
        return await self._call(what, self._through_rate_limit(what, go, on_retry))

    async def delete_queued_resource(self, zone: str, name: str, *, force: bool = False) -> Any:
        """`force=True` deletes its nodes first, then the request (gcloud's `--force`)."""

        async def go() -> Any:
            return await self.client.delete_queued_resource(
                request=tpu_v2.DeleteQueuedResourceRequest(
                    name=self._queued_name(zone, name), force=force
                ),
                retry=self._write,
                timeout=self.policy.timeout_s,
            )

        what = f"Deleting queued resource {name} in {zone}"
        return await self._call(what, self._through_rate_limit(what, go, None))

    async def reset_queued_resource(self, zone: str, name: str) -> Any:
        async def go() -> Any:
            return await self.client.reset_queued_resource(
                name=self._queued_name(zone, name), retry=self._write, timeout=self.policy.timeout_s
            )

        return await self._call(f"Resetting queued resource {name} in {zone}", go)

    async def update_metadata(self, zone: str, name: str, metadata: dict[str, str]) -> Any:
        """Replace the node's metadata (UpdateNode, `update_mask="metadata"`), as gcloud does.

        The mask replaces the whole map: pass every entry to keep, not only the changed one.
        """
        node = tpu_v2.Node(name=self._node_name(zone, name), metadata=metadata)

        async def go() -> Any:
            return await self.client.update_node(
                node=node,
                update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
                retry=self._write,
                timeout=self.policy.timeout_s,
            )

        return await self._call(f"Updating the metadata of {name}", go)

    async def _verb(self, verb: str, zone: str, name: str) -> Any:
        method = getattr(self.client, f"{verb}_node")

        async def go() -> Any:
            if verb == "delete":
                return await method(
                    name=self._node_name(zone, name),
                    retry=self._write,
                    timeout=self.policy.timeout_s,
                )
            return await method(
                request={"name": self._node_name(zone, name)},
                retry=self._write,
                timeout=self.policy.timeout_s,
            )

        what = f"{verb.capitalize()} node {name} in {zone}"
        return await self._call(what, self._through_rate_limit(what, go, None))

    async def delete_node(self, zone: str, name: str) -> Any:
        return await self._verb("delete", zone, name)

    async def stop_node(self, zone: str, name: str) -> Any:
        return await self._verb("stop", zone, name)

    async def start_node(self, zone: str, name: str) -> Any:
        return await self._verb("start", zone, name)

    @staticmethod
    async def _result(operation: Any) -> Any:
        try:
            return await operation.result()
        except gexc.GoogleAPICallError as bare:
            typed = operation_exception(operation.operation)
            if typed is None:
                raise
            raise typed from bare

    async def wait_operation(
        self,
        operation: Any,
        *,
        timeout_s: float = 900.0,
        poll_s: float = 1.0,
        what: str = "",
    ) -> Any:
        """Poll an operation to its end at our own pace (the client's default backs off to 60 s).

        Returns the operation's result (a Node, or Empty for delete); raises FleetError. An
        error inside the operation keeps its real code: `AsyncOperation.result()` would raise
        a bare GoogleAPICallError with none (the sync `Operation` uses `from_grpc_status`), so
        the code is read from the operation's `error` status here.
        """
        deadline = time.monotonic() + timeout_s
        what = what or f"Operation {operation.operation.name.rsplit('/', 1)[-1]}"
        while True:
            try:
                if await operation.done(retry=self._read):
                    return await self._result(operation)
            except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
                raise fleet_error(exc, self.project, what) from exc
            if time.monotonic() >= deadline:
                raise FleetError(
                    f"{what}: still running after {timeout_s:.0f} s.",
                    "It goes on in Google Cloud; refresh to follow the node.",
                    code="DEADLINE_EXCEEDED",
                )
            await asyncio.sleep(poll_s)


def operation_exception(op: Any) -> gexc.GoogleAPICallError | None:
    """The typed exception (ResourceExhausted for code 8, ...) of a failed operation, if any."""
    if not op.done or not op.HasField("error"):
        return None
    return gexc.from_grpc_status(op.error.code, op.error.message, errors=(op.error,), response=op)
