"""`exec`, `sync`, `probe`, `clean`: what runs on a node's workers."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from console.cli.common import ONGOING, fail, for_stream, run, say, zone_of
from console.cli.progress import ProgressLine
from console.models import UploadOutcome
from console.present.cleanup import plan_entries, result_entries, still_held
from console.present.launch import upload_lines
from console.services.remote import SharedInput, command_from_argv
from console.services.templates import default_remote_dir
from console.wiring import Wiring


def _stdin_for_exec() -> SharedInput | None:
    """Our stdin for the workers' commands, as ssh forwards it; none when we have none."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return SharedInput(lambda: os.read(fd, 65536))


def cmd_exec(args: argparse.Namespace) -> int:
    command = command_from_argv(args.remote_argv)
    if not command.strip():
        return fail("exec needs a command after --, e.g. tpuconsole exec NODE -- hostname")

    progress = ProgressLine(args.node)

    def show(line) -> None:
        stream = sys.stdout if line.stream == "out" else sys.stderr
        progress.clear()
        print(f"[w{line.worker}] {for_stream(stream, line.text)}", file=stream, flush=True)

    async def body(services: Wiring) -> int:
        node = await services.fleet.find_node(args.node, zone_of(args))
        async with progress.ticking():
            result = await services.remote.run(
                node, args.worker, command, show, stdin=_stdin_for_exec(), on_progress=progress
            )
        if len(result.outcomes) > 1:
            say(f"{node.name}: {result.closing}")
        for outcome in result.failed:
            say(f"w{outcome.worker}: {outcome.describe()}")
            if outcome.error is not None and outcome.error.remedy:
                say(f"  {outcome.error.remedy}")
        return result.worst_status

    return run(args, body)


def print_uploads(local: str, remote_dir: str, outcomes: list[UploadOutcome]) -> int:
    """One line per worker (failures on stderr); exit 1 when any worker failed."""
    for line, failed in upload_lines(local, remote_dir, outcomes):
        print(line, file=sys.stderr if failed else sys.stdout)
    return 1 if any(o.failed for o in outcomes) else 0


def cmd_sync(args: argparse.Namespace) -> int:
    local = str(Path(args.local).expanduser())
    remote_dir = args.remote or default_remote_dir(local)

    progress = ProgressLine(args.node)

    async def body(services: Wiring) -> int:
        node = await services.fleet.find_node(args.node, zone_of(args))
        async with progress.ticking():
            outcomes = await services.launcher.upload(
                node,
                args.worker,
                local,
                remote_dir,
                method="sftp" if args.sftp else "auto",
                on_progress=progress,
            )
        code = print_uploads(local, remote_dir, outcomes)
        if len(outcomes) > 1 and progress.progress is not None:
            say(f"{node.name}: {progress.progress.closing()}")
        return code

    return run(args, body)


def cmd_probe(args: argparse.Namespace) -> int:
    """What holds each worker's TPU; exit 1 unless every worker is clean."""

    async def body(services: Wiring) -> int:
        node = await services.fleet.find_node(args.node, zone_of(args))
        plan = await services.prober.plan_cleanup(node, args.worker)
        if args.json:
            print(json.dumps([dataclasses.asdict(p) for p in plan.probes], default=str))
        else:
            print(f"{node.name}: {plan.status}")
            for entry in plan_entries(plan):
                print(entry.line())
        return 0 if plan.clean else 1

    return run(args, body)


def cmd_clean(args: argparse.Namespace) -> int:
    """The plan, then (on --yes or a `y`) exactly its steps; exit 1 if anything is left."""

    async def body(services: Wiring) -> int:
        node = await services.fleet.find_node(args.node, zone_of(args))
        plan = await services.prober.plan_cleanup(node, args.worker)
        for entry in plan_entries(plan):
            print(entry.line())
        if not plan.todo:  # nothing we may do; still not clean if a note says what is left
            return 0 if plan.clean else 1
        if args.dry_run:
            return 0
        if not args.yes:
            if not sys.stdin.isatty():
                return fail("not a terminal; add --yes to carry out the plan above")
            if input("Carry out this plan? [y/N] ").strip().lower() != "y":
                print("nothing done")
                return 1
        print("carrying out the plan…", flush=True)
        ONGOING.sentence = (
            f"The cleanup of {node.name} may go on on the workers (a process is signalled "
            f"and waited for there); `tpuconsole probe {node.name}` shows what is left."
        )
        done = await services.prober.clean(plan)
        ONGOING.sentence = ""
        for entry in result_entries(done):
            print(entry.line())
        print(f"{node.name} after cleanup: {done.status}")
        held = still_held(done)
        for sentence in held:
            say(sentence)
        return 0 if done.done and not held else 1

    return run(args, body)
