"""The sandbox's fleet: nodes, their states over time, operations and quota, kept in one JSON file.

The emulator serves it over gRPC; tests and `tpuconsole sandbox` drive it. It is thread-safe
because the sandbox serves from its own thread while tests poke it (preempt, inject faults).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from console.models import MAX_LABELS, accelerator_shape, label_fault
from console.sandbox.queued_resources import (
    DELETABLE_WITHOUT_FORCE,
    EXPIRED_CODE,
    EXPIRED_TEXT,
    HOLDS_QUOTA,
    NOT_FORCED_TEXT,
    RESET_TEXT,
    SandboxQueuedResource,
)


class _Zoned(Protocol):
    """A node or a queued resource: both are listed per zone and fetched by name."""

    zone: str
    name: str


_Row = TypeVar("_Row", bound=_Zoned)

SANDBOX_PROJECT = "tpuconsole-sandbox"
SANDBOX_PROJECT_NUMBER = 100000000001  # what the default compute service account is named by
# The account the sandbox's OS Login knows you as (gcloud's `[core] account` on Google Cloud).
SANDBOX_ACCOUNT = "alice@example.com"
GONE = "GONE"  # a pending state meaning "the node disappears"

# What each generation boots (Cloud TPU docs, "TPU software versions"): v2-v4 share the Ubuntu
# base images and the TF ones; v5e, v5p and v6e have only their own. A zone lists the versions
# of the generations it offers.
RUNTIME_VERSIONS_BY_GENERATION: dict[str, tuple[str, ...]] = {
    "v2": ("tpu-ubuntu2204-base", "tpu-vm-tf-2.16.1-pjrt"),
    "v3": ("tpu-ubuntu2204-base", "tpu-vm-tf-2.16.1-pjrt"),
    "v4": ("tpu-ubuntu2204-base", "tpu-vm-v4-base", "tpu-vm-tf-2.16.1-pjrt"),
    "v5e": ("v2-alpha-tpuv5-lite",),
    "v5p": ("v2-alpha-tpuv5",),
    "v6e": ("v2-alpha-tpuv6e",),
}

DEFAULT_ACCELERATOR_TYPES: dict[str, tuple[str, ...]] = {
    "us-central2-b": ("v4-8", "v4-16", "v4-32", "v4-64"),
    "us-central1-a": ("v3-8", "v3-32", "v5litepod-8", "v5litepod-16"),
    "europe-west4-a": ("v5litepod-4", "v5litepod-8", "v5litepod-16", "v3-8", "v6e-8"),
    "us-east5-a": ("v5p-8", "v5p-16"),
}
# Listed by ListLocations, but this project has no TPU access there: every call answers
# PERMISSION_DENIED, as for a TPU Research Cloud project outside its granted zones.
NO_ACCESS_ZONES: tuple[str, ...] = ("asia-east1-c",)
# Zone -> type prefixes with no spot capacity: a spot create is accepted, then its operation
# fails with code 8 (a stockout arrives inside the operation, not on CreateNode).
SPOT_STOCKOUTS: dict[str, tuple[str, ...]] = {"europe-west4-a": ("v5litepod",)}

# Spot quota metrics by generation, as the API names them in a refusal: v4 from the seeds and
# marin-community/marin#87, v5e from marin#87, v6e from marin#1612. Generations without a
# published name have no spot quota in the sandbox.
SPOT_QUOTA_METRICS = {
    "v4": "TPUV4sPreemptiblePodPerProjectPerRegionForTPUAPI",
    "v5e": "TPUV5sPreemptibleLitepodPerProjectPerRegionForTPUAPI",
    "v6e": "TPUV6EPreemptiblePerProjectPerRegionForTPUAPI",
}
# Google's wording for each refusal, with its source (a test pins each one).
STOCKOUT_CODE = 8  # RESOURCE_EXHAUSTED, inside the create operation
STOCKOUT_TEXT = (  # terraform-provider-google#10222, GoogleCloudPlatform/magic-modules#7297
    'There is no more capacity in the zone "{zone}"; you can try in another zone where Cloud '
    "TPU Nodes are offered (see https://cloud.google.com/tpu/docs/regions)"
)
QUOTA_TEXT = "Quota limit '{metric}' has been exceeded. Limit: {limit} in region {region}."
UNKNOWN_TYPE_TEXT = (  # skypilot#3840: refused by CreateNode itself (SkyPilot's CREATION_FAILED)
    "Cloud TPU received a bad request. the accelerator {type} was not found in zone {zone}"
)
RATE_LIMIT_TEXT = (  # the phrase marin-community/marin#6198 quotes; the sentence's end is ours
    "Maximum number of CreateNode requests per minute exceeded."
)
POD_STOP_TEXT = (  # Cloud TPU docs, as SkyPilot quotes them; the API's exact wording is not public
    "TPU VM pods cannot be stopped (node {name} has {hosts} workers)."
)
NO_ACCESS_TEXT = "Permission '{permission}' denied on '{resource}'"  # SkyPilot's GCP TPU filter()


def runtime_versions_for(types: tuple[str, ...]) -> tuple[str, ...]:
    generations = {accelerator_shape(t).version for t in types}
    versions = {v for g in generations for v in RUNTIME_VERSIONS_BY_GENERATION.get(g, ())}
    return tuple(sorted(versions))


class QuotaExceeded(Exception):
    """A spot create beyond the zone's spot chip quota, with the API's own wording."""


class RateLimited(Exception):
    """Too many CreateNode calls this minute (RESOURCE_EXHAUSTED, like a quota refusal)."""


class InvalidArgument(Exception):
    pass


class NoAccess(Exception):
    """The project has no TPU access in this zone (PERMISSION_DENIED)."""


class UnknownLocation(Exception):
    """A zone the project cannot see: Google answers PERMISSION_DENIED, not NOT_FOUND."""


class AlreadyExists(Exception):
    pass


class NotFound(Exception):
    pass


class FailedPrecondition(Exception):
    pass


@dataclass
class CreateRate:
    """The project's CreateNode rate quota as a token bucket: `per_minute`, bursts of `burst`.

    91 a minute is the tpu.googleapis.com/qps/create quota marin-community/marin#6198 reports.
    """

    per_minute: float = 91.0
    burst: float = 91.0
    tokens: float = -1.0  # -1: full
    at: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_minute / 60.0)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


# The TPU API's answer for a zone it does not know (HTTP 403 / PERMISSION_DENIED), as SkyPilot's
# TPU VM code catches it from nodes.list (sky/provision/gcp/instance_utils.py) and gpuhunt#98
# quotes it from google-cloud-tpu: "Location europe-west1-b is not found or access is
# unauthorized."
UNKNOWN_LOCATION_TEXT = "Location {zone} is not found or access is unauthorized."
# A runtime version the zone does not offer: INVALID_ARGUMENT, worded as Cloud TPU words a
# field it refuses (tensorflow/tpu#877: 'Cloud TPU received an invalid argument. The field
# "TensorflowVersion" cannot be "2.4".'); the TPU VM API's exact text is not public.
BAD_RUNTIME_TEXT = (
    'Cloud TPU received an invalid argument. The field "RuntimeVersion" cannot be "{v}".'
)
# Labels outside Google's rules (console.models.label_fault): INVALID_ARGUMENT, as the TPU API
# refused one in GoogleCloudPlatform/ml-testing-accelerators#461: 'resource labels are invalid:
# value "pt-r1.9-..." contains invalid character '.' at index 5 for key "test-name"'. Only that
# form is published; keys and lengths are told the same way.
BAD_LABELS_TEXT = "resource labels are invalid: {what}"


def check_labels(labels: dict[str, str]) -> None:
    """Refuse labels as the TPU API does (INVALID_ARGUMENT, its wording)."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(
            BAD_LABELS_TEXT.format(what=f"{len(labels)} labels (at most {MAX_LABELS})")
        )
    for key, value in labels.items():
        fault = label_fault(key, key=True)
        if fault:
            raise InvalidArgument(BAD_LABELS_TEXT.format(what=f'key "{key}" {fault}'))
        fault = label_fault(value, key=False)
        if fault:
            raise InvalidArgument(
                BAD_LABELS_TEXT.format(what=f'value "{value}" {fault} for key "{key}"')
            )


@dataclass(frozen=True)
class SandboxTiming:
    """How long transitions take; tests shrink these, the interactive sandbox keeps them humane."""

    create_s: float = 4.0
    start_s: float = 3.0
    stop_s: float = 2.0
    delete_s: float = 2.0
    # How long the guest agent takes to install keys after a metadata change (it watches the
    # metadata server; gcloud retries its ssh 10 x 5 s while this happens).
    key_propagation_s: float = 1.0
    # A queued request: CREATING -> ACCEPTED after queue_accept_s, WAITING_FOR_RESOURCES after
    # as long again, PROVISIONING after queue_wait_s more, ACTIVE when its nodes are READY.
    queue_accept_s: float = 1.0
    queue_wait_s: float = 4.0


@dataclass
class SandboxNode:
    name: str
    zone: str
    accelerator_type: str
    runtime_version: str
    state: str
    node_id: int
    create_time: float
    health: str = "HEALTHY"
    spot: bool = False
    preemptible: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    description: str = ""
    symptoms: list[str] = field(default_factory=list)
    pending: list[tuple[float, str]] = field(default_factory=list)
    reserved: bool = False
    api_version: str = "V2"  # V1 / V1_ALPHA1 for a legacy TPU Node
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    networks: int = 1  # network configs: a multi-NIC node lists this many endpoints per worker
    # What the VM's guest agent has applied so far (instance and project metadata), and when
    # it next catches up with a change (0: it is in step).
    guest_metadata: dict[str, str] = field(default_factory=dict)
    guest_project: dict[str, str] = field(default_factory=dict)
    guest_sync_at: float = 0.0
    queued_resource: str = ""  # the request it came from (Node.queued_resource), by its id
    multislice: bool = False  # Node.multislice_node: one slice of a multislice request

    @property
    def key(self) -> str:
        return f"{self.zone}/{self.name}"

    @property
    def hosts(self) -> int:
        return accelerator_shape(self.accelerator_type).hosts

    def hostname(self, worker: int) -> str:
        """The worker's instance name, which the VM publishes and IAP tunnels to."""
        digest = hashlib.sha256(f"{SANDBOX_PROJECT}/{self.node_id}".encode()).hexdigest()
        return f"t1v-n-{digest[:8]}-w-{worker}"


MAX_ADDRESS_BLOCKS = 5  # 310 workers a node


def loopback(node_id: int, worker: int, nic: int) -> str:
    """A worker's own loopback address: 127.<id hi>.<id lo>.<n>, as a VPC gives each VM its own.

    nic -1 is the "external" address, nic 0.. the internal one of each network; all of them
    are on this machine's 127/8, so no address the console dials ever leaves it. A pod slice's
    workers beyond the 62 one octet holds go to the next block of 32 in the second octet
    (ids stay under 8192, so blocks never meet), enough for a v4-2048's or v5p-2048's 256.
    """
    if worker >= 62 * MAX_ADDRESS_BLOCKS or nic > 2:
        raise ValueError(
            f"the sandbox addresses at most {62 * MAX_ADDRESS_BLOCKS} workers on 3 networks"
        )
    block, worker = divmod(worker, 62)
    last = 2 + worker + 64 * (nic + 1)
    return f"127.{((node_id >> 8) % 256 + 32 * block) % 256}.{node_id % 256}.{last}"


def posix_username(account: str) -> str:
    """OS Login's user name for an account: alice@example.com -> alice_example_com."""
    return re.sub(r"[^a-z0-9]", "_", account.lower())[:32]


def metadata_true(metadata: dict[str, str], key: str) -> bool | None:
    value = metadata.get(key, "").strip().lower()
    return True if value == "true" else False if value == "false" else None


def _granted(ssh_keys: str, user: str, blob: str) -> bool:
    """The guest agent's reading of `ssh-keys`: `user:[options ]type blob [comment]` lines."""
    for line in ssh_keys.splitlines():
        name, sep, rest = line.strip().partition(":")
        if sep and name == user and blob in rest.split():
            return True
    return False


@dataclass
class SandboxOperation:
    op_id: int
    zone: str
    node_name: str
    verb: str  # create | delete | stop | start
    create_time: float
    done_state: str  # the node state that completes it; GONE for delete
    error: str = ""
    end_time: float = 0.0
    # No public source says which code an operation gets when its node is deleted or
    # preempted under it; ABORTED (10) is gRPC's "the operation was cut short".
    error_code: int = 10
    fail_at: float = 0.0  # when set, the operation fails then with fail_code / fail_message
    fail_code: int = 0
    fail_message: str = ""
    resource: str = "nodes"  # or queuedResources: what node_name names

    @property
    def name(self) -> str:
        return f"projects/{SANDBOX_PROJECT}/locations/{self.zone}/operations/operation-{self.op_id}"


def _default_nodes(now: float) -> list[SandboxNode]:
    hour = 3600.0
    return [
        SandboxNode(
            "demo-v4-8",
            "us-central2-b",
            "v4-8",
            "tpu-ubuntu2204-base",
            "READY",
            1001,
            now - 26 * hour,
            labels={"team": "inference"},
        ),
        SandboxNode(
            "demo-v4-16",
            "us-central2-b",
            "v4-16",
            "tpu-ubuntu2204-base",
            "READY",
            1002,
            now - 5 * hour,
            labels={"team": "rl"},
        ),
        SandboxNode(
            "demo-spot-v4-8",
            "us-central2-b",
            "v4-8",
            "tpu-ubuntu2204-base",
            "PREEMPTED",
            1003,
            now - 50 * hour,
            spot=True,
            health="",
            labels={"team": "inference"},
            symptoms=["Node was preempted by the Compute Engine scheduler"],
        ),
        SandboxNode(
            "demo-v3-8",
            "us-central2-b",
            "v3-8",
            "tpu-vm-tf-2.16.1-pjrt",
            "READY",
            1004,
            now - 3 * 24 * hour,
        ),
        SandboxNode(
            "demo-v5e-8",
            "europe-west4-a",
            "v5litepod-8",
            "v2-alpha-tpuv5-lite",
            "READY",
            1005,
            now - 40 * 60.0,
            labels={"team": "inference"},
        ),
        SandboxNode(
            "demo-oslogin-v4-8",
            "us-central2-b",
            "v4-8",
            "tpu-ubuntu2204-base",
            "READY",
            1020,
            now - 2 * hour,
            labels={"team": "inference"},
            metadata={"enable-oslogin": "TRUE"},
            guest_metadata={"enable-oslogin": "TRUE"},
        ),
        # A node on a reservation: PROV says "reserved", not "on-demand".
        SandboxNode(
            "demo-reserved-v4-8",
            "us-central2-b",
            "v4-8",
            "tpu-ubuntu2204-base",
            "READY",
            1006,
            now - 8 * hour,
            reserved=True,
            labels={"team": "rl"},
        ),
        # READY, but its health check timed out: the console flags it.
        SandboxNode(
            "demo-v5e-timeout",
            "us-central1-a",
            "v5litepod-8",
            "v2-alpha-tpuv5-lite",
            "READY",
            1007,
            now - 2 * hour,
            health="TIMEOUT",
        ),
        # The two slices of the multislice request demo-multislice (see _default_queued).
        *(
            SandboxNode(
                f"demo-ms-{i}",
                "us-central2-b",
                "v4-16",
                "tpu-ubuntu2204-base",
                "READY",
                1030 + i,
                now - 2.6 * hour,
                labels={"team": "pretrain"},
                queued_resource="demo-multislice",
                multislice=True,
            )
            for i in range(2)
        ),
        # A state newer than the client (17: past UNKNOWN = 16), sent as its raw number.
        SandboxNode(
            "demo-v6e-next",
            "europe-west4-a",
            "v6e-8",
            "v2-alpha-tpuv6e",
            "17",
            1008,
            now - 30 * 60.0,
            health="",
        ),
    ]


def _default_queued(now: float) -> list[SandboxQueuedResource]:
    """A spot request that FAILED yesterday and still holds its 8 chips of spot quota, one
    two-slice multislice request (its nodes are in _default_nodes), and one still waiting."""
    hour = 3600.0
    return [
        SandboxQueuedResource(
            "demo-queue-failed",
            "europe-west4-a",
            "v6e-8",
            "v2-alpha-tpuv6e",
            "FAILED",
            now - 30 * hour,
            tier="spot",
            node_id="demo-queue-failed",
            error_code=STOCKOUT_CODE,
            error_message=STOCKOUT_TEXT.format(zone="europe-west4-a"),
            valid_until=now - 24 * hour,
            valid_until_duration_s=6 * hour,
            state_since=now - 24 * hour,
        ),
        SandboxQueuedResource(
            "demo-multislice",
            "us-central2-b",
            "v4-16",
            "tpu-ubuntu2204-base",
            "ACTIVE",
            now - 3 * hour,
            node_count=2,
            node_id_prefix="demo-ms",
            labels={"team": "pretrain"},
            state_since=now - 2.5 * hour,
        ),
        SandboxQueuedResource(
            "demo-queue-v5p",
            "us-east5-a",
            "v5p-8",
            "v2-alpha-tpuv5",
            "WAITING_FOR_RESOURCES",
            now - 25 * 60.0,
            tier="spot",
            node_id="demo-queue-v5p",
            valid_until=now + 6 * hour - 25 * 60.0,
            valid_until_duration_s=6 * hour,
            state_since=now - 24 * 60.0,
        ),
    ]


@dataclass
class SandboxFleet:
    """Nodes by zone, moved along their pending transitions whenever anyone looks."""

    path: Path | None
    nodes: dict[str, SandboxNode] = field(default_factory=dict)
    operations: dict[int, SandboxOperation] = field(default_factory=dict)
    next_id: int = 2000
    timing: SandboxTiming = field(default_factory=SandboxTiming)
    zones: tuple[str, ...] = tuple(sorted((*DEFAULT_ACCELERATOR_TYPES, *NO_ACCESS_ZONES)))
    no_access_zones: tuple[str, ...] = NO_ACCESS_ZONES
    spot_chip_quota: dict[str, int] = field(
        default_factory=lambda: {"us-central2-b": 4, "europe-west4-a": 8}
    )
    default_spot_quota: int = 64
    spot_stockouts: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(SPOT_STOCKOUTS))
    create_rate: CreateRate = field(default_factory=CreateRate)
    # The sandbox's stand-in for Compute Engine's project metadata (`ssh-keys`,
    # `enable-oslogin`), which the guest agents read beside each node's own.
    project_metadata: dict[str, str] = field(default_factory=dict)
    # OS Login: each account's imported public keys ("type blob").
    oslogin_keys: dict[str, list[str]] = field(default_factory=dict)
    # Queued resources by "zone/id" (see queued_resources.py for their shapes).
    queued: dict[str, SandboxQueuedResource] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # ----- persistence -------------------------------------------------------------------------
    @classmethod
    def default(cls, path: Path | None, now: float | None = None, **kw) -> SandboxFleet:
        fleet = cls(path=path, **kw)
        now = time.time() if now is None else now
        for node in _default_nodes(now):
            fleet.nodes[node.key] = node
        for qr in _default_queued(now):
            fleet.queued[qr.key] = qr
        fleet.save()
        return fleet

    @classmethod
    def load_or_default(cls, path: Path, **kw) -> SandboxFleet:
        if not path.exists():
            return cls.default(path, **kw)
        data = json.loads(path.read_text())
        fleet = cls(path=path, next_id=data.get("next_id", 2000), **kw)
        fleet.project_metadata = dict(data.get("project_metadata", {}))
        fleet.oslogin_keys = {k: list(v) for k, v in data.get("oslogin_keys", {}).items()}
        for raw in data.get("nodes", []):
            raw["pending"] = [tuple(p) for p in raw.get("pending", [])]
            node = SandboxNode(**raw)
            fleet.nodes[node.key] = node
        for raw in data.get("operations", []):
            op = SandboxOperation(**raw)
            fleet.operations[op.op_id] = op
        for raw in data.get("queued_resources", []):
            raw["pending"] = [tuple(p) for p in raw.get("pending", [])]
            qr = SandboxQueuedResource(**raw)
            fleet.queued[qr.key] = qr
        return fleet

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            data = {
                "next_id": self.next_id,
                "nodes": [asdict(n) for n in self.nodes.values()],
                "operations": [asdict(o) for o in self.operations.values()],
                "project_metadata": self.project_metadata,
                "oslogin_keys": self.oslogin_keys,
                "queued_resources": [asdict(q) for q in self.queued.values()],
            }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)

    # ----- time --------------------------------------------------------------------------------
    def advance(self, now: float | None = None) -> list[tuple[str, str, str]]:
        """Apply every transition due by `now`; returns (node key, old state, new state)."""
        now = time.time() if now is None else now
        changes: list[tuple[str, str, str]] = []
        with self._lock:
            for key, node in list(self.nodes.items()):
                while node.pending and node.pending[0][0] <= now:
                    _, new_state = node.pending.pop(0)
                    changes.append((key, node.state, new_state))
                    if new_state == GONE:
                        del self.nodes[key]
                        break
                    node.state = new_state
                    node.health = "HEALTHY" if new_state == "READY" else ""
                    if new_state == "READY":  # a booting guest agent reads metadata at once
                        self._guest_sync(node)
                if node.guest_sync_at and node.guest_sync_at <= now and node.state == "READY":
                    self._guest_sync(node)
                    changes.append((key, node.state, node.state))
            changes.extend(self._advance_queued(now))
            for op in self.operations.values():
                if op.end_time or op.error:
                    continue
                if op.fail_at and now >= op.fail_at:
                    op.error, op.error_code, op.end_time = op.fail_message, op.fail_code, now
                    continue
                if op.resource == "queuedResources":
                    self._advance_queued_operation(op, now)
                    continue
                target = self.nodes.get(f"{op.zone}/{op.node_name}")
                state = target.state if target else GONE
                if state == op.done_state:
                    op.end_time = now
                elif target is None or state in {"PREEMPTED", "TERMINATED"}:
                    op.error = f"Node {op.node_name} ended {state} before the {op.verb} finished."
                    op.end_time = now
            if changes:
                self.save()
        return changes

    def _guest_sync(self, node: SandboxNode) -> None:
        node.guest_metadata = dict(node.metadata)
        node.guest_project = dict(self.project_metadata)
        node.guest_sync_at = 0.0

    # ----- the guest agent's and OS Login's view: who may log in -------------------------------
    def authorized(self, zone: str, name: str, user: str, blob: str) -> bool:
        """Whether the worker's sshd lets `user` in with the key whose blob is `blob`.

        As a TPU VM does: with `enable-oslogin` on (instance metadata first, then project),
        the OS Login profile whose POSIX user is `user` must hold the key, and the guest
        agent's metadata keys do not count; otherwise the guest agent's `ssh-keys`, the
        node's and (unless `block-project-ssh-keys`) the project's, as it last applied them.
        """
        with self._lock:
            node = self.nodes.get(f"{zone}/{name}")
            if node is None or node.state != "READY":
                return False
            instance, project = node.guest_metadata, node.guest_project
            oslogin = metadata_true(instance, "enable-oslogin")
            if oslogin is None:
                oslogin = metadata_true(project, "enable-oslogin")
            if oslogin:
                return any(
                    posix_username(account) == user and any(blob in k.split() for k in keys)
                    for account, keys in self.oslogin_keys.items()
                )
            lines = instance.get("ssh-keys", "")
            if not metadata_true(instance, "block-project-ssh-keys"):
                lines += "\n" + project.get("ssh-keys", "")
            return _granted(lines, user, blob)

    def update_metadata(self, zone: str, name: str, metadata: dict[str, str]) -> SandboxOperation:
        """UpdateNode with `update_mask="metadata"`: the map is replaced whole."""
        self.advance()
        with self._lock:
            node = self.nodes.get(f"{zone}/{name}")
            if node is None:
                raise NotFound(f"Node {name} not found in zone {zone}.")
            if node.state not in {"READY", "STOPPED"}:
                raise FailedPrecondition(f"Cannot update node {name} in state {node.state}.")
            node.metadata = dict(metadata)
            node.guest_sync_at = time.time() + self.timing.key_propagation_s
            op = self._new_operation(zone, name, "update", node.state)
            self.save()
            return op

    def set_project_metadata(self, key: str, value: str | None) -> None:
        """Change the stand-in for Compute Engine project metadata; every guest agent follows."""
        with self._lock:
            if value is None:
                self.project_metadata.pop(key, None)
            else:
                self.project_metadata[key] = value
            due = time.time() + self.timing.key_propagation_s
            for node in self.nodes.values():
                node.guest_sync_at = due
        self.save()

    def import_oslogin_key(self, account: str, public_key: str) -> list[str]:
        with self._lock:
            keys = self.oslogin_keys.setdefault(account, [])
            if public_key not in keys:
                keys.append(public_key)
            found = list(keys)
        self.save()
        return found

    def delete_oslogin_key(self, account: str, public_key: str) -> bool:
        with self._lock:
            keys = self.oslogin_keys.get(account, [])
            if public_key not in keys:
                return False
            keys.remove(public_key)
        self.save()
        return True

    # ----- reads -------------------------------------------------------------------------------
    def _known_zone(self, zone: str) -> None:
        """Every call naming a zone that ListLocations does not list is refused, as Google's."""
        if zone not in self.zones:
            raise UnknownLocation(UNKNOWN_LOCATION_TEXT.format(zone=zone))

    def _in_zone(self, table: Mapping[str, _Row], zone: str) -> builtins.list[_Row]:
        """A List call's answer: the zone checked, transitions applied, sorted by name."""
        self._known_zone(zone)
        self.advance()
        with self._lock:
            return sorted((r for r in table.values() if r.zone == zone), key=lambda r: r.name)

    def _one(self, table: Mapping[str, _Row], zone: str, name: str, what: str) -> _Row:
        """A Get call's answer, or NOT_FOUND in Google's words for the resource kind."""
        self._known_zone(zone)
        self.advance()
        with self._lock:
            row = table.get(f"{zone}/{name}")
            if row is None:
                raise NotFound(f"{what} {name} not found in zone {zone}.")
            return row

    def list(self, zone: str) -> builtins.list[SandboxNode]:
        return self._in_zone(self.nodes, zone)

    def get(self, zone: str, name: str) -> SandboxNode:
        return self._one(self.nodes, zone, name, "Node")

    def operation(self, op_id: int) -> SandboxOperation:
        self.advance()
        with self._lock:
            if op_id not in self.operations:
                raise NotFound(f"Operation {op_id} not found.")
            return self.operations[op_id]

    def accelerator_types(self, zone: str) -> tuple[str, ...]:
        return DEFAULT_ACCELERATOR_TYPES.get(zone, ("v4-8", "v5litepod-8"))

    def runtime_versions(self, zone: str) -> tuple[str, ...]:
        """What ListRuntimeVersions lists for the zone; CreateNode accepts only these."""
        return runtime_versions_for(self.accelerator_types(zone))

    def check_access(self, zone: str, permission: str, resource: str) -> None:
        if zone in self.no_access_zones:
            raise NoAccess(NO_ACCESS_TEXT.format(permission=permission, resource=resource))

    def _stockout(self, zone: str, accelerator_type: str) -> bool:
        return any(accelerator_type.startswith(p) for p in self.spot_stockouts.get(zone, ()))

    # ----- writes ------------------------------------------------------------------------------
    def _new_operation(self, zone: str, name: str, verb: str, done_state: str) -> SandboxOperation:
        op = SandboxOperation(self.next_id, zone, name, verb, time.time(), done_state)
        self.next_id += 1
        self.operations[op.op_id] = op
        return op

    def _spot_chips_in_use(self, zone: str, version: str = "") -> int:
        """Spot chips of one generation (each has its own quota metric): spot nodes of their
        own, and every spot request that still holds its chips (a SUSPENDED or FAILED one
        too, until it is deleted)."""

        def counted(accelerator_type: str) -> bool:
            return not version or accelerator_shape(accelerator_type).version == version

        nodes = sum(
            accelerator_shape(n.accelerator_type).chips
            for n in self.nodes.values()
            if n.zone == zone
            and (n.spot or n.preemptible)
            and not n.queued_resource
            and counted(n.accelerator_type)
        )
        return nodes + sum(
            q.chips
            for q in self.queued.values()
            if q.zone == zone and q.spot and q.state in HOLDS_QUOTA and counted(q.accelerator_type)
        )

    def _check_spot_quota(self, zone: str, accelerator_type: str, chips: int) -> None:
        version = accelerator_shape(accelerator_type).version
        metric = SPOT_QUOTA_METRICS.get(version)
        if not metric:
            return
        quota = self.spot_chip_quota.get(zone, self.default_spot_quota)
        if self._spot_chips_in_use(zone, version) + chips > quota:
            region = zone.rsplit("-", 1)[0]
            raise QuotaExceeded(QUOTA_TEXT.format(metric=metric, limit=quota, region=region))

    def create(
        self,
        zone: str,
        name: str,
        accelerator_type: str,
        runtime_version: str,
        *,
        spot: bool = False,
        preemptible: bool = False,
        labels: dict[str, str] | None = None,
        description: str = "",
        metadata: dict[str, str] | None = None,
        networks: int = 1,
    ) -> SandboxOperation:
        self._known_zone(zone)
        check_labels(labels or {})
        if runtime_version not in self.runtime_versions(zone):
            raise InvalidArgument(BAD_RUNTIME_TEXT.format(v=runtime_version))
        self.advance()
        with self._lock:
            if f"{zone}/{name}" in self.nodes:
                raise AlreadyExists(f"Node {name} already exists in zone {zone}.")
            shape = accelerator_shape(accelerator_type)
            if shape.chips == 0 or accelerator_type not in self.accelerator_types(zone):
                raise InvalidArgument(UNKNOWN_TYPE_TEXT.format(type=accelerator_type, zone=zone))
            if spot or preemptible:
                self._check_spot_quota(zone, accelerator_type, shape.chips)
            now = time.time()
            if not self.create_rate.take(now):
                raise RateLimited(RATE_LIMIT_TEXT)
            stockout = (spot or preemptible) and self._stockout(zone, accelerator_type)
            fail_at = now + self.timing.create_s / 2 if stockout else 0.0
            node = SandboxNode(
                name,
                zone,
                accelerator_type,
                runtime_version,
                "CREATING",
                self.next_id,
                now,
                health="",
                spot=spot,
                preemptible=preemptible,
                labels=dict(labels or {}),
                description=description,
                pending=[(fail_at, GONE)] if stockout else [(now + self.timing.create_s, "READY")],
                metadata=dict(metadata or {}),
                networks=max(1, networks),
            )
            self.next_id += 1
            self.nodes[node.key] = node
            op = self._new_operation(zone, name, "create", "READY")
            if stockout:  # the node goes away as its operation fails, code 8 and Google's text
                op.fail_at, op.fail_code = fail_at, STOCKOUT_CODE
                op.fail_message = STOCKOUT_TEXT.format(zone=zone)
            self.save()
            return op

    def _transition(
        self, zone: str, name: str, verb: str, allowed: set[str], via: str, to: str, after: float
    ) -> SandboxOperation:
        self._known_zone(zone)
        self.advance()
        with self._lock:
            node = self.nodes.get(f"{zone}/{name}")
            if node is None:
                raise NotFound(f"Node {name} not found in zone {zone}.")
            if allowed and node.state not in allowed:
                raise FailedPrecondition(f"Cannot {verb} node {name} in state {node.state}.")
            node.state, node.health = via, ""
            node.pending = [(time.time() + after, to)]
            op = self._new_operation(zone, name, verb, to)
            self.save()
            return op

    def delete(self, zone: str, name: str) -> SandboxOperation:
        return self._transition(zone, name, "delete", set(), "DELETING", GONE, self.timing.delete_s)

    def _refuse_pods(self, zone: str, name: str) -> None:
        node = self.get(zone, name)
        if node.hosts > 1:
            raise FailedPrecondition(POD_STOP_TEXT.format(name=name, hosts=node.hosts))

    def stop(self, zone: str, name: str) -> SandboxOperation:
        self._refuse_pods(zone, name)
        return self._transition(
            zone, name, "stop", {"READY"}, "STOPPING", "STOPPED", self.timing.stop_s
        )

    def start(self, zone: str, name: str) -> SandboxOperation:
        self._refuse_pods(zone, name)
        return self._transition(
            zone, name, "start", {"STOPPED"}, "STARTING", "READY", self.timing.start_s
        )

    def preempt(self, zone: str, name: str) -> None:
        """What Compute Engine does to a spot VM: it goes PREEMPTED at once and stays there.

        A spot node of a queued resource is reclaimed through its request instead: the
        request goes SUSPENDING (initiated by SERVICE), every node of it is deleted, then it
        is SUSPENDED (the SUSPENDING/SUSPENDED docstrings of QueuedResourceState).
        """
        with self._lock:
            node = self.nodes.get(f"{zone}/{name}")
            if node is None:
                raise NotFound(f"Node {name} not found in zone {zone}.")
            if not (node.spot or node.preemptible):
                raise FailedPrecondition(f"Node {name} is on-demand; only spot VMs are preempted.")
            qr = self.queued.get(f"{zone}/{node.queued_resource}")
            if qr is not None:
                self._suspend(qr, "SERVICE", time.time())
                self.save()
                return
            node.state, node.health, node.pending = "PREEMPTED", "", []
            node.symptoms = ["Node was preempted by the Compute Engine scheduler"]
        self.advance()
        self.save()

    # ----- queued resources --------------------------------------------------------------------
    def list_queued(self, zone: str) -> builtins.list[SandboxQueuedResource]:
        return self._in_zone(self.queued, zone)

    def get_queued(self, zone: str, name: str) -> SandboxQueuedResource:
        return self._one(self.queued, zone, name, "Queued resource")

    def _queue_schedule(self, qr: SandboxQueuedResource, now: float) -> None:
        """When it is accepted, starts waiting and is selected; a spot request in a zone out of
        spot capacity waits until its `valid until` time, if it has one, then FAILs."""
        t = self.timing
        accepted = now + t.queue_accept_s
        waiting = max(accepted + t.queue_accept_s, qr.valid_after)
        qr.pending = [(accepted, "ACCEPTED"), (waiting, "WAITING_FOR_RESOURCES")]
        if not (qr.spot and self._stockout(qr.zone, qr.accelerator_type)):
            qr.pending.append((waiting + t.queue_wait_s, "PROVISIONING"))

    def create_queued(self, qr: SandboxQueuedResource) -> SandboxOperation:
        """CreateQueuedResource: refused at once as CreateNode refuses (bad type or version,
        labels, names taken, spot quota); otherwise it is queued and its operation ends when
        it is ACCEPTED."""
        zone = qr.zone
        self._known_zone(zone)
        check_labels(qr.labels)
        if not qr.name:
            raise InvalidArgument("queued_resource_id is required.")
        if qr.runtime_version not in self.runtime_versions(zone):
            raise InvalidArgument(BAD_RUNTIME_TEXT.format(v=qr.runtime_version))
        shape = accelerator_shape(qr.accelerator_type)
        if shape.chips == 0 or qr.accelerator_type not in self.accelerator_types(zone):
            raise InvalidArgument(UNKNOWN_TYPE_TEXT.format(type=qr.accelerator_type, zone=zone))
        self.advance()
        with self._lock:
            if qr.key in self.queued:
                raise AlreadyExists(f"Queued resource {qr.name} already exists in zone {zone}.")
            taken = [n for n in qr.node_names() if f"{zone}/{n}" in self.nodes]
            if taken:
                raise AlreadyExists(f"Node {taken[0]} already exists in zone {zone}.")
            if qr.spot:
                self._check_spot_quota(zone, qr.accelerator_type, qr.chips)
            self._queue_schedule(qr, qr.create_time)
            self.queued[qr.key] = qr
            op = self._new_operation(zone, qr.name, "create", "ACCEPTED")
            op.resource = "queuedResources"
            self.save()
            return op

    def _queued_nodes(self, qr: SandboxQueuedResource) -> builtins.list[SandboxNode]:
        return [
            n for n in self.nodes.values() if n.zone == qr.zone and n.queued_resource == qr.name
        ]

    def _enter(self, qr: SandboxQueuedResource, state: str, now: float) -> None:
        qr.state, qr.state_since = state, now
        if state == "PROVISIONING":
            for name in qr.node_names():
                node = SandboxNode(
                    name,
                    qr.zone,
                    qr.accelerator_type,
                    qr.runtime_version,
                    "CREATING",
                    self.next_id,
                    now,
                    health="",
                    spot=qr.spot,
                    labels=dict(qr.labels),
                    description=qr.description,
                    pending=[(now + self.timing.create_s, "READY")],
                    metadata=dict(qr.metadata),
                    reserved=qr.tier == "guaranteed" and bool(qr.reservation),
                    queued_resource=qr.name,
                    multislice=qr.multislice,
                )
                self.next_id += 1
                self.nodes[node.key] = node

    def _suspend(self, qr: SandboxQueuedResource, initiator: str, now: float) -> None:
        """SUSPENDING: every node of the request is deleted; SUSPENDED once they are gone."""
        qr.state, qr.initiator, qr.state_since, qr.pending = "SUSPENDING", initiator, now, []
        for node in self._queued_nodes(qr):
            if node.state != "DELETING":
                node.state, node.health = "DELETING", ""
                node.pending = [(now + self.timing.delete_s, GONE)]

    def _advance_queued(self, now: float) -> builtins.list[tuple[str, str, str]]:
        changes: list[tuple[str, str, str]] = []
        for key, qr in list(self.queued.items()):
            before = qr.state
            while qr.pending and qr.pending[0][0] <= now:
                at, state = qr.pending.pop(0)
                if state == GONE:
                    del self.queued[key]
                    break
                if qr.valid_until and at >= qr.valid_until and state == "PROVISIONING":
                    break  # its time ran out first: failed below
                self._enter(qr, state, at)
            if key not in self.queued:
                changes.append((f"queued:{key}", before, GONE))
                continue
            nodes = self._queued_nodes(qr)
            waiting = qr.state in {"CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES"}
            if waiting and qr.valid_until and now >= qr.valid_until:
                qr.state, qr.state_since, qr.pending = "FAILED", qr.valid_until, []
                qr.error_code, qr.error_message = EXPIRED_CODE, EXPIRED_TEXT
            elif qr.state == "PROVISIONING" and nodes and all(n.state == "READY" for n in nodes):
                qr.state, qr.state_since = "ACTIVE", now
            elif qr.state == "ACTIVE" and (
                len(nodes) < qr.node_count or any(n.state == "DELETING" for n in nodes)
            ):
                self._suspend(qr, "USER", now)  # a node deleted by hand: the request stays
            elif qr.state == "SUSPENDING" and not nodes:
                qr.state, qr.state_since = "SUSPENDED", now
            elif qr.state == "DELETING" and not nodes and not qr.pending:
                qr.pending = [(now + self.timing.delete_s / 2, GONE)]
            if qr.state != before:
                changes.append((f"queued:{key}", before, qr.state))
        return changes

    def _advance_queued_operation(self, op: SandboxOperation, now: float) -> None:
        qr = self.queued.get(f"{op.zone}/{op.node_name}")
        if op.done_state == GONE:
            if qr is None:
                op.end_time = now
        elif qr is None:
            op.error, op.end_time = f"Queued resource {op.node_name} was deleted.", now
        elif qr.state != "CREATING":
            op.end_time = now

    def delete_queued(self, zone: str, name: str, *, force: bool = False) -> SandboxOperation:
        """DeleteQueuedResource: with force its nodes are deleted first; without, only a request
        with no node left, or ACCEPTED, FAILED or SUSPENDED (the `force` field's docstring)."""
        self._known_zone(zone)
        self.advance()
        with self._lock:
            qr = self.queued.get(f"{zone}/{name}")
            if qr is None:
                raise NotFound(f"Queued resource {name} not found in zone {zone}.")
            nodes = self._queued_nodes(qr)
            if nodes and not force and qr.state not in DELETABLE_WITHOUT_FORCE:
                raise FailedPrecondition(NOT_FORCED_TEXT.format(name=name, state=qr.state))
            now = time.time()
            qr.state, qr.initiator, qr.state_since, qr.pending = "DELETING", "USER", now, []
            for node in nodes:
                if node.state != "DELETING":
                    node.state, node.health = "DELETING", ""
                    node.pending = [(now + self.timing.delete_s, GONE)]
            op = self._new_operation(zone, name, "delete", GONE)
            op.resource = "queuedResources"
            self.save()
            return op

    def reset_queued(self, zone: str, name: str) -> SandboxOperation:
        """ResetQueuedResource: a SUSPENDED request goes back into the queue."""
        self._known_zone(zone)
        self.advance()
        with self._lock:
            qr = self.queued.get(f"{zone}/{name}")
            if qr is None:
                raise NotFound(f"Queued resource {name} not found in zone {zone}.")
            if qr.state != "SUSPENDED":
                raise FailedPrecondition(RESET_TEXT.format(name=name, state=qr.state))
            now = time.time()
            qr.state, qr.initiator, qr.state_since = "CREATING", "", now
            self._queue_schedule(qr, now)
            op = self._new_operation(zone, name, "reset", "ACCEPTED")
            op.resource = "queuedResources"
            self.save()
            return op

    def add_node(self, node: SandboxNode) -> None:
        """For benchmarks and tests that need a fleet of a given size."""
        with self._lock:
            self.nodes[node.key] = node

    def new_node_id(self) -> int:
        with self._lock:
            self.next_id += 1
            return self.next_id
