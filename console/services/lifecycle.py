"""Creating, stopping, starting and deleting TPU VMs with live progress and an event history.

A spot create the cloud has no room for (a quota refusal at once, or a stockout inside the
operation) falls back to on-demand when asked, after making sure the failed node is gone; a
rate limit is retried with backoff instead. Every try and its outcome is a progress line and
an event. Also the observer of refreshes: a node that leaves READY is announced with its likely
reason, recorded, and its running jobs are marked lost.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from console.adapters.history_db import HistoryStore
from console.adapters.ssh_pool import backoff
from console.adapters.tpu_api import QUOTA_RE
from console.models import (
    LEAVING_REASONS,
    MAX_LABELS,
    FleetError,
    FleetSnapshot,
    JobStatus,
    Node,
    NodeEvent,
    SshError,
    label_fault,
)
from console.services.diagnosis import node_left
from console.services.fleet import FleetService
from console.services.jobs import JobService
from console.services.remote import RemoteService
from console.services.runtimes import default_runtime, generation_label
from console.services.ssh_access import SSH_KEYS

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
FALLBACK_KINDS = frozenset({"quota", "stockout"})  # what on-demand capacity may not suffer
# Progress states that are a try's outcome, kept on screen while the create goes on.
OUTCOME_STATES = frozenset({"FAILED", "FALLBACK", "RATE LIMITED", "CLEANUP", "RUNTIME"})


def stop_refusal(node: Node, verb: str = "stop") -> str:
    """Why `verb` (stop/start) cannot be asked of this node, or "" when it can.

    Multi-host slices cannot be stopped (Cloud TPU docs: "TPU VM pods cannot be stopped",
    as SkyPilot cites them); the API would refuse with FAILED_PRECONDITION.
    """
    if verb in {"stop", "start"} and node.multi_host:
        return (
            f"{node.name} is a multi-host slice ({node.hosts} workers): TPU VM pods cannot "
            "be stopped or started."
        )
    return ""


@dataclass(frozen=True)
class Progress:
    """One line of news about an operation, for the status area or a terminal."""

    node: str
    verb: str
    state: str
    elapsed_s: float
    message: str = ""
    attempt: str = ""  # "spot" / "on-demand" for a create's tries

    @property
    def outcome(self) -> bool:
        """A try's end (failed, fell back, rate-limited): worth keeping on screen."""
        return self.state in OUTCOME_STATES

    def line(self) -> str:
        extra = f" — {self.message}" if self.message else ""
        which = f" ({self.attempt})" if self.attempt else ""
        return f"{self.verb} {self.node}{which}: {self.state} after {self.elapsed_s:.0f} s{extra}"


ProgressSink = Callable[[Progress], None]


@dataclass(frozen=True)
class CreateRequest:
    name: str
    zone: str
    accelerator_type: str
    runtime_version: str = ""  # "": the generation's base image (see services/runtimes.py)
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
        self._last_requests: dict[str, str] = {}  # node key -> its queued resource's key

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
        attempt: str = "",
    ) -> Node | None:
        """Poll the operation and the node together, reporting each state as it is seen."""
        api = self.fleet.api
        start = time.monotonic()
        last = ""
        what = f"{verb.capitalize()} {name} in {zone}"
        waiter = asyncio.ensure_future(
            api.wait_operation(operation, poll_s=self.poll_s, timeout_s=3600, what=what)
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
                    progress(Progress(name, verb, state, time.monotonic() - start, attempt=attempt))
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
        """Create the VM, spot first when asked, on-demand if spot has no room and that is allowed.

        With `wait`, follows it to READY and checks ssh; a spot create with the fallback on is
        followed to its end even without `wait` (a stockout shows only there).
        """
        problems = request.problems()
        if problems:
            raise FleetError(" ".join(problems), code="INVALID_ARGUMENT")
        request = await self._with_runtime(request, progress)
        notes: list[str] = []
        metadata = self._key_metadata(notes)
        tries = [True, False] if request.spot and request.fallback_on_demand else [request.spot]
        for spot in tries:
            label = "spot" if spot else "on-demand"
            started = time.monotonic()
            try:
                operation = await self._send(request, spot, metadata, progress)
                self._event(
                    request.zone,
                    request.name,
                    "create",
                    "console",
                    f"{request.accelerator_type} {request.runtime_version} {label}",
                )
                if not wait and not (spot and len(tries) > 1):
                    node = await self.fleet.get_node(request.zone, request.name)
                    if progress is not None:
                        progress(
                            Progress(
                                request.name,
                                "create",
                                node.state,
                                time.monotonic() - started,
                                "accepted; it goes on in the cloud",
                                attempt=label,
                            )
                        )
                    return CreateOutcome(node, spot, tuple(notes))
                followed = await self._follow(
                    operation, request.zone, request.name, "create", progress, attempt=label
                )
            except FleetError as exc:
                self._failed(request, label, exc, time.monotonic() - started, progress)
                if not spot or exc.kind not in FALLBACK_KINDS:
                    raise
                if len(tries) == 1:
                    raise self._spot_refused(request, exc) from None
                await self._make_sure_gone(request, exc, progress)
                notes.append(f"spot {self._why(exc, request.zone)}; created on-demand instead")
                self._event(request.zone, request.name, "fallback", "console", notes[-1])
                if progress is not None:
                    progress(Progress(request.name, "create", "FALLBACK", 0.0, notes[-1]))
                continue
            assert followed is not None
            node = followed
            break
        if not wait:
            return CreateOutcome(node, spot, tuple(notes))
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

    async def _with_runtime(
        self, request: CreateRequest, progress: ProgressSink | None
    ) -> CreateRequest:
        """The request with a runtime version: the user's, else the generation's in the zone."""
        if request.runtime_version:
            return request
        try:
            offered = await self.fleet.api.runtime_versions(request.zone)
        except FleetError:
            offered = []  # the create itself will say what is wrong with the zone
        version = default_runtime(request.accelerator_type, offered)
        if progress is not None:
            why = f"default for {generation_label(request.accelerator_type)}"
            progress(Progress(request.name, "create", "RUNTIME", 0.0, f"{version} ({why})"))
        return replace(request, runtime_version=version)

    async def _send(
        self,
        request: CreateRequest,
        spot: bool,
        metadata: dict[str, str],
        progress: ProgressSink | None,
    ):
        label = "spot" if spot else "on-demand"
        started = time.monotonic()

        def rate_limited(exc: FleetError) -> None:
            message = f"{exc.reason.split(': ', 1)[-1]} Retrying with backoff."
            self._event(request.zone, request.name, "retry", "console", f"{label}: {message}")
            if progress is not None:
                progress(
                    Progress(
                        request.name,
                        "create",
                        "RATE LIMITED",
                        time.monotonic() - started,
                        message,
                        attempt=label,
                    )
                )

        return await self.fleet.api.create_node(
            request.zone,
            request.name,
            request.accelerator_type,
            request.runtime_version,
            spot=spot,
            labels=request.labels,
            metadata=metadata,
            on_retry=rate_limited,
        )

    def _failed(
        self,
        request: CreateRequest,
        label: str,
        exc: FleetError,
        elapsed_s: float,
        progress: ProgressSink | None,
    ) -> None:
        """One try's failure, with the API's code, in the history and the progress."""
        detail = f"{label} [{exc.code}{'/' + exc.kind if exc.kind else ''}]: {exc.reason}"
        self._event(request.zone, request.name, "failed", "console", detail)
        if progress is not None:
            progress(
                Progress(
                    request.name,
                    "create",
                    "FAILED",
                    elapsed_s,
                    f"[{exc.code}] {exc.reason.split(': ', 1)[-1]}",
                    attempt=label,
                )
            )

    @staticmethod
    def _why(exc: FleetError, zone: str) -> str:
        if exc.kind == "stockout":
            return f"had no capacity in {zone} (stockout)"
        quota = QUOTA_RE.search(exc.reason)
        return f"refused ({quota.group(1) if quota else 'the spot quota'} exhausted)"

    def _spot_refused(self, request: CreateRequest, exc: FleetError) -> FleetError:
        """The spot failure, said for a spot create without the fallback."""
        if exc.kind == "stockout":
            reason = (
                f"No spot capacity for {request.accelerator_type} in {request.zone} (stockout, "
                f"code 8): {exc.reason.split(': ', 1)[-1]}"
            )
        else:
            quota = QUOTA_RE.search(exc.reason)
            which = quota.group(1) if quota else "the spot quota"
            reason = f"Spot capacity refused: {which} is exhausted in {request.zone}."
        remedy = (
            "Retry on-demand (turn on the fallback), try another zone that offers "
            f"{request.accelerator_type}, or try later."
            if exc.kind == "stockout"
            else "Retry on-demand (turn on the fallback), try another zone, or ask for quota."
        )
        return FleetError(reason, remedy, code=exc.code, kind=exc.kind)

    async def _make_sure_gone(
        self, request: CreateRequest, exc: FleetError, progress: ProgressSink | None
    ) -> None:
        """Before the on-demand try: the failed spot node must not be there.

        A refusal at once (quota) created nothing; a stockout's node is normally removed with
        its operation. If a spot node of that name is still there after a failure inside the
        operation, it is ours and is deleted; anything else of that name is left alone.
        """
        try:
            node = await self.fleet.get_node(request.zone, request.name)
        except FleetError as missing:
            if missing.code == "NOT_FOUND":
                return
            raise
        if exc.kind != "stockout" or not node.spot:
            raise FleetError(
                f"{request.name} exists in {request.zone} ({node.state}, {node.provisioning}); "
                "not falling back to on-demand over it.",
                "Delete it or choose another name, then create again.",
                code="ALREADY_EXISTS",
            )
        if progress is not None:
            progress(
                Progress(
                    request.name,
                    "create",
                    "CLEANUP",
                    0.0,
                    f"deleting the failed spot node ({node.state}) first",
                    attempt="spot",
                )
            )
        if node.state != "DELETING":
            operation = await self.fleet.api.delete_node(request.zone, request.name)
            self._event(request.zone, request.name, "delete", "console", "failed spot node")
            await self._follow(
                operation, request.zone, request.name, "delete", progress, gone_ok=True
            )
            return
        while True:  # someone else's delete is under way: wait for it to finish
            try:
                await self.fleet.get_node(request.zone, request.name)
            except FleetError as missing:
                if missing.code == "NOT_FOUND":
                    return
                raise
            await asyncio.sleep(self.poll_s)

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
        delays = backoff(0.1, 5.0)
        while True:
            node = await self.fleet.get_node(node.zone, node.name)
            result = await self.remote.run(node, "all", "true")
            retryable = [o for o in result.failed if o.error is not None and o.error.transient]
            if not retryable or time.monotonic() >= deadline:
                break
            await asyncio.sleep(next(delays))
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
        """Stop, start or delete; stop/start of a multi-host slice is refused before any call."""
        refusal = stop_refusal(node, verb)
        if refusal:
            raise FleetError(
                refusal,
                "Delete it when done and create it again; only single-host TPU VMs stop.",
                code="FAILED_PRECONDITION",
                kind="pod_stop",
            )
        api = self.fleet.api
        method = {"stop": api.stop_node, "start": api.start_node, "delete": api.delete_node}[verb]
        try:
            operation = await method(node.zone, node.name)
            self._event(node.zone, node.name, verb, "console", "requested")
            return await self._follow(
                operation, node.zone, node.name, verb, progress, gone_ok=verb == "delete"
            )
        except FleetError as exc:
            kind = f"/{exc.kind}" if exc.kind else ""
            self._event(
                node.zone,
                node.name,
                "failed",
                "console",
                f"{verb} [{exc.code}{kind}]: {exc.reason}",
            )
            raise

    def observe(self, snapshot: FleetSnapshot) -> list[str]:
        """Record state changes seen by a refresh; return alerts for nodes that left READY."""
        alerts = []
        unreachable = {f.zone for f in snapshot.unreachable}
        seen = set()
        for node in snapshot.nodes:
            seen.add(node.key)
            if node.queued_resource:
                self._last_requests[node.key] = node.queued_key
            before = self._last_states.get(node.key)
            if before == node.state:
                continue
            self._last_states[node.key] = node.state
            if before is None:
                continue  # first sight: nothing changed that we know of
            self._event(node.zone, node.name, "state", "refresh", f"{before} → {node.state}")
            if node.state in LEAVING_REASONS:
                why = self._request_reason(snapshot, node.key)
                alerts.append(self._left_ready(node.zone, node.name, node.state, why))
        for key in list(self._last_states):
            zone, name = key.split("/", 1)
            if key not in seen and zone not in unreachable:
                before = self._last_states.pop(key)
                why = self._request_reason(snapshot, key)
                self._last_requests.pop(key, None)
                self._event(zone, name, "state", "refresh", f"{before} → gone")
                if before not in {"DELETING"}:
                    alerts.append(self._left_ready(zone, name, "DELETING", why))
        return [a for a in alerts if a]

    def _request_reason(self, snapshot: FleetSnapshot, node_key: str) -> str:
        """What the node's queued resource says of who took it (the same listing read it)."""
        request = self._last_requests.get(node_key, "")
        qr = snapshot.queued(request) if request else None
        return qr.leaving_reason() if qr is not None else ""

    def _left_ready(self, zone: str, name: str, state: str, why: str = "") -> str:
        reason = why or LEAVING_REASONS[state]
        lost = self.history.running_jobs_on(zone, name)
        finding = node_left(name, state, reason)
        for job in lost:
            self.history.set_status(job.job_id, JobStatus.LOST, f"node went {state}: {reason}")
            self.history.set_results(job.job_id, diagnoses=[finding])
            if self.jobs is not None:  # what its logs showed up to then, from the local copies
                self._results_tasks.add(asyncio.ensure_future(self.jobs.record_results(job)))
                self._results_tasks = {t for t in self._results_tasks if not t.done()}
        self._event(zone, name, "alert", "refresh", f"{state}: {reason}")
        jobs = f" Jobs lost: {', '.join(j.job_id for j in lost)}." if lost else ""
        return f"{name} is {state}. {reason}{jobs}"
