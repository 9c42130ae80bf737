"""`ls`, `create`, `stop`, `start`, `delete`: the TPU VMs themselves."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from console.cli.common import ONGOING, confirmed, fail, run, settings_for, where, zone_of
from console.cli.queued import (
    create_queued,
    delete_queued,
    queued_as_json,
    queued_table,
    request_named,
)
from console.models import FleetError
from console.present.fleet import unreachable_lines
from console.services.fleet_columns import node_as_json, render_table, zones_line
from console.services.lifecycle import CreateRequest, Progress, parse_labels, stop_refusal
from console.services.queued_resources import QueuedResourceService, groups
from console.wiring import Wiring


def cmd_ls(args: argparse.Namespace) -> int:
    """The fleet; exit 1 only for zones that should answer and did not.

    Discovered zones without TPU access are one summary line, not failures.
    """

    async def body(services: Wiring) -> int:
        snapshot = await services.fleet.list_nodes()
        now = datetime.now(UTC)
        if args.json:
            for node in snapshot.nodes:
                print(json.dumps(node_as_json(node, now)))
            for group in groups(snapshot):  # the requests, after the nodes
                print(json.dumps(queued_as_json(group, now)))
            if snapshot.no_access or snapshot.legacy:
                print(f"tpuconsole: {zones_line(snapshot)}", file=sys.stderr)
        else:
            if services.source.is_sandbox:
                print("SANDBOX fleet (no Google Cloud project configured; see README)")
            print(zones_line(snapshot))
            print(render_table(snapshot, now))
            for line in queued_table(snapshot, now):
                print(line)
        for line in unreachable_lines(snapshot):
            print(f"tpuconsole: {line}", file=sys.stderr)
        return 1 if snapshot.unreachable else 0

    return run(args, body)


def cmd_create(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    zone = zone_of(args)
    if not zone:
        if not settings.default_zone:
            return fail("create needs --zone (where the TPU VM goes)")
        zone = settings.default_zone
        print(f"zone: {zone} (from {settings.default_zone_source})", flush=True)

    async def body(services: Wiring) -> int:
        if args.queued:
            show = _shower(services, zone)
            return await create_queued(args, zone, services.fleet, services.lifecycle, show)
        request = CreateRequest(
            args.name,
            zone,
            args.accelerator_type,
            args.version,
            spot=args.spot,
            fallback_on_demand=args.fallback_on_demand,
            labels=parse_labels(args.label),
            startup_command=args.startup,
        )
        services.history  # noqa: B018 - a damaged history is refused before anything is made
        outcome = await services.lifecycle.create(request, _shower(services, zone), wait=args.wait)
        for note in outcome.notes:
            print(f"note: {note}")
        if outcome.startup_job:
            print(
                f"bootstrap: job {outcome.startup_job} "
                f"(tpuconsole logs {outcome.startup_job.split('-')[0]} -f)"
            )
        if outcome.ssh_failed:
            print("ssh failed on: " + "; ".join(outcome.ssh_failed), file=sys.stderr)
            return 1
        kind = "spot" if outcome.spot else "on-demand"
        print(
            f"{outcome.node.name} {outcome.node.state} ({kind})"
            + ("" if args.wait else "; --wait follows it to READY and checks ssh")
        )
        return 0

    return run(args, body, settings)


def cmd_change(args: argparse.Namespace) -> int:
    """stop, start or delete a node, asking first for the two that lose something."""
    verb = args.command

    async def body(services: Wiring) -> int:
        services.history  # noqa: B018 - a damaged history is refused before anything changes
        if verb == "delete":
            done = await _delete_queued(args, services)
            if done is not None:
                return done
        node = await services.fleet.find_node(args.name, zone_of(args))
        refusal = stop_refusal(node, verb)
        if refusal:  # before asking, before calling the API
            return fail(f"{refusal} Delete it when done and create it again.")
        if verb in {"stop", "delete"} and not confirmed(
            args,
            f"{verb.capitalize()} {node.name} ({node.zone}, "
            f"{node.accelerator_type}, now {node.state})?",
        ):
            return 1
        after = await services.lifecycle.change(verb, node, _shower(services, node.zone))
        print(f"{args.name}: {after.state if after else 'deleted'}")
        return 0

    return run(args, body)


async def _delete_queued(args: argparse.Namespace, services: Wiring) -> int | None:
    """`delete NAME` for a node of a queued resource or a request by name; None: neither."""
    fleet, zone = services.fleet, zone_of(args)
    service = QueuedResourceService(fleet, services.lifecycle)
    try:
        node = await fleet.find_node(args.name, zone)
    except FleetError as exc:
        if exc.code != "NOT_FOUND":
            raise
        node = None
    qr = await service.request_of(node) if node is not None else None
    if qr is None and node is None:
        qr = await request_named(fleet, args.name, zone)
    if qr is None:
        return None
    show = _shower(services, qr.zone)
    return await delete_queued(service, node, qr, lambda q: confirmed(args, q), show)


def _shower(services: Wiring, zone: str):
    def show(progress: Progress) -> None:
        print(progress.line(), flush=True)
        ONGOING.sentence = ongoing_operation(progress, where(services), zone)

    return show


# The state that ends each operation: after it, nothing of it goes on without us.
_DONE_STATE = {"create": "READY", "start": "READY", "stop": "STOPPED", "delete": "GONE"}


def ongoing_operation(progress: Progress, where: str, zone: str) -> str:
    """The sentence for Ctrl-C while an operation is followed: it goes on without us."""
    verb, name = progress.verb, progress.node
    if verb == "bootstrap":
        job = progress.message.removeprefix("job ")
        return (
            f"The bootstrap job {job} runs on on the workers; follow it with "
            f"`tpuconsole logs {job.split('-')[0]} -f`."
        )
    if verb not in _DONE_STATE or progress.state == _DONE_STATE[verb]:
        return ""
    undo = (
        f", or delete the node with `tpuconsole delete {name} --zone {zone}`"
        if verb == "create"
        else ""
    )
    return (
        f"The {verb} of {name} goes on {where}; follow it with `tpuconsole ls --zone {zone}`{undo}."
    )
