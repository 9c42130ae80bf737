"""The headless commands' queued-resource parts: `create --queued` and delete.

What `ls` prints of requests (`queued_table`, `queued_as_json`) lives in console/present/queued.py,
shared with the fleet table; it is named here too for the commands that print it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from console.models import Node, QueuedResource, format_age
from console.present.queued import QUEUED_JSON_KEYS as QUEUED_JSON_KEYS  # re-exported for `ls`
from console.present.queued import queued_as_json as queued_as_json
from console.present.queued import queued_table as queued_table
from console.services.fleet import FleetService
from console.services.lifecycle import LifecycleService, parse_labels
from console.services.queued_resources import (
    QueuedCreateRequest,
    QueuedResourceService,
    parse_duration,
)


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
