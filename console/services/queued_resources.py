"""Queued resources: their groups of nodes, create-through-queue, delete-right, quota findings.

Much TPU capacity comes only through a queued request (`gcloud compute tpus queued-resources`):
this is where the console waits for one, deletes one with its nodes, tells a request that sits
on quota with nothing to show for it, explains a node the TPU service took back, and starts one
program on every worker of every slice of a multislice request.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from console.models import (
    QUEUE_PROGRESS,
    FleetError,
    FleetSnapshot,
    Job,
    Node,
    QueuedResource,
    format_age,
)
from console.services.fleet import FleetService
from console.services.lifecycle import CreateRequest, LifecycleService, Progress, ProgressSink
from console.services.runtimes import default_runtime

# What MaxText's multihost runner and GoogleCloudPlatform/ml-testing-accelerators' multislice
# setup give every worker: the coordinator (slice 0, worker 0) at port 8080, the slice count,
# the worker's slice and the port.
MEGASCALE_PORT = 8080
# A request that leaves these states without reaching ACTIVE will not reach it.
ENDED = frozenset({"FAILED", "SUSPENDING", "SUSPENDED", "DELETING"})
DURATION_RE = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


def parse_duration(text: str) -> float:
    """`6h`, `90m`, `1d12h`, `30s` (gcloud's --valid-until-duration spelling) in seconds."""
    match = DURATION_RE.match(text.lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise FleetError(
            f"Duration {text!r} is not like 6h, 90m or 1d12h.",
            "Write a wait bound as days, hours, minutes or seconds: --valid-for 6h.",
            code="INVALID_ARGUMENT",
        )
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(days * 86400 + hours * 3600 + minutes * 60 + seconds)


@dataclass(frozen=True)
class QueuedGroup:
    """A request and the nodes it has now: one group in the fleet table."""

    request: QueuedResource
    nodes: tuple[Node, ...] = ()

    @property
    def key(self) -> str:
        return self.request.key

    @property
    def missing(self) -> tuple[str, ...]:
        """The nodes it asks for that do not exist (yet, or any more)."""
        have = {n.name for n in self.nodes}
        return tuple(n for n in self.request.node_names if n not in have)

    @property
    def ready(self) -> bool:
        return not self.missing and all(n.state == "READY" for n in self.nodes)

    def slice_of(self, node: Node) -> int:
        names = list(self.request.node_names)
        return names.index(node.name) if node.name in names else -1

    def summary(self, now: datetime) -> str:
        """State, tier, node count, age, wait bound and a FAILED request's error, in a line."""
        qr = self.request
        parts = [qr.state, qr.provisioning, f"{len(self.nodes)}/{qr.node_count} nodes"]
        parts.append(f"waited {format_age(qr.age_seconds(now))}")
        if qr.wait_bound():
            parts.append(qr.wait_bound())
        if qr.state_initiator and qr.state in ENDED:
            parts.append(f"by {qr.state_initiator}")
        if qr.error_message:
            parts.append(f"error {qr.error_code}: {qr.error_message}")
        return ", ".join(parts)


def groups(snapshot: FleetSnapshot) -> list[QueuedGroup]:
    """Every request of the snapshot with its nodes, in zone and name order."""
    by_request: dict[str, list[Node]] = {}
    for node in snapshot.nodes:
        if node.queued_resource:
            by_request.setdefault(node.queued_key, []).append(node)
    out = []
    for qr in sorted(snapshot.queued_resources, key=lambda q: (q.zone, q.name)):
        nodes = sorted(by_request.get(qr.key, ()), key=lambda n: n.name)
        out.append(QueuedGroup(qr, tuple(nodes)))
    return out


def group_of(snapshot: FleetSnapshot, node: Node) -> QueuedGroup | None:
    if not node.queued_resource:
        return None
    return next((g for g in groups(snapshot) if g.key == node.queued_key), None)


@dataclass(frozen=True)
class QuotaFinding:
    """A request that holds quota with no node to show for it."""

    request: QueuedResource
    since: datetime | None

    @property
    def text(self) -> str:
        qr = self.request
        when = f" since {self.since.astimezone():%Y-%m-%d %H:%M}" if self.since else ""
        why = f" ({qr.error_message})" if qr.error_message else ""
        by = " (reclaimed by the TPU service)" if qr.reclaimed else ""
        return (
            f"Queued resource {qr.name} in {qr.zone} is {qr.state}{by} and holds {qr.chips} "
            f"chips of {qr.provisioning} quota{when}{why}."
        )

    @property
    def remedy(self) -> str:
        return (
            f"Delete the request to free its quota: `tpuconsole delete {self.request.name} "
            f"--zone {self.request.zone}` (gcloud compute tpus queued-resources delete)."
        )


def quota_findings(snapshot: FleetSnapshot) -> list[QuotaFinding]:
    """FAILED and SUSPENDED requests: what sits on the quota, oldest first."""
    found = [QuotaFinding(qr, qr.create_time) for qr in snapshot.queued_resources if qr.holds_quota]
    return sorted(found, key=lambda f: f.since or datetime.min.replace(tzinfo=UTC))


@dataclass(frozen=True)
class QueuedCreateRequest:
    """`tpuconsole create NAME --queued [--spot|--reserved] [--valid-for 6h] [--count N]`."""

    name: str
    zone: str
    accelerator_type: str
    runtime_version: str = ""
    tier: str = ""  # spot | guaranteed | "" (on-demand)
    valid_for_s: float = 0.0
    count: int = 1  # > 1: a multislice request of that many nodes, NAME-0 ..
    labels: dict[str, str] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """A plain create's checks (name, zone, type, labels), then the queue's own."""
        out = CreateRequest(
            self.name, self.zone, self.accelerator_type, labels=self.labels
        ).problems()
        if self.count < 1:
            out.append(f"--count {self.count}: a request asks for at least one node.")
        if self.tier not in {"", "spot", "guaranteed"}:
            out.append(f"Tier {self.tier!r}: spot, guaranteed (reserved) or none (on-demand).")
        return out


@dataclass(frozen=True)
class QueuedOutcome:
    request: QueuedResource
    nodes: tuple[Node, ...]
    waited_s: float
    ssh_ok: tuple[str, ...] = ()
    ssh_failed: tuple[str, ...] = ()


class QueuedResourceService:
    """Built beside FleetService and LifecycleService; plain asyncio, no screen."""

    def __init__(
        self, fleet: FleetService, lifecycle: LifecycleService, *, poll_s: float = 2.0
    ) -> None:
        self.fleet = fleet
        self.lifecycle = lifecycle
        self.poll_s = poll_s

    def _event(self, zone: str, name: str, kind: str, detail: str) -> None:
        self.lifecycle._event(zone, name, kind, "console", detail)

    # ----- create through the queue -----------------------------------------------------------
    async def create(
        self, request: QueuedCreateRequest, progress: ProgressSink | None = None
    ) -> QueuedOutcome:
        """Queue the request, report each state with the time waited, and once it is ACTIVE
        check ssh on every node as a plain create does; a request that FAILs says why."""
        problems = request.problems()
        if problems:
            raise FleetError(" ".join(problems), code="INVALID_ARGUMENT")
        api = self.fleet.api
        version = request.runtime_version
        if not version:
            try:
                offered = await api.runtime_versions(request.zone)
            except FleetError:
                offered = []
            version = default_runtime(request.accelerator_type, offered)
        metadata = self.lifecycle._key_metadata([])
        started = time.monotonic()
        operation = await api.create_queued_resource(
            request.zone,
            request.name,
            request.accelerator_type,
            version,
            tier=request.tier,
            valid_for_s=request.valid_for_s,
            node_count=request.count,
            labels=request.labels,
            metadata=metadata,
        )
        tier = request.tier or "on-demand"
        self._event(
            request.zone,
            request.name,
            "create",
            f"queued {request.accelerator_type} x{request.count} {version} {tier}",
        )
        await api.wait_operation(operation, poll_s=self.poll_s, what=f"Queueing {request.name}")
        qr = await self.wait_active(request.zone, request.name, progress, started=started)
        nodes = await self._nodes_of(qr)
        waited = time.monotonic() - started
        ok: list[str] = []
        failed: list[str] = []
        for node in nodes:
            good, bad = await self.lifecycle.check_ssh(node, progress)
            ok.extend(f"{node.name} w{w}" for w in good)
            failed.extend(f"{node.name} {b}" for b in bad)
        return QueuedOutcome(qr, nodes, waited, tuple(ok), tuple(failed))

    async def wait_active(
        self,
        zone: str,
        name: str,
        progress: ProgressSink | None = None,
        *,
        started: float | None = None,
        timeout_s: float = 86400.0,
    ) -> QueuedResource:
        """Follow a request to ACTIVE; one progress line per look, with the time waited."""
        api = self.fleet.api
        started = time.monotonic() if started is None else started
        last = ""
        while True:
            qr = await api.get_queued_resource(zone, name)
            waited = time.monotonic() - started
            if qr.state != last:
                last = qr.state
                self._event(zone, name, "state", f"queued: {qr.state}")
            if progress is not None:
                note = qr.wait_bound() if qr.state in QUEUE_PROGRESS[:3] else ""
                progress(Progress(name, "queue", qr.state, waited, note))
            if qr.state == "ACTIVE":
                return qr
            if qr.state in ENDED:
                raise self._ended(qr)
            if waited >= timeout_s:
                raise FleetError(
                    f"Queued resource {name} is still {qr.state} after {format_age(waited)}.",
                    "It goes on waiting in Google Cloud; `tpuconsole ls` shows it.",
                    code="DEADLINE_EXCEEDED",
                )
            await asyncio.sleep(self.poll_s)

    @staticmethod
    def _ended(qr: QueuedResource) -> FleetError:
        if qr.state == "FAILED":
            return FleetError(
                f"Queued resource {qr.name} FAILED: [{qr.error_code}] {qr.error_message}",
                "It still holds its quota: delete it (`tpuconsole delete "
                f"{qr.name}`), then try another zone, another tier or a longer --valid-for.",
                code="FAILED_PRECONDITION",
                kind="queued_failed",
            )
        why = qr.leaving_reason() or f"initiated by {qr.state_initiator or 'nobody known'}."
        return FleetError(
            f"Queued resource {qr.name} went {qr.state} before it was ACTIVE: {why}",
            "Delete it to free its quota, or reset it to queue again.",
            code="ABORTED",
        )

    async def _nodes_of(self, qr: QueuedResource) -> tuple[Node, ...]:
        nodes = []
        for name in qr.node_names:
            node = await self.fleet.get_node(qr.zone, name)
            if node.state != "READY":  # ACTIVE can be read a moment before the node says READY
                node = await self._until_ready(node)
            nodes.append(node)
        return tuple(nodes)

    async def _until_ready(self, node: Node) -> Node:
        for _ in range(int(60 / max(self.poll_s, 0.01))):
            node = await self.fleet.get_node(node.zone, node.name)
            if node.state == "READY":
                break
            await asyncio.sleep(self.poll_s)
        return node

    # ----- delete right -----------------------------------------------------------------------
    @staticmethod
    def delete_question(node: Node | None, qr: QueuedResource) -> str:
        """What the confirmation says: the request goes, with every node it has."""
        nodes = ", ".join(qr.node_names) or "none"
        if qr.state in {"CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "FAILED"}:
            nodes = f"none yet: {nodes} never came"
        first = f"{node.name} belongs to queued resource {qr.name}. " if node is not None else ""
        return (
            f"{first}Delete queued resource {qr.name} in {qr.zone} ({qr.state}) with force: "
            f"its nodes ({nodes}) are deleted too, and its quota is freed."
        )

    async def request_of(self, node: Node) -> QueuedResource | None:
        if not node.queued_resource:
            return None
        try:
            return await self.fleet.api.get_queued_resource(node.zone, node.queued_resource)
        except FleetError as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise

    async def delete(
        self, zone: str, name: str, progress: ProgressSink | None = None, *, force: bool = True
    ) -> None:
        """DeleteQueuedResource (with force: its nodes first), followed until the request and
        its nodes are gone."""
        api = self.fleet.api
        started = time.monotonic()
        operation = await api.delete_queued_resource(zone, name, force=force)
        self._event(zone, name, "delete", f"queued resource, force={force}")
        waiter = asyncio.ensure_future(
            api.wait_operation(operation, poll_s=self.poll_s, what=f"Deleting {name}")
        )
        try:
            while not waiter.done():
                try:
                    qr = await api.get_queued_resource(zone, name)
                    state = qr.state
                except FleetError as exc:
                    if exc.code != "NOT_FOUND":
                        raise
                    state = "GONE"
                if progress is not None:
                    progress(Progress(name, "delete", state, time.monotonic() - started))
                await asyncio.wait([waiter], timeout=self.poll_s)
            waiter.result()
        finally:
            waiter.cancel()
        if progress is not None:
            progress(Progress(name, "delete", "GONE", time.monotonic() - started))

    async def delete_node(self, node: Node, progress: ProgressSink | None = None) -> str:
        """A node of a request: the request goes with force. Returns what was deleted."""
        if not node.queued_resource:
            await self.lifecycle.change("delete", node, progress)
            return node.name
        await self.delete(node.zone, node.queued_resource, progress, force=True)
        return node.queued_resource

    async def cleanup(self, finding: QuotaFinding, progress: ProgressSink | None = None) -> None:
        """The finding's one confirmed cleanup: delete the request, which frees its quota."""
        qr = finding.request
        await self.delete(qr.zone, qr.name, progress, force=True)

    # ----- multislice ---------------------------------------------------------------------------
    @staticmethod
    def megascale_env(group: QueuedGroup, slice_id: int) -> dict[str, str]:
        coordinator = group.nodes[0].workers[0].internal_ip if group.nodes[0].workers else ""
        return {
            "MEGASCALE_COORDINATOR_ADDRESS": f"{coordinator}:{MEGASCALE_PORT}",
            "MEGASCALE_NUM_SLICES": str(group.request.node_count),
            "MEGASCALE_SLICE_ID": str(slice_id),
            "MEGASCALE_PORT": str(MEGASCALE_PORT),
        }

    @staticmethod
    def launch_refusal(group: QueuedGroup | None, node: Node, selection: str = "all") -> str:
        """Why a launch on this node alone would hang, or "" when it may go."""
        if group is None or not group.request.multislice:
            return ""
        names = ", ".join(group.request.node_names)
        if selection.strip() not in {"", "all"}:
            return (
                f"{node.name} is one slice of multislice group {group.request.name} ({names}): "
                "every worker of every slice must run the program; launch on the group with "
                "--worker all."
            )
        return (
            f"{node.name} is one slice of multislice group {group.request.name} ({names}): "
            "the other slices would never join; launch on the group instead."
        )

    async def launch_group(
        self,
        jobs: Any,
        group: QueuedGroup,
        command: str,
        *,
        kind: str = "custom",
        env: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        ship_runners: bool = False,
    ) -> list[Job]:
        """The same command on every worker of every slice, started together, each slice with
        its MEGASCALE values; nothing starts if a slice is missing or not READY."""
        if not group.ready:
            missing = ", ".join(group.missing) or ", ".join(
                f"{n.name} ({n.state})" for n in group.nodes if n.state != "READY"
            )
            raise FleetError(
                f"Multislice group {group.request.name} is not whole: {missing}.",
                "Wait until every slice is READY (the request ACTIVE), then launch.",
                code="FAILED_PRECONDITION",
            )
        slices: Sequence[Node] = sorted(group.nodes, key=group.slice_of)
        whole = replace(group, nodes=tuple(slices))
        for node in slices:  # every worker reachable first: a part would wait for the rest
            await jobs.remote.targets(node, "all")
        return list(
            await asyncio.gather(
                *(
                    jobs.launch(
                        node,
                        "all",
                        command,
                        kind=kind,
                        env={**(env or {}), **self.megascale_env(whole, i)},
                        params=params,
                        ship_runners=ship_runners,
                    )
                    for i, node in enumerate(slices)
                )
            )
        )
