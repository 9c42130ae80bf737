"""What each fleet column says about a node, shared by the TUI table and `tpuconsole ls`.

Plain text only; the UI adds colour. Sort keys and the filter live here so both agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from console.models import FleetSnapshot, Node, ZoneFailure, format_age


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    text: Callable[[Node, datetime], str]
    sort_key: Callable[[Node, datetime], Any]
    sort_hotkey: str = ""


def _ips(node: Node) -> str:
    ips = [w.external_ip or w.internal_ip for w in node.workers]
    if len(ips) > 2:
        return f"{ips[0]} +{len(ips) - 1}"
    return ",".join(ips) or "-"


def _age_key(node: Node, now: datetime) -> float:
    age = node.age_seconds(now)
    return -1.0 if age is None else age


COLUMNS: tuple[Column, ...] = (
    Column("name", "NAME", lambda n, _: n.name, lambda n, _: n.name, "N"),
    Column("zone", "ZONE", lambda n, _: n.zone, lambda n, _: (n.zone, n.name), "Z"),
    Column(
        "type",
        "TYPE",
        lambda n, _: n.accelerator_type,
        lambda n, _: (n.accelerator_type, n.name),
        "T",
    ),
    Column("state", "STATE", lambda n, _: n.state, lambda n, _: (n.state, n.name), "S"),
    Column("health", "HEALTH", lambda n, _: n.health or "-", lambda n, _: (n.health, n.name)),
    Column(
        "provisioning",
        "PROV",
        lambda n, _: n.provisioning,
        lambda n, _: (n.provisioning, n.name),
        "P",
    ),
    Column(
        "workers",
        "WORKERS",
        lambda n, _: str(len(n.workers)),
        lambda n, _: (len(n.workers), n.name),
        "W",
    ),
    Column("ips", "EXTERNAL IP", lambda n, _: _ips(n), lambda n, _: (_ips(n), n.name)),
    Column("age", "AGE", lambda n, now: format_age(n.age_seconds(now)), _age_key, "A"),
    # Filled by the probe and job issues; reserved now so the layout does not jump later.
    Column("lock", "TPU LOCK", lambda n, _: "-", lambda n, _: n.name),
    Column("job", "JOB", lambda n, _: "-", lambda n, _: n.name),
)

COLUMN_BY_KEY = {c.key: c for c in COLUMNS}


def row_texts(node: Node, now: datetime) -> list[str]:
    return [c.text(node, now) for c in COLUMNS]


def matches(node: Node, query: str) -> bool:
    """Every whitespace-separated term must appear in some field (case-insensitive)."""
    if not query.strip():
        return True
    haystack = " ".join(
        [
            node.name,
            node.zone,
            node.accelerator_type,
            node.state,
            node.health,
            node.provisioning,
            node.runtime_version,
        ]
        + [f"{k}={v}" for k, v in node.labels.items()]
    ).lower()
    return all(term in haystack for term in query.lower().split())


def sort_nodes(nodes: list[Node], column: str, reverse: bool, now: datetime) -> list[Node]:
    col = COLUMN_BY_KEY[column]
    return sorted(nodes, key=lambda n: col.sort_key(n, now), reverse=reverse)


# The keys of one `ls --json` object: documented in the README ("ls --json") and pinned by a
# test; add keys at will, never rename or drop one.
JSON_KEYS = (
    "name",
    "zone",
    "project",
    "node_id",
    "accelerator_type",
    "accelerator_type_from_config",
    "accelerator_config",
    "accelerator_version",
    "chips",
    "hosts",
    "state",
    "health",
    "health_description",
    "spot",
    "preemptible",
    "reserved",
    "provisioning",
    "stoppable",
    "runtime_version",
    "api_version",
    "workers",
    "network_config",
    "service_account",
    "data_disks",
    "labels",
    "metadata",
    "tags",
    "create_time",
    "age_seconds",
    "symptoms",
    "description",
    "queued_resource",
)


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def node_as_json(node: Node, now: datetime) -> dict[str, Any]:
    """One node for `ls --json`: plain JSON types, enums as names (or numbers, as strings)."""
    shape = node.shape
    return {
        "name": node.name,
        "zone": node.zone,
        "project": node.project,
        "node_id": node.node_id,
        "accelerator_type": node.accelerator_type,
        "accelerator_type_from_config": node.type_from_config,
        "accelerator_config": {"type": node.accelerator_config_type, "topology": node.topology},
        "accelerator_version": node.accelerator_version,
        "chips": shape.chips,
        "hosts": node.hosts,
        "state": node.state,
        "health": node.health,
        "health_description": node.health_description,
        "spot": node.spot,
        "preemptible": node.preemptible,
        "reserved": node.reserved,
        "provisioning": node.provisioning,
        "stoppable": not node.multi_host,
        "runtime_version": node.runtime_version,
        "api_version": node.api_version,
        "workers": [
            {
                "index": w.index,
                "internal_ip": w.internal_ip,
                "external_ip": w.external_ip,
                "runtime_port": w.runtime_port,
            }
            for w in node.workers
        ],
        "network_config": {
            "network": node.network,
            "subnetwork": node.subnetwork,
            "enable_external_ips": node.external_ips,
        },
        "service_account": {
            "email": node.service_account,
            "scopes": list(node.service_account_scopes),
        },
        "data_disks": [{"source_disk": d.source_disk, "mode": d.mode} for d in node.data_disks],
        "labels": dict(node.labels),
        "metadata": dict(node.metadata),
        "tags": list(node.tags),
        "create_time": _when(node.create_time),
        "age_seconds": node.age_seconds(now),
        "symptoms": [
            {
                "type": s.kind,
                "details": s.details,
                "worker_id": s.worker_id,
                "create_time": _when(s.create_time),
            }
            for s in node.symptoms
        ],
        "description": node.description,
        "queued_resource": node.queued_resource,
    }


def zones_line(snapshot: FleetSnapshot) -> str:
    """Where the zones came from and how many answered: the header's zone part."""
    source = snapshot.zones_source or "discovered"
    if source.endswith("config.toml"):
        source = "config.toml"
    text = f"zones: {source} · {snapshot.access_summary()}"
    if snapshot.legacy:
        count = len(snapshot.legacy)
        text += f" · {count} v1 TPU Node{'s' if count != 1 else ''} not shown"
    return text


def unreachable_groups(snapshot: FleetSnapshot) -> list[tuple[str, ZoneFailure]]:
    """Failures to show, one per zone; many zones failing the same way are one line."""
    by_kind: dict[tuple[str, str], list[ZoneFailure]] = {}
    for failure in snapshot.unreachable:
        by_kind.setdefault((failure.code, failure.remedy), []).append(failure)
    out: list[tuple[str, ZoneFailure]] = []
    for failures in by_kind.values():
        if len(failures) > 2:
            names = ", ".join(f.zone for f in failures[:3]) + (", …" if len(failures) > 3 else "")
            out.append((f"{len(failures)} zones ({names})", failures[0]))
        else:
            out.extend((f.zone, f) for f in failures)
    return out


def render_table(snapshot: FleetSnapshot, now: datetime) -> str:
    """The `ls` table: the TUI's columns, aligned for a terminal."""
    header = [c.title for c in COLUMNS]
    rows = [row_texts(n, now) for n in snapshot.nodes]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)
