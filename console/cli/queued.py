"""The headless commands' queued-resource parts: `ls` rows and JSON, `create --queued`, delete.

The text and JSON (`queued_table`, `queued_as_json`) are plain functions, ready to move into
`console/present/` beside the node table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from console.models import FleetSnapshot, Node, QueuedResource, format_age
from console.services.fleet import FleetService
from console.services.lifecycle import LifecycleService, parse_labels
from console.services.queued_resources import (
    QueuedCreateRequest,
    QueuedGroup,
    QueuedResourceService,
    groups,
    parse_duration,
    quota_findings,
)

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


def queued_table(snapshot: FleetSnapshot, now: datetime) -> list[str]:
    """The requests under the node table: one line each, then its nodes indented."""
    found = groups(snapshot)
    if not found:
        return []
    head = ("REQUEST", "ZONE", "STATE", "TIER", "TYPE", "NODES", "WAITED", "BOUND")
    rows = [head]
    for g in found:
        qr = g.request
        rows.append(
            (
                qr.name,
                qr.zone,
                qr.state + (f" ({qr.state_initiator})" if qr.state_initiator else ""),
                qr.provisioning,
                qr.accelerator_type + (f" x{qr.node_count}" if qr.multislice else ""),
                f"{len(g.nodes)}/{qr.node_count}",
                format_age(qr.age_seconds(now)),
                qr.wait_bound() or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["", "Queued resources:"]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            continue
        g = found[i - 1]
        if g.request.error_message:
            lines.append(f"  └ error {g.request.error_code}: {g.request.error_message}")
        if g.nodes:
            lines.append("  └ nodes: " + ", ".join(f"{n.name} ({n.state})" for n in g.nodes))
    for finding in quota_findings(snapshot):
        lines.append(f"finding: {finding.text} {finding.remedy}")
    return lines


def add_create_flags(create: argparse.ArgumentParser) -> None:
    create.add_argument(
        "--queued",
        action="store_true",
        help="ask through a queued resource and wait in its queue (v5e, v5p, v6e, multislice)",
    )
    create.add_argument(
        "--reserved", action="store_true", help="with --queued: the guaranteed (reserved) tier"
    )
    create.add_argument(
        "--valid-for", default="", help="with --queued: how long it may wait, e.g. 6h"
    )
    create.add_argument(
        "--count", type=int, default=1, help="with --queued: N nodes, a multislice request"
    )


def queued_request(args: argparse.Namespace, zone: str) -> QueuedCreateRequest:
    tier = "spot" if args.spot else "guaranteed" if args.reserved else ""
    return QueuedCreateRequest(
        args.name,
        zone,
        args.accelerator_type,
        args.version,
        tier=tier,
        valid_for_s=parse_duration(args.valid_for) if args.valid_for else 0.0,
        count=args.count,
        labels=parse_labels(args.label),
    )


async def create_queued(
    args: argparse.Namespace,
    zone: str,
    fleet: FleetService,
    life: LifecycleService,
    show: Callable[[Any], None],
) -> int:
    service = QueuedResourceService(fleet, life)
    outcome = await service.create(queued_request(args, zone), show)
    names = ", ".join(f"{n.name} {n.state}" for n in outcome.nodes)
    print(
        f"queued resource {outcome.request.name} ACTIVE after {format_age(outcome.waited_s)}: "
        f"{names} ({outcome.request.provisioning})"
    )
    if outcome.ssh_failed:
        print("ssh failed on: " + "; ".join(outcome.ssh_failed), file=sys.stderr)
        return 1
    return 0


async def request_named(fleet: FleetService, name: str, zone: str) -> QueuedResource | None:
    """The request of that name, for `delete NAME` when no node has it (a waiting or failed
    request has no node)."""
    snapshot = await fleet.list_nodes([zone] if zone else None)
    found = [q for q in snapshot.queued_resources if q.name == name]
    return found[0] if len(found) == 1 else None


async def delete_queued(
    service: QueuedResourceService,
    node: Node | None,
    qr: QueuedResource,
    confirmed: Callable[[str], bool],
    show: Callable[[Any], None],
) -> int:
    """Delete the request (with force: its nodes too) after a question that says so."""
    if not confirmed(service.delete_question(node, qr) + " Go on?"):
        return 1
    await service.delete(qr.zone, qr.name, show, force=True)
    gone = ", ".join(qr.node_names)
    print(f"queued resource {qr.name}: deleted, with its nodes ({gone})")
    return 0
