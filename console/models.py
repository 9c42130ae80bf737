"""Plain values that cross the console's layers: nodes, workers, fleet snapshots, jobs and their
statuses, probes and cleanup plans, launch plans, and errors.

Nothing here does I/O or imports another module of ours, so every layer can share these types;
present/ imports nothing else (an import contract in pyproject.toml says so).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

# States a user must notice at a glance; the UI colours them.
ALARM_STATES = frozenset({"PREEMPTED", "DELETING", "TERMINATED", "REPAIRING", "UNKNOWN"})
TRANSIENT_STATES = frozenset(
    {"CREATING", "STARTING", "STOPPING", "RESTARTING", "REIMAGING", "HIDING", "UNHIDING"}
)


@dataclass(frozen=True)
class Worker:
    """One host of a TPU VM slice, addressed as gcloud's `--worker=<index>`."""

    index: int
    internal_ip: str
    external_ip: str = ""
    # The endpoint's `port`: 8470, the TPU runtime's, on every real node. Shown, never dialled:
    # ssh goes to port 22 (or `[ssh] port`), as gcloud's does.
    runtime_port: int = 0

    def address(self, internal: bool = False) -> str:
        """The address ssh dials: external unless asked for internal or none exists."""
        if internal or not self.external_ip:
            return self.internal_ip
        return self.external_ip


@dataclass(frozen=True)
class AcceleratorShape:
    """What an accelerator type name implies: the TPU generation, chips and hosts."""

    version: str
    chips: int
    hosts: int
    device_kind: str  # "accel" for /dev/accel<N> (v2-v4), "vfio" for /dev/vfio/<N> (v5e and later)

    @property
    def chips_per_host(self) -> int:
        return max(1, self.chips // self.hosts)


_TYPE_RE = re.compile(r"^(v\d+[a-z]*?)(?:litepod|lite)?-(\d+)$")


# The API's AcceleratorConfig.Type names, and the gcloud-style type prefix each stands for.
CONFIG_TYPE_PREFIX = {
    "V2": "v2",
    "V3": "v3",
    "V4": "v4",
    "V5P": "v5p",
    "V5LITE_POD": "v5litepod",
    "V6E": "v6e",
}


def type_from_config(config_type: str, topology: str) -> str:
    """The `acceleratorType` name a chip-based `acceleratorConfig` (type + topology) stands for.

    Why: nodes created with `--type v4 --topology 2x2x2` may carry an empty `acceleratorType`;
    gcloud's names count TensorCores (two per chip) for v2-v4 and v5p, chips for v5e and v6e.
    """
    prefix = CONFIG_TYPE_PREFIX.get(config_type.upper(), "")
    dims = [int(d) for d in re.findall(r"\d+", topology)]
    if not prefix or not dims:
        return ""
    chips = 1
    for d in dims:
        chips *= d
    count = chips if prefix in {"v5litepod", "v6e"} else chips * 2
    return f"{prefix}-{count}"


def accelerator_shape(accelerator_type: str) -> AcceleratorShape:
    """Decode "v4-16" style names.

    Why by rule: the API gives the type as a string; v2-v5p count TensorCores (two per chip, four
    chips per host), v5e and v6e count chips (up to eight on one host, four per host beyond).
    """
    match = _TYPE_RE.match(accelerator_type.strip().lower())
    if not match:
        return AcceleratorShape(version="?", chips=0, hosts=1, device_kind="accel")
    family, count = match.group(1), int(match.group(2))
    if accelerator_type.startswith("v5litepod") or family in {"v5e", "v6e"}:
        version = "v5e" if family.startswith("v5") else family
        hosts = 1 if count <= 8 else count // 4
        return AcceleratorShape(version=version, chips=count, hosts=hosts, device_kind="vfio")
    chips = max(1, count // 2)
    hosts = max(1, chips // 4)
    device_kind = "vfio" if family == "v5p" else "accel"
    return AcceleratorShape(version=family, chips=chips, hosts=hosts, device_kind=device_kind)


# Google's label rules, as gcloud checks them before it calls and the API enforces them
# (googlecloudsdk/command_lib/util/args/labels_util.py: keys `[\p{Ll}\p{Lo}][\p{Ll}\p{Lo}\p{N}_-]
# {0,62}`, values `[\p{Ll}\p{Lo}\p{N}_-]{0,63}`; Resource Manager's "Requirements for labels":
# at most 64 labels on a resource, international characters allowed).
MAX_LABELS = 64
MAX_LABEL_CHARS = 63


def _label_char(c: str, first: bool) -> bool:
    """gcloud's test: a lowercase (or caseless) letter; after the first, also a digit, - or _."""
    lower = c.isalpha() and (c.islower() or not c.isupper())
    return lower if first else lower or c.isdigit() or c in "-_"


def label_fault(text: str, *, key: bool) -> str:
    """What breaks Google's rule for a label key (or value), in a few words; "" when none."""
    if key and not text:
        return "is empty"
    if len(text) > MAX_LABEL_CHARS:
        return f"is {len(text)} characters long (at most {MAX_LABEL_CHARS})"
    for index, c in enumerate(text):
        if not _label_char(c, first=key and index == 0):
            return f"contains invalid character {c!r} at index {index}"
    return ""


@dataclass(frozen=True)
class Symptom:
    """Something the API noticed on a node, on one worker or on the whole slice."""

    kind: str  # the API's SymptomType name (a number when newer than the client)
    details: str = ""
    worker_id: str = ""
    create_time: datetime | None = None

    def __str__(self) -> str:
        where = f"worker {self.worker_id}: " if self.worker_id else ""
        return where + (self.details or self.kind)


@dataclass(frozen=True)
class DataDisk:
    source_disk: str
    mode: str = ""  # READ_WRITE | READ_ONLY


@dataclass(frozen=True)
class Node:
    """A TPU VM (a slice of one or more workers) as the console shows it."""

    name: str
    zone: str
    project: str
    accelerator_type: str
    state: str
    health: str = ""
    spot: bool = False
    preemptible: bool = False
    runtime_version: str = ""
    workers: tuple[Worker, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    create_time: datetime | None = None
    symptoms: tuple[Symptom, ...] = ()
    node_id: int = 0
    description: str = ""
    health_description: str = ""
    topology: str = ""
    reserved: bool = False
    accelerator_config_type: str = ""  # AcceleratorConfig.type: V4, V5LITE_POD, ...
    # accelerator_type came from accelerator_config (the API gave none); see type_from_config
    type_from_config: bool = False
    api_version: str = ""  # V1_ALPHA1 | V1 (legacy TPU Nodes) | V2_ALPHA1 | V2
    network: str = ""
    subnetwork: str = ""
    external_ips: bool | None = None  # network_config.enable_external_ips; None: not said
    service_account: str = ""
    service_account_scopes: tuple[str, ...] = ()
    data_disks: tuple[DataDisk, ...] = ()
    # The node's metadata (`ssh-keys`, `enable-oslogin`, `startup-script`, ...), as the API has it.
    metadata: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    queued_resource: str = ""  # the id of the queued resource that requested it, if one did
    multislice_node: bool = False  # one slice of a multislice request

    @property
    def key(self) -> str:
        """Stable identity across refreshes: zone and name together are unique in a project."""
        return f"{self.zone}/{self.name}"

    @property
    def queued_key(self) -> str:
        """Its request's key (zone/id), or "" for a node created on its own."""
        return f"{self.zone}/{self.queued_resource}" if self.queued_resource else ""

    @property
    def accelerator_version(self) -> str:
        return accelerator_shape(self.accelerator_type).version

    @property
    def shape(self) -> AcceleratorShape:
        return accelerator_shape(self.accelerator_type)

    @property
    def hosts(self) -> int:
        """Workers in the slice: the endpoints the API lists, else what the type implies."""
        return max(len(self.workers), self.shape.hosts)

    @property
    def multi_host(self) -> bool:
        return self.hosts > 1

    @property
    def legacy(self) -> bool:
        """A TPU Node of the v1 API (no VM to ssh into); gcloud's tpu-vm commands leave it out."""
        return self.api_version.upper().startswith("V1")

    @property
    def provisioning(self) -> str:
        if self.spot:
            return "spot"
        if self.preemptible:
            return "preemptible"
        if self.reserved:
            return "reserved"
        return "on-demand"

    @property
    def needs_attention(self) -> bool:
        return self.state in ALARM_STATES or health_is_bad(self.health) or self.state.isdigit()

    def age_seconds(self, now: datetime) -> float | None:
        if self.create_time is None:
            return None
        return max(0.0, (now - self.create_time).total_seconds())


def health_is_bad(health: str) -> bool:
    """TIMEOUT (the health check got no answer) is as alarming as an UNHEALTHY_* value."""
    return health == "TIMEOUT" or health.startswith("UNHEALTHY") or health.isdigit()


# QueuedResourceState.State, in the order a request is meant to go through them.
QUEUE_PROGRESS = ("CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE")
# States in which a request still counts its chips against the project's quota, with no node
# to show for it: the ones users forget (issue #17).
QUOTA_HOLDING_STATES = frozenset({"FAILED", "SUSPENDED"})
RECLAIMED = "spot capacity reclaimed by the TPU service"


@dataclass(frozen=True)
class QueuedResource:
    """A request for TPU VMs that waits in a queue (`gcloud compute tpus queued-resources`)."""

    name: str
    zone: str
    project: str
    state: str  # QueuedResourceState.State name (a number when newer than the client)
    accelerator_type: str = ""
    runtime_version: str = ""
    tier: str = ""  # spot | guaranteed | "" (on-demand)
    state_initiator: str = ""  # USER | SERVICE: who caused the state (SUSPENDING/SUSPENDED)
    node_count: int = 1
    node_id_prefix: str = ""
    node_names: tuple[str, ...] = ()  # the nodes it asks for
    create_time: datetime | None = None
    valid_until: datetime | None = None
    valid_until_s: float = 0.0  # the wait bound as a duration (valid_until_duration)
    valid_after: datetime | None = None
    error_code: int = 0  # failed_data.error
    error_message: str = ""
    reservation: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.zone}/{self.name}"

    @property
    def multislice(self) -> bool:
        return self.node_count > 1

    @property
    def chips(self) -> int:
        return accelerator_shape(self.accelerator_type).chips * self.node_count

    @property
    def provisioning(self) -> str:
        return {"spot": "spot", "guaranteed": "reserved"}.get(self.tier, "on-demand")

    @property
    def holds_quota(self) -> bool:
        """A request with nothing to show that still counts against the quota."""
        return self.state in QUOTA_HOLDING_STATES

    @property
    def reclaimed(self) -> bool:
        """The TPU service took its nodes back (spot capacity reclaimed)."""
        return self.state in {"SUSPENDING", "SUSPENDED"} and self.state_initiator == "SERVICE"

    def age_seconds(self, now: datetime) -> float | None:
        if self.create_time is None:
            return None
        return max(0.0, (now - self.create_time).total_seconds())

    def leaving_reason(self) -> str:
        """Who took its nodes away and why, read from the request: the TPU service (spot
        capacity reclaimed), or a user; "" when the request says nothing of it."""
        if self.reclaimed:
            return (
                f"{RECLAIMED} (queued resource {self.name} is {self.state}, initiated by "
                "SERVICE): not a user or a policy. Delete the request to free its quota, or "
                "reset it to queue again."
            )
        if self.state in {"SUSPENDING", "SUSPENDED", "DELETING"} and self.state_initiator:
            return (
                f"its queued resource {self.name} is {self.state}, initiated by "
                f"{self.state_initiator}."
            )
        return ""

    def wait_bound(self) -> str:
        """ "valid for 6h" / "until 14:05" / "": the queueing policy, as a user set it."""
        if self.valid_until_s:
            return f"valid for {format_age(self.valid_until_s)}"
        if self.valid_until is not None:
            return f"until {self.valid_until.astimezone():%Y-%m-%d %H:%M}"
        if self.valid_after is not None:
            return f"after {self.valid_after.astimezone():%Y-%m-%d %H:%M}"
        return ""


@dataclass(frozen=True)
class ZoneFailure:
    """A zone whose listing failed: shown as unreachable, never as an empty zone."""

    zone: str
    reason: str
    remedy: str = ""
    code: str = ""


@dataclass(frozen=True)
class FleetSnapshot:
    """Every node the console could see at one moment, and the zones it could not reach.

    `zones` are the zones listed (with TPU access); `no_access` the discovered zones that
    answered PERMISSION_DENIED or NOT_FOUND (the project has no TPU access there), shown as
    one quiet summary, never as a failure; `legacy` the v1 TPU Nodes left out, as gcloud does.
    """

    nodes: tuple[Node, ...]
    unreachable: tuple[ZoneFailure, ...] = ()
    zones: tuple[str, ...] = ()
    taken_at: datetime | None = None
    no_access: tuple[str, ...] = ()
    zones_source: str = ""
    legacy: tuple[str, ...] = ()
    queued_resources: tuple[QueuedResource, ...] = ()

    def queued(self, key: str) -> QueuedResource | None:
        """The request of that key (zone/id), if the listing saw it."""
        return next((q for q in self.queued_resources if q.key == key), None)

    @property
    def zones_known(self) -> int:
        return len(self.zones) + len(self.no_access)

    def access_summary(self) -> str:
        """ "TPU access in 3 of 41 zones", or just "3 zones" when every zone answered."""
        if self.no_access:
            return f"TPU access in {len(self.zones)} of {self.zones_known} zones"
        return f"{len(self.zones)} zone{'s' if len(self.zones) != 1 else ''}"


@dataclass(frozen=True)
class AcceleratorTypeInfo:
    name: str
    topology: str = ""


class ConsoleError(Exception):
    """A failure the user can act on: what happened (`reason`) and what to do (`remedy`).

    `field` names the input at fault (a template parameter, `worker`, a config key) so a form
    can mark it without reading the text. `main()` prints `str(error)` as one sentence and exits
    with `exit_code` (2: it could not run); nothing else turns these into exit statuses.
    """

    def __init__(self, reason: str, remedy: str = "", *, field: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.remedy = remedy
        self.field = field

    @property
    def exit_code(self) -> int:
        return 2

    def __str__(self) -> str:
        return f"{self.reason} {self.remedy}".strip() if self.remedy else self.reason


class FleetError(ConsoleError):
    """A failure from the fleet (the API, the sandbox, the workers).

    `code` is the API's gRPC status name (RESOURCE_EXHAUSTED, ...); `kind` what it means for
    the console: quota, stockout, rate_limit, reserved_capacity, unknown_type, pod_stop, or
    "" when the code says it all.
    """

    def __init__(
        self, reason: str, remedy: str = "", *, code: str = "", kind: str = "", field: str = ""
    ) -> None:
        super().__init__(reason, remedy, field=field)
        self.code = code
        self.kind = kind

    @property
    def no_room(self) -> bool:
        """The cloud had no room (capacity, quota or rate): retry later, elsewhere or on-demand."""
        return self.kind in CAPACITY_KINDS

    @property
    def exit_code(self) -> int:
        """3 when the cloud had no room (retry later, elsewhere or on-demand), else 2."""
        return 3 if self.no_room else 2


class WorkerSelectionError(FleetError):
    """A `--worker` value that names no worker of the node (or is not a selection at all).

    A FleetError so that every path that reaches workers (and already says a FleetError in one
    sentence) says this one too; `field` is "worker" for the forms.
    """

    def __init__(self, reason: str, remedy: str = "") -> None:
        super().__init__(reason, remedy, field="worker")  # ours, not the API's: no code


class ConfigError(ConsoleError):
    """A config.toml (or gcloud configuration) the console cannot use; `field` is the key."""


CAPACITY_KINDS = frozenset({"quota", "stockout", "rate_limit", "reserved_capacity"})


def format_age(seconds: float | None) -> str:
    """Ages as k9s shows them: the two largest units, no more."""
    if seconds is None:
        return "-"
    s = int(seconds)
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


class SshError(FleetError):
    """An ssh failure on one worker. Each way it fails is a subclass; `kind` names the class
    in summaries (`w1 timeout: ...`) and is never matched as text: test with isinstance."""

    kind = "lost"

    def __init__(self, reason: str, remedy: str = "") -> None:
        super().__init__(reason, remedy, code=type(self).kind, kind=type(self).kind)

    @property
    def no_room(self) -> bool:
        return False

    @property
    def transient(self) -> bool:
        """Worth another try on the same connection settings (the link, not the setup)."""
        return isinstance(self, SshLinkError)


class SshAuthError(SshError):
    """The worker refused who we are (the key, the user, OS Login)."""

    kind = "auth"


class SshHostKeyError(SshError):
    """The worker's host key differs from the published or pinned one."""

    kind = "host_key"


class SshKeyError(SshError):
    """Our own private key cannot be read or used."""

    kind = "key"


class SshConfigError(SshError):
    """The configuration to reach it (a jump host, a proxy, a worker setup) does not work."""

    kind = "config"


class SshLinkError(SshError):
    """The network path failed: worth trying again."""

    kind = "lost"


class SshTimeout(SshLinkError):
    kind = "timeout"


class SshRefused(SshLinkError):
    kind = "refused"


class SshLost(SshLinkError):
    """The connection dropped (or never came up for a reason the others do not name)."""

    kind = "lost"


class NodeGone(FleetError):
    """The VM a job ran on is no more (deleted, preempted, stopped): its job ended with it."""

    def __init__(self, reason: str, state: str) -> None:
        super().__init__(reason, code="NODE_GONE")
        self.state = state  # what the API says of it now; GONE when it no longer exists


def parse_worker_selection(selection: str, count: int) -> tuple[int, ...]:
    """gcloud's `--worker`: `all`, `0`, `1,3`, `0-2`; raises WorkerSelectionError with the reason.

    Each range is checked against the node's workers before any is expanded: a typo such as
    `0-999999999` is an error at once, not a billion-element set.
    """
    text = (selection or "all").strip().lower()
    if text == "all":
        return tuple(range(count))
    spans: list[tuple[int, int]] = []
    for part in text.split(","):
        try:
            lo_text, dash, hi_text = part.strip().partition("-")
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
        except ValueError:
            lo, hi = 0, -1
        if not 0 <= lo <= hi:
            raise WorkerSelectionError(
                f"Bad worker selection {selection!r}:", "use all, 0, 1,3 or 0-2."
            )
        if hi >= count:
            first = max(lo, count)
            missing = f"Worker {hi} does" if first == hi else f"Workers {first}-{hi} do"
            raise WorkerSelectionError(
                f"{missing} not exist: the node has {count} "
                f"worker{'s' if count != 1 else ''} (0-{count - 1})."
            )
        spans.append((lo, hi))
    return tuple(sorted({w for lo, hi in spans for w in range(lo, hi + 1)}))


class JobStatus(StrEnum):
    """Where a job (one run) stands. A StrEnum: stored in the history as its plain value and
    equal to it, so the SQLite rows and `--json` read as they always did."""

    LAUNCHING = "launching"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"
    LOST = "lost"

    @property
    def open(self) -> bool:
        """Still launching or running: a follower may attach, a stop may act."""
        return self in OPEN_STATUSES


OPEN_STATUSES = (JobStatus.LAUNCHING, JobStatus.RUNNING)


class ManagedState(StrEnum):
    """Where a managed job (services/managed.py) stands, over all its attempts."""

    RUNNING = "running"
    RECOVERING = "recovering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    GAVE_UP = "gave_up"
    CANCELLED = "cancelled"

    @property
    def open(self) -> bool:
        return self in MANAGED_OPEN


MANAGED_OPEN = (ManagedState.RUNNING, ManagedState.RECOVERING)


class StopResult(StrEnum):
    """What stopping a job did on one worker: the first word of the stop command's answer."""

    STOPPED = "stopped"  # ended by SIGTERM within the grace period
    KILLED = "killed"  # SIGKILL after it
    GONE = "gone"  # nothing of the job was running (ended already, or its pid reused)
    NOT_STOPPED = "not stopped"  # the worker could not be reached or the command failed

    @property
    def ended_it(self) -> bool:
        """This worker's processes were running and were ended now."""
        return self in (StopResult.STOPPED, StopResult.KILLED)


@dataclass(frozen=True)
class WorkerStop:
    """One worker's stop: the result and its detail (`stopped: 1 process it left running…`)."""

    result: StopResult
    detail: str = ""

    @classmethod
    def parse(cls, text: str) -> WorkerStop:
        """From the stop command's `word[: detail]` line; an unknown word is not stopped."""
        word, _, detail = text.partition(":")
        try:
            return cls(StopResult(word.strip()), detail.strip())
        except ValueError:
            return cls(StopResult.NOT_STOPPED, text.strip())

    def __str__(self) -> str:
        return f"{self.result}: {self.detail}" if self.detail else str(self.result)


class EventKind(StrEnum):
    """What the user is told of a job (services/notify.py): TPUCONSOLE_EVENT's values."""

    ENDED = "ended"
    FAILED = "failed"
    PREEMPTED = "preempted"
    RETRIED = "retried"
    RECOVERED = "recovered"
    GAVE_UP = "gave_up"
    STUCK = "stuck"

    @property
    def warns(self) -> bool:
        """News that something went wrong (shown as a warning), not that it went on."""
        return self not in (EventKind.ENDED, EventKind.RECOVERED)


@dataclass(frozen=True)
class ManagedRecord:
    """A managed job (services/managed.py): its spec, where it stands, and its attempts' runs.

    `state`: running | recovering | succeeded | failed | gave_up | cancelled. `current` is the
    run of the attempt now; `attempts` every run of it, first to last (the first's id is the
    managed job's). `recoveries` counts the attempts after the first.
    """

    job_id: str
    spec: dict[str, Any]
    state: ManagedState
    current: str
    attempt: int
    recoveries: int
    note: str
    attempts: tuple[str, ...] = ()

    @property
    def open(self) -> bool:
        return self.state in MANAGED_OPEN


@dataclass(frozen=True)
class JobWorker:
    """One worker's part of a job: where its process is and how far its log was read."""

    worker: int
    pid: int = 0
    rc: int | None = None
    log_offset: int = 0
    error: str = ""


@dataclass(frozen=True)
class Diagnosis:
    """A known failure (or condition) found in a job: what, the line or fact that shows it, why,
    and what to do; `worker` is None for the whole job. Kept once per (key, worker)."""

    key: str
    title: str
    evidence: str
    cause: str
    remedy: str
    worker: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The documented shape of `--json` and of the history's rows:
        {key, title, evidence, cause, remedy, worker}."""
        return {
            "key": self.key,
            "title": self.title,
            "evidence": self.evidence,
            "cause": self.cause,
            "remedy": self.remedy,
            "worker": self.worker,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Diagnosis:
        """From that shape; a field a older row lacks is empty, one it has extra is ignored."""
        worker = doc.get("worker")
        return cls(
            str(doc.get("key", "")),
            str(doc.get("title", "")),
            str(doc.get("evidence", "")),
            str(doc.get("cause", "")),
            str(doc.get("remedy", "")),
            int(worker) if isinstance(worker, int) else None,
        )


@dataclass(frozen=True)
class Job:
    """A detached run on one or more workers, as recorded in the history before output arrives."""

    job_id: str
    node: str
    zone: str
    command: str
    started_at: datetime
    kind: str = "custom"
    workers: tuple[JobWorker, ...] = ()
    status: JobStatus = JobStatus.LAUNCHING
    env: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # the template's values, for re-runs
    ended_at: datetime | None = None
    note: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)  # JobMetrics.as_json()
    diagnoses: tuple[Diagnosis, ...] = ()  # each (key, worker) once
    attempt_of: str = ""  # a managed job's later attempt: the managed job's id
    managed: ManagedRecord | None = None  # this run is the first attempt of a managed job

    @property
    def recoveries(self) -> int:
        return self.managed.recoveries if self.managed is not None else 0

    @property
    def open(self) -> bool:
        """Still launching or running: a follower may attach, a stop may act."""
        return self.status in OPEN_STATUSES

    @property
    def node_key(self) -> str:
        return f"{self.zone}/{self.node}"

    @property
    def headline(self) -> str:
        """The command in one line, for lists: the line that says what runs, `…` if there is more.

        A template's job ends with its program after lines that prepare the environment, so
        its last line is the telling one; a command typed by hand is told by its first.
        """
        return self.short_command(None)

    def short_command(self, width: int | None) -> str:
        """`headline` in at most `width` characters, the `… (+N lines)` mark kept whole."""
        lines = [line.strip() for line in self.command.splitlines() if line.strip()]
        if not lines:
            return "(empty command)"
        main = lines[-1] if self.kind != "custom" else lines[0]
        more = len(lines) - 1
        count = f"(+{more} line{'s' if more != 1 else ''})"
        mark = f" … {count}" if more else ""
        if width is not None and len(main) + len(mark) > width:
            mark = f" {count}" if more else ""  # the clipped line's own … says it goes on
            main = main[: max(1, width - len(mark) - 1)] + "…"
        return main + mark


@dataclass(frozen=True)
class TpuHolder:
    """A process holding a worker's TPU (a chip device or the libtpu lock)."""

    pid: int
    user: str
    uid: int
    start_ticks: int
    elapsed_s: float
    rss_kb: int
    cmdline: str
    devices: tuple[str, ...]
    sid: int = 0


@dataclass(frozen=True)
class Lingering:
    pid: int
    why: str
    ours: bool
    job_id: str = ""
    start_ticks: int = -1  # set when the process holds nothing (a job that will not exit)
    cmdline: str = ""


@dataclass(frozen=True)
class ProbeReport:
    """One worker's answer from remote/probe.py, with its verdicts."""

    worker: int
    host: str
    root: bool
    user: str
    sudo: str
    lockfile: str
    lock_exists: bool
    lock_owner: str
    lock_held: bool
    lock_holders: tuple[int, ...]
    holders: tuple[TpuHolder, ...]
    jobs_alive: tuple[str, ...]
    stale_lock: bool
    foreign_lock: bool
    lingering: tuple[Lingering, ...]
    busy: tuple[str, ...]
    unreadable_processes: int = 0
    probe_pid: int = 0
    login_user: str = ""  # whose processes are ours: the ssh login user, even through sudo
    odd_lock: str = ""  # the lockfile is a symlink, directory, fifo…: reported, never followed
    lock_target: str = ""  # a symlinked lockfile's target, as the link says

    @property
    def clean(self) -> bool:
        return not (self.stale_lock or self.foreign_lock or self.lingering or self.odd_lock)

    @classmethod
    def from_json(cls, worker: int, raw: dict) -> ProbeReport:
        lock = raw.get("lockfile", {})
        verdicts = raw.get("verdicts", {})
        return cls(
            worker=worker,
            host=raw.get("host", ""),
            root=bool(raw.get("root")),
            user=raw.get("user", ""),
            sudo=raw.get("sudo", ""),
            lockfile=lock.get("path", ""),
            lock_exists=bool(lock.get("exists")),
            lock_owner=lock.get("owner", ""),
            lock_held=bool(lock.get("held")),
            lock_holders=tuple(lock.get("holders", [])),
            holders=tuple(
                TpuHolder(
                    h["pid"],
                    h["user"],
                    h["uid"],
                    h["start_ticks"],
                    h["elapsed_s"],
                    h["rss_kb"],
                    h["cmdline"],
                    tuple(h["devices"]),
                    h.get("sid", 0),
                )
                for h in raw.get("holders", [])
            ),
            jobs_alive=tuple(j["job_id"] for j in raw.get("jobs", []) if j.get("alive")),
            stale_lock=bool(verdicts.get("stale_lock")),
            foreign_lock=bool(verdicts.get("foreign_lock")),
            lingering=tuple(
                Lingering(
                    x["pid"],
                    x["why"],
                    bool(x.get("ours")),
                    x.get("job_id", ""),
                    int(x.get("start_ticks", -1)),
                    x.get("cmdline", ""),
                )
                for x in verdicts.get("lingering", [])
            ),
            busy=tuple(verdicts.get("busy", [])),
            unreadable_processes=int(raw.get("unreadable_processes", 0)),
            probe_pid=int(raw.get("probe_pid", 0)),
            login_user=raw.get("login_user", ""),
            odd_lock=verdicts.get("odd_lock", ""),
            lock_target=lock.get("target", ""),
        )


@dataclass(frozen=True)
class KillStep:
    """Signal one process, identified by pid *and* start time so a reused pid is never hit."""

    pid: int
    start_ticks: int
    cmdline: str
    user: str
    elapsed_s: float
    devices: tuple[str, ...]
    why: str
    grace_s: float = 10.0


@dataclass(frozen=True)
class RemoveLockStep:
    path: str
    why: str


@dataclass(frozen=True)
class WorkerPlan:
    """What cleaning one worker would do, and what it will not do (with the reason)."""

    worker: int
    kills: tuple[KillStep, ...] = ()
    locks: tuple[RemoveLockStep, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.kills or self.locks)


# ----- a probe's results and the cleanup made from them (services/probe.py does the I/O) -----
# The TPU LOCK cell and the step texts live here, beside the reports they read: the probe
# service, preflight and present/ all say them, in the same words.


@dataclass(frozen=True)
class WorkerProbe:
    worker: int
    report: ProbeReport | None = None
    error: str = ""


@dataclass(frozen=True)
class StepResult:
    worker: int
    what: str
    done: bool
    result: str
    needs_root: bool = False


def job_label(job_id: str) -> str:
    return f"job {job_id.split('-')[0]}"


def node_status(probes: list[WorkerProbe]) -> str:
    """The fleet table's TPU LOCK cell: the worst news first, short."""
    if not probes:
        return "-"
    parts = []
    unreachable = [p.worker for p in probes if p.report is None]
    reports = [p.report for p in probes if p.report is not None]
    if unreachable:
        parts.append("? " + ",".join(f"w{w}" for w in unreachable))
    odd = sorted({r.odd_lock for r in reports if r.odd_lock})
    if odd:
        parts.append("lockfile is a " + "/".join(odd))
    if any(r.foreign_lock for r in reports):
        parts.append("needs root")
    if any(r.stale_lock for r in reports):
        parts.append("STALE LOCK")
    lingering = sum(len(r.lingering) for r in reports)
    if lingering:
        parts.append(f"{lingering} lingering")
    busy = sorted({job for r in reports for job in r.busy})
    if busy and not parts:
        parts.append("busy: " + ", ".join(job_label(j) for j in busy))
    return ", ".join(parts) or "clean"


def describe_kill(step: KillStep) -> str:
    devices = (
        ", ".join(
            d.rsplit("/", 2)[-1] if "vfio" not in d else "vfio/" + d.rsplit("/", 1)[-1]
            for d in step.devices
        )
        or "the lock"
    )
    command = step.cmdline if len(step.cmdline) <= 60 else step.cmdline[:57] + "…"
    return (
        f"SIGTERM pid {step.pid} ({command}; user {step.user}, running "
        f"{format_age(step.elapsed_s)}, holds {devices}), SIGKILL after "
        f"{step.grace_s:.0f} s if still alive — {step.why}"
    )


def describe_holders(report: ProbeReport) -> str:
    """Who holds the worker's TPU now (chips, lock, a lockfile left behind); "" if nobody."""
    parts = []
    for h in report.holders:
        command = h.cmdline if len(h.cmdline) <= 40 else h.cmdline[:39] + "…"
        devices = ", ".join(d.rsplit("/", 1)[-1] for d in h.devices) or "the lock"
        parts.append(f"pid {h.pid} ({command}) holds {devices}")
    listed = {h.pid for h in report.holders}
    parts += [f"pid {pid} holds the lock" for pid in report.lock_holders if pid not in listed]
    if report.busy:
        parts.append("running: " + ", ".join(job_label(j) for j in report.busy))
    if report.stale_lock:
        parts.append(f"{report.lockfile} is still there with no holder")
    if report.foreign_lock:
        parts.append(f"{report.lockfile} belongs to {report.lock_owner} (needs root)")
    return "; ".join(parts)


def describe_lock(step: RemoveLockStep) -> str:
    return f"remove {step.path} ({step.why})"


def odd_lock_note(report: ProbeReport) -> str:
    """Why a lockfile that is no regular file is left alone, and what a person may do."""
    path = report.lockfile
    if report.odd_lock == "replaced":
        return f"{path} changed while it was probed; not touched. Probe again."
    what = {
        "symlink": f"a symbolic link (to {report.lock_target or '?'})",
        "directory": "a directory",
        "fifo": "a FIFO (named pipe)",
        "socket": "a socket",
        "device": "a device file",
    }.get(report.odd_lock, f"no regular file ({report.odd_lock})")
    return (
        f"{path} is {what}, owned by {report.lock_owner or '?'}: not followed, nothing behind it "
        "is signalled or removed. libtpu expects a regular file there; if nobody should have "
        f"put this there, remove it yourself (`ls -la {path}` first)."
    )


@dataclass(frozen=True)
class CleanupPlan:
    """What a probe found on a node's workers and what cleaning would do there."""

    node: Node
    probes: tuple[WorkerProbe, ...]
    plans: tuple[WorkerPlan, ...]  # one per worker that answered

    @property
    def todo(self) -> tuple[WorkerPlan, ...]:
        return tuple(p for p in self.plans if not p.empty)

    @property
    def clean(self) -> bool:
        """Every worker answered and holds nothing stale (notes may still say something)."""
        return all(p.report is not None and p.report.clean for p in self.probes)

    @property
    def status(self) -> str:
        return node_status(list(self.probes))

    def odd_lock_notes(self) -> list[tuple[int, str]]:
        """(worker, note) for lockfiles that are not files: nothing to clean, worth a look."""
        return [
            (p.worker, odd_lock_note(p.report))
            for p in self.probes
            if p.report is not None and p.report.odd_lock
        ]


@dataclass(frozen=True)
class CleanupDone:
    """A carried-out plan: each step's result and every probed worker as it is now."""

    node: Node
    results: tuple[StepResult, ...]
    after: tuple[WorkerProbe, ...]  # the cleaned workers, probed again
    before: tuple[WorkerProbe, ...] = ()

    @property
    def done(self) -> bool:
        return all(r.done for r in self.results)

    @property
    def now(self) -> list[WorkerProbe]:
        """Every probed worker as last seen: re-probed if cleaned, else as planned."""
        by_worker = {p.worker: p for p in self.before}
        by_worker.update({p.worker: p for p in self.after})
        return [by_worker[w] for w in sorted(by_worker)]

    @property
    def status(self) -> str:
        return node_status(self.now)


# ----- a launch: what would run (a template rendered, preflight's checks) and what did ------


@dataclass(frozen=True)
class Rendered:
    """What a template produced: the argv, its environment, and the shell text that runs it."""

    argv: tuple[str, ...]
    env: dict[str, str]
    prelude: tuple[str, ...] = ()
    script: str = ""  # shell text as the user wrote it (the custom template), instead of argv
    ship_runners: bool = False  # remote/ goes to the workers first (changed files only)
    upload: tuple[str, str] | None = None  # (local, remote): the sync template runs no command

    def shell(self) -> str:
        if self.upload:
            local, remote = self.upload
            return f"# upload {local} -> {remote} on each worker (changed files only)"
        return "\n".join([*self.prelude, self.script or shlex.join(self.argv)])


@dataclass(frozen=True)
class Check:
    level: str  # refuse | warn | offer
    message: str
    remedy: str = ""


@dataclass(frozen=True)
class UploadOutcome:
    worker: int
    sent: tuple[str, ...] = ()
    unchanged: int = 0
    bytes_sent: int = 0
    method: str = "tar"
    error: str = ""
    refused: tuple[str, ...] = ()  # "path: why" for what the folder holds but cannot be sent

    @property
    def failed(self) -> bool:
        return bool(self.error or self.refused)

    def describe(self) -> str:
        if self.error:
            return f"w{self.worker}: failed: {self.error}"
        text = (
            f"w{self.worker}: {len(self.sent)} sent ({self.bytes_sent} bytes, {self.method}),"
            f" {self.unchanged} unchanged"
        )
        if self.refused:
            text += f"; {len(self.refused)} not sent: " + "; ".join(self.refused)
        return text


@dataclass(frozen=True)
class LaunchPlan:
    """What would run, where, and what preflight says of it."""

    node: Node
    selection: str
    kind: str  # the template's name, or "custom" for a command given as is
    rendered: Rendered
    params: dict[str, Any]
    checks: tuple[Check, ...] = ()

    @property
    def refused(self) -> bool:
        return any(c.level == "refuse" for c in self.checks)

    @property
    def offers_cleanup(self) -> bool:
        """Stale TPU state on the workers: preflight offers to clear it first."""
        return any(c.level == "offer" for c in self.checks)

    @property
    def is_upload(self) -> bool:
        return self.rendered.upload is not None


@dataclass(frozen=True)
class Launched:
    """What a start did: the cleanup first (if any), then a job or an upload's outcomes."""

    plan: LaunchPlan
    cleanup: CleanupDone | None = None
    job: Job | None = None
    uploads: tuple[UploadOutcome, ...] = ()

    @property
    def failed(self) -> bool:
        if self.cleanup is not None and not self.cleanup.done:
            return True
        if self.job is not None:
            return self.job.status == JobStatus.FAILED
        return any(o.failed for o in self.uploads)


@dataclass(frozen=True)
class NodeEvent:
    """Something that happened to a node: a state the console saw, or an operation it ran."""

    at: datetime
    zone: str
    node: str
    kind: str  # state | create | failed | retry | fallback | stop | start | delete | ssh | alert
    source: str  # refresh | console | api
    detail: str = ""


# Why a node might leave READY on its own, as the seeds learned it.
LEAVING_REASONS = {
    "PREEMPTED": "Spot/preemptible capacity was reclaimed by Compute Engine; it will not come "
    "back: delete it and create again (on-demand if spot keeps failing).",
    "DELETING": "Someone or something deleted it: another user, an org policy or automation "
    "that removes VMs (the seeds saw on-demand VMs deleted before the first "
    "command). Check the project's audit log.",
    "TERMINATED": "The VM was terminated (maintenance, a host error, or a policy). Check its "
    "symptoms and the audit log.",
}


# ----- chip metrics: every chip of every worker at a glance -------------------------------------
@dataclass(frozen=True)
class ChipReading:
    """One chip of one worker: its numbers, who holds it, and why a number is missing.

    Numbers are None when unknown; 0 when known to be nothing (no program on the chip).
    """

    worker: int
    chip: int
    hbm_used: int | None = None  # bytes
    hbm_total: int | None = None  # bytes
    duty_pct: float | None = None
    pid: int | None = None  # the process holding the chip, from the probe
    command: str = ""  # its command line
    user: str = ""
    missing: str = ""  # why the numbers are absent, zero or old; "" when fresh
    stale_s: float = 0.0  # how old numbers kept from an earlier reading are

    @property
    def hbm_fraction(self) -> float | None:
        if self.hbm_used is None or not self.hbm_total:
            return None
        return self.hbm_used / self.hbm_total


# WorkerChips.state values, and what a person reads for each.
CHIP_STATES = {
    "ok": "live",
    "no_program": "no TPU program",
    "port_closed": "metrics port closed",
    "forwarding_refused": "ssh forwarding refused",
    "unreachable": "worker unreachable",
    "timeout": "no answer in time",
    "closed": "metrics server went away",
    "error": "metrics error",
    "waiting": "not read yet",
}


@dataclass(frozen=True)
class WorkerChips:
    """One worker's chips at one poll, with the state of its metrics and, if not live, why."""

    worker: int
    state: str  # a key of CHIP_STATES
    chips: tuple[ChipReading, ...] = ()
    reason: str = ""  # one sentence when the state is not "ok"
    remedy: str = ""
    read_at: datetime | None = None  # when the numbers shown were read
    stale: bool = False  # the numbers are from an earlier poll (see reason)

    @property
    def label(self) -> str:
        return CHIP_STATES.get(self.state, self.state)

    @property
    def peak_duty_pct(self) -> float | None:
        known = [c.duty_pct for c in self.chips if c.duty_pct is not None]
        return max(known) if known and not self.stale else None


def _span(values: list[Any]) -> tuple[Any, Any] | None:
    return (min(values), max(values)) if values else None


@dataclass(frozen=True)
class ChipMetrics:
    """A node's chips at one moment: what the fleet table, node detail, `top` all show."""

    node: str  # "zone/name"
    name: str
    taken_at: datetime
    workers: tuple[WorkerChips, ...]
    standin: bool = False  # the sandbox's stand-in numbers, not a TPU's

    @property
    def chips(self) -> tuple[ChipReading, ...]:
        return tuple(c for w in self.workers for c in w.chips)

    @property
    def hbm_used_range(self) -> tuple[int, int] | None:
        """(min, max) bytes in use over every chip with a number."""
        return _span([c.hbm_used for c in self.chips if c.hbm_used is not None])

    @property
    def hbm_fraction_range(self) -> tuple[float, float] | None:
        return _span([f for c in self.chips if (f := c.hbm_fraction) is not None])

    @property
    def hbm_total(self) -> int | None:
        known = [c.hbm_total for c in self.chips if c.hbm_total]
        return max(known) if known else None

    @property
    def duty_range(self) -> tuple[float, float] | None:
        """(min, max) duty cycle, percent, over every chip with a number."""
        return _span([c.duty_pct for c in self.chips if c.duty_pct is not None])

    @property
    def live(self) -> bool:
        return all(w.state == "ok" and not w.stale for w in self.workers)

    def problems(self) -> tuple[WorkerChips, ...]:
        """The workers whose numbers are missing or old, each with its reason."""
        return tuple(w for w in self.workers if w.state != "ok" or w.stale)


# ----- stacks: every worker's threads, side by side -------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One frame of a thread's stack; `path` has the worker's home as `~`, so workers compare."""

    path: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.function} ({self.path}:{self.line})"


@dataclass(frozen=True)
class ThreadStack:
    """One thread, innermost frame first (as faulthandler and py-spy print them)."""

    name: str  # faulthandler's thread id (0x…) or py-spy's thread name
    frames: tuple[Frame, ...]
    main: bool = False
    current: bool = False  # the thread that handled the signal (faulthandler's "Current thread")
    state: str = ""  # py-spy's idle/active


@dataclass(frozen=True)
class ProcessStacks:
    """One process of a job on one worker, and how its stacks were had (or why not)."""

    pid: int
    command: str
    method: str  # faulthandler | py-spy | none
    threads: tuple[ThreadStack, ...] = ()
    note: str = ""
    python: bool = True

    @property
    def main_thread(self) -> ThreadStack | None:
        return next((t for t in self.threads if t.main), None)


@dataclass(frozen=True)
class WorkerStacks:
    worker: int
    processes: tuple[ProcessStacks, ...] = ()
    error: str = ""  # the worker could not be asked, or its answer not read
    note: str = ""

    @property
    def main(self) -> ProcessStacks | None:
        """The job's main Python process here: the oldest one whose stacks were had."""
        return next((p for p in self.processes if p.main_thread is not None), None)

    @property
    def main_stack(self) -> tuple[Frame, ...] | None:
        process = self.main
        thread = process.main_thread if process is not None else None
        return thread.frames if thread is not None else None


@dataclass(frozen=True)
class StackGroup:
    """Workers whose main threads are at the same place (same functions, whatever the lines)."""

    workers: tuple[int, ...]
    frames: tuple[Frame, ...]  # the first worker's, innermost first
    at_sync_point: bool = False  # waiting in a barrier or a multi-host sync


@dataclass(frozen=True)
class StacksReport:
    """A job's stacks on every worker at one moment, grouped, with the ones that differ."""

    job_id: str
    node: str
    taken_at: datetime
    workers: tuple[WorkerStacks, ...]
    groups: tuple[StackGroup, ...] = ()  # largest first
    differing: tuple[int, ...] = ()  # workers whose main thread is elsewhere than the majority
    verdict: str = ""  # one sentence saying so

    @property
    def without_stacks(self) -> tuple[int, ...]:
        return tuple(w.worker for w in self.workers if w.main_stack is None)
