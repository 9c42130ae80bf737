"""The sandbox's fleet: nodes, their states over time, operations and quota, kept in one JSON file.

The emulator serves it over gRPC; tests and `tpuconsole sandbox` drive it. It is thread-safe
because the sandbox serves from its own thread while tests poke it (preempt, inject faults).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from console.models import accelerator_shape

SANDBOX_PROJECT = "tpuconsole-sandbox"
GONE = "GONE"  # a pending state meaning "the node disappears"

DEFAULT_RUNTIME_VERSIONS = (
    "tpu-ubuntu2204-base",
    "tpu-vm-v4-base",
    "v2-alpha-tpuv5-lite",
    "v2-alpha-tpuv6e",
    "tpu-vm-tf-2.16.1-pjrt",
)

DEFAULT_ACCELERATOR_TYPES: dict[str, tuple[str, ...]] = {
    "us-central2-b": ("v4-8", "v4-16", "v4-32", "v4-64"),
    "us-central1-a": ("v3-8", "v3-32", "v5litepod-8", "v5litepod-16"),
    "europe-west4-a": ("v5litepod-4", "v5litepod-8", "v5litepod-16", "v3-8", "v6e-8"),
}


class QuotaExceeded(Exception):
    """A spot create beyond the zone's spot chip quota, with the API's own wording."""


class AlreadyExists(Exception):
    pass


class NotFound(Exception):
    pass


class FailedPrecondition(Exception):
    pass


@dataclass(frozen=True)
class SandboxTiming:
    """How long transitions take; tests shrink these, the interactive sandbox keeps them humane."""

    create_s: float = 4.0
    start_s: float = 3.0
    stop_s: float = 2.0
    delete_s: float = 2.0


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

    @property
    def key(self) -> str:
        return f"{self.zone}/{self.name}"

    @property
    def hosts(self) -> int:
        return accelerator_shape(self.accelerator_type).hosts

    def internal_ip(self, worker: int) -> str:
        return f"10.{(self.node_id >> 8) % 256}.{self.node_id % 256}.{worker + 2}"


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
    ]


@dataclass
class SandboxFleet:
    """Nodes by zone, moved along their pending transitions whenever anyone looks."""

    path: Path | None
    nodes: dict[str, SandboxNode] = field(default_factory=dict)
    operations: dict[int, SandboxOperation] = field(default_factory=dict)
    next_id: int = 2000
    timing: SandboxTiming = field(default_factory=SandboxTiming)
    zones: tuple[str, ...] = tuple(DEFAULT_ACCELERATOR_TYPES)
    spot_chip_quota: dict[str, int] = field(default_factory=lambda: {"us-central2-b": 4})
    default_spot_quota: int = 64
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # ----- persistence -------------------------------------------------------------------------
    @classmethod
    def default(cls, path: Path | None, now: float | None = None, **kw) -> SandboxFleet:
        fleet = cls(path=path, **kw)
        for node in _default_nodes(time.time() if now is None else now):
            fleet.nodes[node.key] = node
        fleet.save()
        return fleet

    @classmethod
    def load_or_default(cls, path: Path, **kw) -> SandboxFleet:
        if not path.exists():
            return cls.default(path, **kw)
        data = json.loads(path.read_text())
        fleet = cls(path=path, next_id=data.get("next_id", 2000), **kw)
        for raw in data.get("nodes", []):
            raw["pending"] = [tuple(p) for p in raw.get("pending", [])]
            node = SandboxNode(**raw)
            fleet.nodes[node.key] = node
        for raw in data.get("operations", []):
            op = SandboxOperation(**raw)
            fleet.operations[op.op_id] = op
        return fleet

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            data = {
                "next_id": self.next_id,
                "nodes": [asdict(n) for n in self.nodes.values()],
                "operations": [asdict(o) for o in self.operations.values()],
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
            for op in self.operations.values():
                if op.end_time or op.error:
                    continue
                node = self.nodes.get(f"{op.zone}/{op.node_name}")
                state = node.state if node else GONE
                if state == op.done_state:
                    op.end_time = now
                elif node is None or state in {"PREEMPTED", "TERMINATED"}:
                    op.error = f"Node {op.node_name} ended {state} before the {op.verb} finished."
                    op.end_time = now
            if changes:
                self.save()
        return changes

    # ----- reads -------------------------------------------------------------------------------
    def list(self, zone: str) -> list[SandboxNode]:
        self.advance()
        with self._lock:
            return sorted((n for n in self.nodes.values() if n.zone == zone), key=lambda n: n.name)

    def get(self, zone: str, name: str) -> SandboxNode:
        self.advance()
        with self._lock:
            node = self.nodes.get(f"{zone}/{name}")
            if node is None:
                raise NotFound(f"Node {name} not found in zone {zone}.")
            return node

    def operation(self, op_id: int) -> SandboxOperation:
        self.advance()
        with self._lock:
            if op_id not in self.operations:
                raise NotFound(f"Operation {op_id} not found.")
            return self.operations[op_id]

    def accelerator_types(self, zone: str) -> tuple[str, ...]:
        return DEFAULT_ACCELERATOR_TYPES.get(zone, ("v4-8", "v5litepod-8"))

    # ----- writes ------------------------------------------------------------------------------
    def _new_operation(self, zone: str, name: str, verb: str, done_state: str) -> SandboxOperation:
        op = SandboxOperation(self.next_id, zone, name, verb, time.time(), done_state)
        self.next_id += 1
        self.operations[op.op_id] = op
        return op

    def _spot_chips_in_use(self, zone: str) -> int:
        return sum(
            accelerator_shape(n.accelerator_type).chips
            for n in self.nodes.values()
            if n.zone == zone and (n.spot or n.preemptible)
        )

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
    ) -> SandboxOperation:
        self.advance()
        with self._lock:
            if f"{zone}/{name}" in self.nodes:
                raise AlreadyExists(f"Node {name} already exists in zone {zone}.")
            shape = accelerator_shape(accelerator_type)
            if shape.chips == 0 or accelerator_type not in self.accelerator_types(zone):
                raise FailedPrecondition(
                    f"Accelerator type {accelerator_type} is not available in zone {zone}."
                )
            if spot or preemptible:
                quota = self.spot_chip_quota.get(zone, self.default_spot_quota)
                if self._spot_chips_in_use(zone) + shape.chips > quota:
                    region = zone.rsplit("-", 1)[0]
                    metric = (
                        f"TPU{shape.version.upper()}sPreemptiblePodPerProjectPerRegionForTPUAPI"
                    )
                    raise QuotaExceeded(
                        f"Quota limit '{metric}' has been exceeded. "
                        f"Limit: {quota} in region {region}."
                    )
            now = time.time()
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
                pending=[(now + self.timing.create_s, "READY")],
            )
            self.next_id += 1
            self.nodes[node.key] = node
            op = self._new_operation(zone, name, "create", "READY")
            self.save()
            return op

    def _transition(
        self, zone: str, name: str, verb: str, allowed: set[str], via: str, to: str, after: float
    ) -> SandboxOperation:
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

    def stop(self, zone: str, name: str) -> SandboxOperation:
        return self._transition(
            zone, name, "stop", {"READY"}, "STOPPING", "STOPPED", self.timing.stop_s
        )

    def start(self, zone: str, name: str) -> SandboxOperation:
        return self._transition(
            zone, name, "start", {"STOPPED"}, "STARTING", "READY", self.timing.start_s
        )

    def preempt(self, zone: str, name: str) -> None:
        """What Compute Engine does to a spot VM: it goes PREEMPTED at once and stays there."""
        with self._lock:
            node = self.nodes.get(f"{zone}/{name}")
            if node is None:
                raise NotFound(f"Node {name} not found in zone {zone}.")
            if not (node.spot or node.preemptible):
                raise FailedPrecondition(f"Node {name} is on-demand; only spot VMs are preempted.")
            node.state, node.health, node.pending = "PREEMPTED", "", []
            node.symptoms = ["Node was preempted by the Compute Engine scheduler"]
        self.advance()
        self.save()

    def add_node(self, node: SandboxNode) -> None:
        """For benchmarks and tests that need a fleet of a given size."""
        with self._lock:
            self.nodes[node.key] = node

    def new_node_id(self) -> int:
        with self._lock:
            self.next_id += 1
            return self.next_id
