"""Creating, stopping, starting and deleting TPU VMs with live progress and an event history.

Also the observer of refreshes: a node that leaves READY is announced with its likely reason,
recorded, and its running jobs are marked lost.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from console.adapters.history_db import HistoryStore
from console.models import (
    LEAVING_REASONS,
    MAX_LABELS,
    FleetError,
    FleetSnapshot,
    Node,
    NodeEvent,
    SshError,
    label_fault,
)
from console.services.diagnosis import from_condition
from console.services.fleet import FleetService
from console.services.jobs import JobService
from console.services.remote import RemoteService
from console.services.ssh_access import SSH_KEYS

DEFAULT_RUNTIME = "tpu-ubuntu2204-base"
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
QUOTA_RE = re.compile(r"Quota limit '([^']+)'")


@dataclass(frozen=True)
class Progress:
    """One line of news about an operation, for the status area or a terminal."""

    node: str
    verb: str
    state: str
    elapsed_s: float
    message: str = ""

    def line(self) -> str:
        extra = f" — {self.message}" if self.message else ""
        return f"{self.verb} {self.node}: {self.state} after {self.elapsed_s:.0f} s{extra}"


ProgressSink = Callable[[Progress], None]


@dataclass(frozen=True)
class CreateRequest:
    name: str
    zone: str
    accelerator_type: str
    runtime_version: str = DEFAULT_RUNTIME
    spot: bool = False
    fallback_on_demand: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    startup_command: str = ""  # run as a job on every worker once the VM answers ssh

    def problems(self) -> list[str]:
        out = []
        if not NAME_RE.match(self.name):
            out.append(
                f"Name {self.name!r}: lowercase letters, digits and dashes, starting with "
                "a letter, at most 63 characters."
            )
        if not self.zone:
            out.append("Choose a zone.")
        if not self.accelerator_type:
            out.append("Choose an accelerator type.")
        if len(self.labels) > MAX_LABELS:
            out.append(f"{len(self.labels)} labels: Google allows at most {MAX_LABELS}.")
        # Google's rules, checked here as gcloud checks them, so the API never has to refuse.
        for key, value in self.labels.items():
            if fault := label_fault(key, key=True):
                out.append(
                    f"Label key {key!r} {fault}: keys start with a lowercase letter and hold "
                    "only lowercase letters, digits, - and _ (at most 63)."
                )
            elif fault := label_fault(value, key=False):
                out.append(
                    f"Label {key}={value!r}: the value {fault}; values hold only lowercase "
                    "letters, digits, - and _ (at most 63)."
                )
        return out


@dataclass(frozen=True)
class CreateOutcome:
    node: Node
    spot: bool
    notes: tuple[str, ...] = ()
    ssh_ok: tuple[int, ...] = ()
    ssh_failed: tuple[str, ...] = ()
    startup_job: str = ""


def default_name(prefix: str, accelerator_type: str, now: datetime | None = None) -> str:
    """`<prefix>-<type>-<yyyymmdd-hhmmss>`, the way the seeds named their VMs."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{accelerator_type}-{stamp}".lower()


def parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise FleetError(f"Label {item!r} is not key=value.", "Write labels as team=rl.")
        labels[key.strip()] = value.strip()
    return labels


class LifecycleService:
    def __init__(
        self,
        fleet: FleetService,
        history: HistoryStore,
        remote: RemoteService | None = None,
        *,
        poll_s: float = 2.0,
        ssh_wait_s: float = 90.0,
        jobs: JobService | None = None,
    ) -> None:
        self.fleet = fleet
        self.history = history
        self.remote = remote
        self.poll_s = poll_s
        self.ssh_wait_s = ssh_wait_s
        self.jobs = jobs
        self._results_tasks: set[asyncio.Future] = set()  # kept referenced until they finish
        self._last_states: dict[str, str] = {}

    def _event(self, zone: str, node: str, kind: str, source: str, detail: str = "") -> None:
        self.history.record_event(NodeEvent(datetime.now(UTC), zone, node, kind, source, detail))

    async def _follow(
        self,
        operation,
        zone: str,
        name: str,
        verb: str,
        progress: ProgressSink | None,
        *,
        gone_ok: bool = False,
    ) -> Node | None:
        """Poll the operation and the node together, reporting each state as it is seen."""
        api = self.fleet.api
        start = time.monotonic()
        last = ""
        waiter = asyncio.ensure_future(
            api.wait_operation(operation, poll_s=self.poll_s, timeout_s=3600)
        )
        try:
            while True:
                try:
                    node = await api.get_node(zone, name)
                    state = node.state
                except FleetError as exc:
                    if exc.code != "NOT_FOUND":
                        raise
                    node, state = None, "GONE"
                if state != last:
                    last = state
                    self._event(zone, name, "state", "console", f"{verb}: {state}")
                if progress is not None:
                    progress(Progress(name, verb, state, time.monotonic() - start))
                if waiter.done():
                    waiter.result()  # raises the operation's error, if any
                    if node is None and not gone_ok:
                        raise FleetError(
                            f"{name} disappeared during {verb}.", LEAVING_REASONS["DELETING"]
                        )
                    return node
                if state in {"PREEMPTED", "TERMINATED"} or (
                    state == "DELETING" and verb != "delete"
                ):
                    raise FleetError(
                        f"{name} went {state} during {verb}.", LEAVING_REASONS.get(state, "")
                    )
                await asyncio.wait([waiter], timeout=self.poll_s)
        finally:
            waiter.cancel()

    async def create(
        self,
        request: CreateRequest,
        progress: ProgressSink | None = None,
        *,
        wait: bool = True,
    ) -> CreateOutcome:
        problems = request.problems()
        if problems:
            raise FleetError(" ".join(problems), code="INVALID_ARGUMENT")
        api = self.fleet.api
        notes: list[str] = []
        spot = request.spot
        metadata = self._key_metadata(notes)

        async def send(spot: bool):
            return await api.create_node(
                request.zone,
                request.name,
                request.accelerator_type,
                request.runtime_version,
                spot=spot,
                labels=request.labels,
                metadata=metadata,
            )

        try:
            operation = await send(spot)
        except FleetError as exc:
            if not (spot and exc.code == "RESOURCE_EXHAUSTED"):
                raise
            quota = QUOTA_RE.search(exc.reason)
            which = quota.group(1) if quota else "the spot quota"
            if not request.fallback_on_demand:
                raise FleetError(
                    f"Spot capacity refused: {which} is exhausted in {request.zone}.",
                    "Retry on-demand (turn on the fallback), try another zone, or ask for quota.",
                    code="RESOURCE_EXHAUSTED",
                ) from None
            notes.append(f"spot refused ({which} exhausted); created on-demand instead")
            self._event(request.zone, request.name, "fallback", "console", notes[-1])
            if progress is not None:
                progress(Progress(request.name, "create", "FALLBACK", 0.0, notes[-1]))
            spot = False
            operation = await send(spot)
        self._event(
            request.zone,
            request.name,
            "create",
            "console",
            f"{request.accelerator_type} {request.runtime_version} "
            f"{'spot' if spot else 'on-demand'}",
        )
        if not wait:  # the operation goes on in the cloud; refreshes will show it
            node = await self.fleet.get_node(request.zone, request.name)
            return CreateOutcome(node, spot, tuple(notes))
        node = await self._follow(operation, request.zone, request.name, "create", progress)
        assert node is not None
        ok, failed = await self.check_ssh(node, progress)
        startup_job = ""
        if request.startup_command and not failed and self.jobs is not None:
            job = await self.jobs.launch(node, "all", request.startup_command, kind="bootstrap")
            startup_job = job.job_id
            self._event(
                node.zone,
                node.name,
                "bootstrap",
                "console",
                f"job {job.job_id}: {request.startup_command}",
            )
            if progress is not None:
                progress(
                    Progress(node.name, "bootstrap", job.status.upper(), 0.0, f"job {job.job_id}")
                )
        return CreateOutcome(node, spot, tuple(notes), ok, failed, startup_job)

    def _key_metadata(self, notes: list[str]) -> dict[str, str]:
        """Your key in the new node's `ssh-keys`, so its first boot installs it (not with OS
        Login configured: there the key goes to your OS Login profile when you first ssh)."""
        if self.remote is None or self.remote.access.os_login == "true":
            return {}
        try:
            return {SSH_KEYS: self.remote.access.entry()}
        except SshError as exc:
            notes.append(f"no ssh key put in its metadata: {exc.reason}")
            return {}

    async def check_ssh(
        self, node: Node, progress: ProgressSink | None = None
    ) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """`true` on every worker: READY is the API's word, ssh is the user's."""
        if self.remote is None:
            return (), ()
        # As gcloud does: a fresh VM may refuse ssh for a while after READY (sshd starting,
        # keys propagating); retry the link failures, not the auth or host-key ones.
        deadline = time.monotonic() + self.ssh_wait_s
        delay = 0.1
        while True:
            node = await self.fleet.get_node(node.zone, node.name)
            result = await self.remote.run(node, "all", "true")
            retryable = [
                o
                for o in result.failed
                if o.error is not None and o.error.kind in {"refused", "timeout", "lost"}
            ]
            if not retryable or time.monotonic() >= deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        ok = tuple(o.worker for o in result.outcomes if o.ok)
        failed = tuple(f"w{o.worker}: {o.describe()}" for o in result.failed)
        detail = "all workers answer" if not failed else "; ".join(failed)
        self._event(node.zone, node.name, "ssh", "console", detail)
        if progress is not None:
            progress(
                Progress(node.name, "ssh", "READY" if not failed else "SSH FAILED", 0.0, detail)
            )
        return ok, failed

    async def change(
        self, verb: str, node: Node, progress: ProgressSink | None = None
    ) -> Node | None:
        api = self.fleet.api
        method = {"stop": api.stop_node, "start": api.start_node, "delete": api.delete_node}[verb]
        operation = await method(node.zone, node.name)
        self._event(node.zone, node.name, verb, "console", "requested")
        return await self._follow(
            operation, node.zone, node.name, verb, progress, gone_ok=verb == "delete"
        )

    def observe(self, snapshot: FleetSnapshot) -> list[str]:
        """Record state changes seen by a refresh; return alerts for nodes that left READY."""
        alerts = []
        unreachable = {f.zone for f in snapshot.unreachable}
        seen = set()
        for node in snapshot.nodes:
            seen.add(node.key)
            before = self._last_states.get(node.key)
            if before == node.state:
                continue
            self._last_states[node.key] = node.state
            if before is None:
                continue  # first sight: nothing changed that we know of
            self._event(node.zone, node.name, "state", "refresh", f"{before} → {node.state}")
            if node.state in LEAVING_REASONS:
                alerts.append(self._left_ready(node.zone, node.name, node.state))
        for key in list(self._last_states):
            zone, name = key.split("/", 1)
            if key not in seen and zone not in unreachable:
                before = self._last_states.pop(key)
                self._event(zone, name, "state", "refresh", f"{before} → gone")
                if before not in {"DELETING"}:
                    alerts.append(self._left_ready(zone, name, "DELETING"))
        return [a for a in alerts if a]

    def _left_ready(self, zone: str, name: str, state: str) -> str:
        reason = LEAVING_REASONS[state]
        lost = self.history.running_jobs_on(zone, name)
        when = datetime.now().astimezone().strftime("%H:%M:%S")
        finding = asdict(from_condition("node_left", f"{name} went {state} at {when}: {reason}"))
        for job in lost:
            self.history.set_status(job.job_id, "lost", f"node went {state}: {reason}")
            self.history.set_results(job.job_id, diagnoses=[finding])
            if self.jobs is not None:  # what its logs showed up to then, from the local copies
                self._results_tasks.add(asyncio.ensure_future(self.jobs.record_results(job)))
                self._results_tasks = {t for t in self._results_tasks if not t.done()}
        self._event(zone, name, "alert", "refresh", f"{state}: {reason}")
        jobs = f" Jobs lost: {', '.join(j.job_id for j in lost)}." if lost else ""
        return f"{name} is {state}. {reason}{jobs}"
