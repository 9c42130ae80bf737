"""Queued resources as text: the request columns the fleet table and `ls` share, the rows of
requests and their nodes in the table's order, and `ls --json`'s objects for them.

A request sits in the fleet table's own columns (services/fleet_columns.py keys), so the TUI and
`ls` say the same words; the UI adds only colour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from console.models import FleetSnapshot, Node, QueuedResource, format_age
from console.services.queued_resources import QueuedGroup, groups, quota_findings

# The name cell's marks: a request's row (with nodes under it, or none yet) and its nodes' rows.
GROUP_MARK = "▾ "
LONE_MARK = "▸ "
BRANCH = "├ "
LAST_BRANCH = "└ "
ROW_PREFIX = "queued:"  # a request's row key: queued:zone/name, apart from any node's zone/name


def row_key(qr: QueuedResource) -> str:
    return ROW_PREFIX + qr.key


def state_text(qr: QueuedResource) -> str:
    return qr.state + (f" ({qr.state_initiator})" if qr.state_initiator else "")


def type_text(qr: QueuedResource) -> str:
    return qr.accelerator_type + (f" x{qr.node_count}" if qr.multislice else "")


def nodes_text(group: QueuedGroup) -> str:
    return f"{len(group.nodes)}/{group.request.node_count}"


def error_text(qr: QueuedResource) -> str:
    return f"error {qr.error_code}: {qr.error_message}" if qr.error_message else ""


@dataclass(frozen=True)
class RequestColumn:
    """One column of a request: its `ls` title and the fleet table column it fills."""

    fleet_key: str
    title: str
    text: Callable[[QueuedGroup, datetime], str]


REQUEST_COLUMNS: tuple[RequestColumn, ...] = (
    RequestColumn("name", "REQUEST", lambda g, _: g.request.name),
    RequestColumn("zone", "ZONE", lambda g, _: g.request.zone),
    RequestColumn("state", "STATE", lambda g, _: state_text(g.request)),
    RequestColumn("provisioning", "TIER", lambda g, _: g.request.provisioning),
    RequestColumn("type", "TYPE", lambda g, _: type_text(g.request)),
    RequestColumn("workers", "NODES", lambda g, _: nodes_text(g)),
    RequestColumn("age", "WAITED", lambda g, now: format_age(g.request.age_seconds(now))),
    RequestColumn("ips", "BOUND", lambda g, _: g.request.wait_bound() or "-"),
)


def fleet_cells(group: QueuedGroup, now: datetime) -> dict[str, str]:
    """A request's row in the fleet table, by column key; the columns it has no word for: -."""
    cells = {c.fleet_key: c.text(group, now) for c in REQUEST_COLUMNS}
    cells["name"] = (GROUP_MARK if group.nodes else LONE_MARK) + group.request.name
    cells["workers"] += " nodes"
    qr = group.request
    cells["job"] = f"error {qr.error_code}" if qr.error_code else "-"
    return cells


def request_matches(qr: QueuedResource, query: str) -> bool:
    """The fleet filter on a request: every term in some field, as a node's (fleet_columns)."""
    if not query.strip():
        return True
    haystack = " ".join(
        [qr.name, qr.zone, qr.accelerator_type, qr.state, qr.provisioning, "queued"]
        + [f"{k}={v}" for k, v in qr.labels.items()]
    ).lower()
    return all(term in haystack for term in query.lower().split())


@dataclass(frozen=True)
class TableRow:
    """A row of the fleet table: a node (`branch` set when it sits under its request's row)
    or a request."""

    key: str
    node: Node | None = None
    group: QueuedGroup | None = None
    branch: str = ""


def table_rows(
    nodes: Sequence[Node], found: Sequence[QueuedGroup], query: str = ""
) -> list[TableRow]:
    """The nodes in the order given, each request's row just above the first of its nodes
    shown and its other shown nodes straight after; a request none of whose nodes is shown
    (none yet, or filtered out) gets a row after every node, if it matches the filter."""
    by_key = {g.key: g for g in found}
    shown: dict[str, list[Node]] = {}
    for node in nodes:
        if node.queued_key in by_key:
            shown.setdefault(node.queued_key, []).append(node)
    rows: list[TableRow] = []
    placed: set[str] = set()
    for node in nodes:
        group = by_key.get(node.queued_key)
        if group is None:
            rows.append(TableRow(node.key, node=node))
            continue
        if group.key in placed:
            continue
        placed.add(group.key)
        rows.append(TableRow(row_key(group.request), group=group))
        members = sorted(shown[group.key], key=group.slice_of)
        for i, member in enumerate(members):
            branch = LAST_BRANCH if i == len(members) - 1 else BRANCH
            rows.append(TableRow(member.key, node=member, group=group, branch=branch))
    for group in found:
        if group.key not in placed and request_matches(group.request, query):
            rows.append(TableRow(row_key(group.request), group=group))
    return rows


# ----- `ls`: the requests under the node table, and `ls --json` ---------------------------------
def queued_table(snapshot: FleetSnapshot, now: datetime) -> list[str]:
    """The requests under the node table: one line each, then its error and nodes indented."""
    found = groups(snapshot)
    if not found:
        return []
    head = tuple(c.title for c in REQUEST_COLUMNS)
    rows = [head] + [tuple(c.text(g, now) for c in REQUEST_COLUMNS) for g in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["", "Queued resources:"]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            continue
        g = found[i - 1]
        if g.request.error_message:
            lines.append(f"  └ {error_text(g.request)}")
        if g.nodes:
            lines.append("  └ nodes: " + ", ".join(f"{n.name} ({n.state})" for n in g.nodes))
    for finding in quota_findings(snapshot):
        lines.append(f"finding: {finding.text} {finding.remedy}")
    return lines


# `ls --json`: one object per request after the nodes' objects, these keys in this order; the
# first key, `queued_resource`, tells it from a node's (whose first key is `name`).
QUEUED_JSON_KEYS = (
    "queued_resource",
    "zone",
    "project",
    "state",
    "state_initiator",
    "tier",
    "provisioning",
    "accelerator_type",
    "runtime_version",
    "node_count",
    "nodes",
    "nodes_present",
    "chips",
    "create_time",
    "age_seconds",
    "valid_until",
    "valid_until_seconds",
    "valid_after",
    "error",
    "holds_quota",
)


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def queued_as_json(group: QueuedGroup, now: datetime) -> dict[str, Any]:
    qr = group.request
    return {
        "queued_resource": qr.name,
        "zone": qr.zone,
        "project": qr.project,
        "state": qr.state,
        "state_initiator": qr.state_initiator,
        "tier": qr.tier,
        "provisioning": qr.provisioning,
        "accelerator_type": qr.accelerator_type,
        "runtime_version": qr.runtime_version,
        "node_count": qr.node_count,
        "nodes": list(qr.node_names),
        "nodes_present": [n.name for n in group.nodes],
        "chips": qr.chips,
        "create_time": _when(qr.create_time),
        "age_seconds": qr.age_seconds(now),
        "valid_until": _when(qr.valid_until),
        "valid_until_seconds": qr.valid_until_s or None,
        "valid_after": _when(qr.valid_after),
        "error": {"code": qr.error_code, "message": qr.error_message} if qr.error_code else None,
        "holds_quota": qr.holds_quota,
    }
