"""`top NODE` and `stacks JOB`: every chip of a node's workers, and every worker's stacks of a job.

`top` is tpu-info's streaming mode for every worker at once: the per-chip table redrawn after each
poll (about once a second) until Ctrl-C; into a pipe each poll is one block; `--json` prints one
reading and exits. `stacks` takes every worker's thread stacks at once and prints them grouped,
the worker that differs pointed at; exit 1 when no worker's stacks could be had.
"""

from __future__ import annotations

import argparse
import json
import sys

from console.cli.common import fail, for_stream, run, zone_of
from console.models import FleetError
from console.present.chips import metrics_as_json, top_lines
from console.present.stacks import report_as_json, report_lines
from console.wiring import Wiring

CLEAR = "\x1b[H\x1b[2J"  # home and clear: the table redrawn in place on a terminal


def _print(lines: list[str]) -> None:
    for line in lines:
        print(for_stream(sys.stdout, line))


def cmd_top(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        return fail("--count must be 1 or more (or left out: refresh until Ctrl-C).")

    async def body(services: Wiring) -> int:
        node = await services.fleet.find_node(args.node, zone_of(args))
        if args.json:
            print(json.dumps(metrics_as_json(await services.chips.snapshot(node))))
            return 0
        tty = sys.stdout.isatty()
        shown = 0
        async for metrics in services.chips.updates(node):
            if all(w.state == "waiting" for w in metrics.workers):
                continue  # the first connections are still being made: nothing to show yet
            if tty:
                sys.stdout.write(CLEAR)
            elif shown:
                print()
            _print(top_lines(metrics))
            if tty:
                print("\n(refreshing about once a second; Ctrl-C to stop)")
            sys.stdout.flush()
            shown += 1
            if args.count is not None and shown >= args.count:
                break
        return 0

    try:
        return run(args, body)
    except KeyboardInterrupt:
        return 0  # the usual way out of a refreshing view, as top's q


def cmd_stacks(args: argparse.Namespace) -> int:
    async def body(services: Wiring) -> int:
        job = services.jobs.get(args.job)
        if not job.open:
            raise FleetError(
                f"Job {job.job_id} is not running ({job.status}): it has no stacks to take.",
                "Its log is kept: tpuconsole logs " + job.job_id,
            )
        node = await services.fleet.get_node(job.zone, job.node)
        report = await services.stacks.collect(job, node)
        if args.json:
            print(json.dumps(report_as_json(report)))
        else:
            _print(report_lines(report))
        return 0 if report.groups else 1

    return run(args, body)
