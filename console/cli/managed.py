"""`launch --managed` and `watch`: jobs that survive preemption, recovered with no TUI open."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from console.cli.common import fail, run, say, zone_of
from console.models import FleetError, ManagedState
from console.present.jobs import managed_line
from console.services.lifecycle import Progress, parse_labels
from console.services.managed import ManagedSpec, NodeSpec, Step, parse_exit_codes
from console.services.notify import JobEvent, osc_notification
from console.services.remote import command_from_argv
from console.services.templates import parse_sets
from console.wiring import Wiring


def parse_setup(text: str) -> Step:
    """`--setup 'sync local_dir=~/plugins'`: a template, then `preset=` and its values."""
    words = shlex.split(text)
    if not words:
        raise FleetError("--setup is empty.", "Give a template, e.g. --setup 'bootstrap'.")
    values = parse_sets(words[1:])
    preset = str(values.pop("preset", ""))
    return Step(words[0], preset, values)


def spec_from_args(args: argparse.Namespace, zone: str) -> ManagedSpec:
    if args.max_recoveries < 0:
        raise FleetError("--max-recoveries must be 0 or more.", "e.g. --max-recoveries 3")
    if len(args.target) == 2:
        run_step = Step(args.target[0], args.preset, parse_sets(args.sets))
    else:
        run_step = Step(command=command_from_argv(args.remote_argv))
    zones = tuple(dict.fromkeys([zone, *args.zone]).keys()) if zone else tuple(args.zone)
    return ManagedSpec(
        node=NodeSpec(
            args.target[-1],
            zones,
            args.accelerator_type,
            args.version,
            args.spot,
            args.fallback_on_demand,
            parse_labels(args.label),
        ),
        run=run_step,
        setup=tuple(parse_setup(s) for s in args.setup),
        selection=args.worker,
        max_recoveries=args.max_recoveries,
        retry_on_exit=parse_exit_codes(args.retry_on_exit),
    )


def cmd_launch_managed(args: argparse.Namespace) -> int:
    """Adopt or create the node, set it up, start the run; recovery is the watcher's."""
    if len(args.target) == 1 and not args.remote_argv:
        return fail("launch --managed needs a template and a node, or a node and -- command")
    if args.dry_run:
        return fail("--dry-run shows a plain launch's plan; drop --managed to see it")

    async def body(services: Wiring) -> int:
        zone = zone_of(args) or services.settings.default_zone
        try:
            node = await services.fleet.find_node(args.target[-1], zone_of(args))
            zone = node.zone
        except FleetError as exc:
            if exc.code != "NOT_FOUND":
                raise
            if not zone:
                raise FleetError(
                    f"No node {args.target[-1]} to adopt, and no zone to create it in.",
                    "Give --zone (and --type, --spot) to create it.",
                ) from None
        spec = spec_from_args(args, zone)

        def progress(p: Progress) -> None:
            print(p.line(), file=sys.stderr, flush=True)

        job = await services.managed.launch(spec, progress)
        print(managed_line(job), flush=True)
        if not args.follow:
            number = job.job_id.split("-")[0]
            say(
                f"managed job {job.job_id} runs; the TUI recovers it while open, "
                f"`tpuconsole watch` with none (`tpuconsole logs {number}` for its logs)"
            )
            return 0
        return await _watch(services, until_done=True)

    return run(args, body)


def cmd_watch(args: argparse.Namespace) -> int:
    """Headless recovery: the same loop as the TUI's, until interrupted (or --until-done)."""

    async def body(services: Wiring) -> int:
        services.managed.poll_s = max(0.2, args.poll)
        return await _watch(services, until_done=args.until_done)

    return run(args, body)


async def _watch(services: Wiring, *, until_done: bool) -> int:
    notifier = services.notifier
    notifier.desktop = True
    tty = sys.stdout.isatty()
    term = os.environ.get("TERM_PROGRAM", "")

    def show(event: JobEvent) -> None:
        if tty:
            sys.stdout.write(osc_notification("tpuconsole", event.text, term))
        print(f"{event.event}: {event.text}", flush=True)

    notifier.sinks.append(show)
    open_jobs = services.history.open_managed()
    say(
        f"watching {len(open_jobs)} managed job{'s' if len(open_jobs) != 1 else ''}"
        f" as {services.managed.holder}"
    )
    await services.managed.run_forever(until_done=until_done)
    ended = [services.history.managed(j.job_id) for j in open_jobs]
    failed = [m for m in ended if m is not None and m.state != ManagedState.SUCCEEDED]
    return 1 if until_done and failed else 0
