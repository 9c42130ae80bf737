"""`tpuconsole`: the TUI by default, plus headless subcommands for scripts and quick looks.

Exit codes: 0 all well, 1 the command ran but something failed (an unreachable zone), 2 it
could not run (bad flags, bad configuration, no credentials, refused by the API or by us before
asking it), 3 the cloud had no room (a stockout, a quota or a rate limit: RESOURCE_EXHAUSTED;
retry later, elsewhere or on-demand).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from console.models import FleetError


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Common flags work before or after the subcommand, as gcloud's do."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--project",
        default=default(""),
        help="Google Cloud project (default: gcloud's configuration)",
    )
    parser.add_argument(
        "--zone",
        action="append",
        default=default([]),
        help="zone to list; repeat for more (default: configured or all)",
    )
    parser.add_argument(
        "--sandbox",
        action="store_true",
        default=default(False),
        help="use the embedded sandbox fleet even when a project is configured",
    )
    parser.add_argument(
        "--home",
        default=default(""),
        help="data directory (default: $TPUCONSOLE_HOME or the user data dir)",
    )
    parser.add_argument(
        "--fresh-history",
        action="store_true",
        default=default(False),
        help="if the job history is damaged, keep it aside and start a new one",
    )


def _add_reach(parser: argparse.ArgumentParser) -> None:
    """How ssh reaches the workers, for every command that ssh's (gcloud's flag names)."""
    parser.add_argument(
        "--iap",
        "--tunnel-through-iap",
        dest="iap",
        action="store_true",
        help="tunnel ssh through Identity-Aware Proxy, as gcloud's --tunnel-through-iap",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tpuconsole",
        description="A keyboard-driven console for Cloud TPU VMs. "
        "With no project configured it opens on the embedded sandbox fleet.",
    )
    _add_common(parser, top=True)
    parser.add_argument(
        "--refresh",
        type=float,
        default=None,
        help="seconds between automatic refreshes of the fleet table",
    )
    sub = parser.add_subparsers(dest="command")
    ls = sub.add_parser("ls", help="list TPU VMs across zones")
    _add_common(ls, top=False)
    ls.add_argument("--json", action="store_true", help="print JSON objects, one per node")
    ex = sub.add_parser("exec", help="run a command on a node's workers, like ssh --worker=all")
    _add_common(ex, top=False)
    _add_reach(ex)
    ex.add_argument("node", help="node name")
    ex.add_argument("--worker", default="all", help="all (default), 0, 1,3 or 0-2")
    ex.add_argument("--internal-ip", action="store_true", help="dial workers' internal IPs")
    ex.epilog = "The command follows --; a single argument is run as shell text, as ssh does."
    sync = sub.add_parser("sync", help="upload a folder to a node's workers (changed files only)")
    _add_common(sync, top=False)
    _add_reach(sync)
    sync.add_argument("node", help="node name")
    sync.add_argument("local", help="local folder")
    sync.add_argument(
        "remote",
        nargs="?",
        default="",
        help="folder on the workers (default: the same path, under ~ if it is "
        "under your home here)",
    )
    sync.add_argument("--worker", default="all", help="all (default), 0, 1,3 or 0-2")
    sync.add_argument("--sftp", action="store_true", help="use SFTP instead of tar")
    probe = sub.add_parser("probe", help="what holds each worker's TPU: lockfile, processes")
    _add_common(probe, top=False)
    _add_reach(probe)
    probe.add_argument("node", help="node name")
    probe.add_argument("--worker", default="all", help="all (default), 0, 1,3 or 0-2")
    probe.add_argument("--json", action="store_true", help="print the raw reports as JSON")
    clean = sub.add_parser("clean", help="clear stale lockfiles and lingering processes")
    _add_common(clean, top=False)
    _add_reach(clean)
    clean.add_argument("node", help="node name")
    clean.add_argument("--worker", default="all", help="all (default), 0, 1,3 or 0-2")
    mode = clean.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    mode.add_argument("--yes", "-y", action="store_true", help="carry out the plan unasked")
    create = sub.add_parser("create", help="create a TPU VM and wait for it, with progress")
    _add_common(create, top=False)
    _add_reach(create)
    create.add_argument("name", help="node name, e.g. sgl-v4-8-20261123-0900")
    create.add_argument("--type", required=True, dest="accelerator_type", help="e.g. v4-8")
    create.add_argument(
        "--version",
        default="",
        help="runtime version (default: the generation's, e.g. v2-alpha-tpuv5-lite for v5e)",
    )
    create.add_argument("--spot", action="store_true", help="spot capacity")
    create.add_argument(
        "--fallback-on-demand",
        action="store_true",
        help="create on-demand when spot is refused (quota) or has no capacity (stockout)",
    )
    create.add_argument("--label", action="append", default=[], help="key=value, repeatable")
    create.add_argument(
        "--wait", action="store_true", help="follow it to READY, then check ssh on every worker"
    )
    create.add_argument(
        "--startup",
        default="",
        help="a command run as a job on every worker once READY (with --wait)",
    )
    for verb in ("stop", "start", "delete"):
        change = sub.add_parser(verb, help=f"{verb} a TPU VM and wait for it")
        _add_common(change, top=False)
        change.add_argument(
            "name", help="node name" + (" (or a job id: stop that job)" if verb == "stop" else "")
        )
        change.add_argument("--yes", "-y", action="store_true", help="do not ask")
    launch = sub.add_parser("launch", help="start a detached job on a node's workers")
    _add_common(launch, top=False)
    _add_reach(launch)
    launch.add_argument(
        "target",
        nargs="+",
        metavar="[TEMPLATE] NODE",
        help="a template (multi-engine, grpo) and a node; or a node and a command after --",
    )
    launch.add_argument("--preset", default="", help="a template preset, e.g. tiny-llama")
    launch.add_argument(
        "--set",
        action="append",
        default=[],
        dest="sets",
        help="key=value for a template parameter, repeatable",
    )
    launch.add_argument(
        "--dry-run",
        action="store_true",
        help="show preflight and the exact command, launch nothing",
    )
    launch.add_argument("--worker", default="all", help="all (default), 0, 1,3 or 0-2")
    launch.add_argument("--follow", "-f", action="store_true", help="stream its logs until done")
    launch.add_argument(
        "--clean-first",
        action="store_true",
        help="clear stale locks and lingering processes before launching",
    )
    launch.add_argument(
        "--force",
        action="store_true",
        help="launch even if the probe finds stale locks or lingering processes",
    )
    launch.epilog = "The command follows --; a single argument is run as shell text."
    logs = sub.add_parser("logs", help="print a job's logs, [wN]-prefixed; -f follows them")
    _add_common(logs, top=False)
    _add_reach(logs)
    logs.add_argument("job", help="job id, or its leading number")
    logs.add_argument("--worker", default="all", help="all (default), 0, 1,3 or 0-2")
    logs.add_argument("--follow", "-f", action="store_true", help="follow until the job ends")
    diagnose = sub.add_parser("diagnose", help="known failures and results in a saved log")
    diagnose.add_argument("logfile", help="a log file (`tpuconsole logs JOB > f` or a tee'd log)")
    diagnose.add_argument("--json", action="store_true", help="print JSON")
    jobs = sub.add_parser("jobs", help="recent jobs from the history; `jobs stop JOB` stops one")
    _add_common(jobs, top=False)
    _add_reach(jobs)
    jobs.add_argument("action", nargs="?", choices=["list", "show", "stop"], default="list")
    jobs.add_argument("job", nargs="?", help="with show/stop: the job id or its leading number")
    jobs.add_argument("--json", action="store_true", help="print JSON objects, one per job")
    jobs.add_argument("--yes", "-y", action="store_true", help="with stop: do not ask")
    sandbox = sub.add_parser("sandbox", help="manage the embedded sandbox fleet")
    _add_common(sandbox, top=False)
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    sandbox_sub.add_parser("reset", help="start the sandbox afresh with the default fleet")
    serve = sandbox_sub.add_parser(
        "serve", help="serve the sandbox in the foreground for other tools"
    )
    serve.add_argument(
        "--background",
        action="store_true",
        help="what commands start on their own: serve until no process uses the sandbox",
    )
    preempt = sandbox_sub.add_parser("preempt", help="preempt a sandbox spot node, as GCE would")
    preempt.add_argument("node", help="node name, e.g. one you created with --spot")
    return parser


def _settings(args: argparse.Namespace):
    from console.services.settings import ensure_home, resolve_settings

    settings = resolve_settings(
        project=args.project, zones=args.zone, sandbox=args.sandbox, home=args.home
    )
    ensure_home(settings.home)
    return settings


def _history(settings, args: argparse.Namespace):
    """The job history; a damaged one is refused (a copy kept) unless --fresh-history says go."""
    from console.adapters.history_db import HistoryDamaged, HistoryStore

    path = settings.home / "history.db"
    try:
        return HistoryStore(path)
    except HistoryDamaged as exc:
        if not getattr(args, "fresh_history", False):
            raise
        HistoryStore.set_aside(path)
        print(
            f"tpuconsole: started a fresh job history; the damaged one is kept at {exc.copy}",
            file=sys.stderr,
        )
        return HistoryStore(path)


def _fail(message: str, code: int = 2) -> int:
    print(f"tpuconsole: {message}", file=sys.stderr)
    return code


NO_ROOM_EXIT = 3


def _fail_error(exc: FleetError) -> int:
    """One sentence with the API's code; exit 3 when the cloud had no room, else 2."""
    code = f" [{exc.code}]" if exc.code and exc.code.isupper() else ""
    return _fail(f"{exc}{code}", NO_ROOM_EXIT if exc.no_room else 2)


class _Ongoing:
    """What goes on without us if Ctrl-C stops this command now, and how to follow it.

    Commands set it as their work starts somewhere else (an operation in the cloud, a cleanup
    on the workers, a detached job); on Ctrl-C it is the sentence said before exit 130.
    """

    sentence = ""


ONGOING = _Ongoing()


def _where(source) -> str:
    return "in the sandbox" if source.is_sandbox else "in Google Cloud"


def cmd_ls(args: argparse.Namespace) -> int:
    """The fleet; exit 1 only for zones that should answer and did not.

    Discovered zones without TPU access are one summary line, not failures.
    """
    from console.fleet_source import open_fleet_source
    from console.services.fleet_columns import (
        node_as_json,
        render_table,
        unreachable_groups,
        zones_line,
    )

    settings = _settings(args)
    source = open_fleet_source(settings)

    async def go():
        try:
            return await source.fleet.list_nodes()
        finally:
            await source.fleet.close()

    try:
        snapshot = asyncio.run(go())
    finally:
        source.close()
    now = datetime.now(UTC)
    if args.json:
        for node in snapshot.nodes:
            print(json.dumps(node_as_json(node, now)))
        if snapshot.no_access or snapshot.legacy:
            print(f"tpuconsole: {zones_line(snapshot)}", file=sys.stderr)
    else:
        if source.is_sandbox:
            print("SANDBOX fleet (no Google Cloud project configured; see README)")
        print(zones_line(snapshot))
        print(render_table(snapshot, now))
    for where, failure in unreachable_groups(snapshot):
        print(
            f"tpuconsole: zone {where} unreachable: {failure.reason} {failure.remedy}",
            file=sys.stderr,
        )
    return 1 if snapshot.unreachable else 0


def _stdin_for_exec():
    """Our stdin for the workers' commands, as ssh forwards it; none when we have none."""
    import os

    from console.services.remote import SharedInput

    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return SharedInput(lambda: os.read(fd, 65536))


def cmd_exec(args: argparse.Namespace) -> int:
    from console.fleet_source import open_fleet_source
    from console.services.remote import command_from_argv

    argv = args.remote_argv
    if not command_from_argv(argv).strip():
        return _fail("exec needs a command after --, e.g. tpuconsole exec NODE -- hostname")
    settings = _settings(args)
    source = open_fleet_source(settings)

    def show(line) -> None:
        stream = sys.stdout if line.stream == "out" else sys.stderr
        print(f"[w{line.worker}] {_for(stream, line.text)}", file=stream, flush=True)

    async def go():
        remote = _remote(source, args)
        try:
            zone = args.zone[0] if args.zone else ""
            node = await source.fleet.find_node(args.node, zone)
            return await remote.run(
                node, args.worker, command_from_argv(argv), show, stdin=_stdin_for_exec()
            )
        finally:
            await remote.close()
            await source.fleet.close()

    try:
        result = asyncio.run(go())
    finally:
        source.close()
    for outcome in result.failed:
        print(f"tpuconsole: w{outcome.worker}: {outcome.describe()}", file=sys.stderr)
        if outcome.error is not None and outcome.error.remedy:
            print(f"tpuconsole:   {outcome.error.remedy}", file=sys.stderr)
    return result.worst_status


def _for(stream, text: str) -> str:
    """A worker's text as printed: exact into a pipe or file; on a terminal, only its colours
    survive as escapes (a job may not retitle, clear or move about the user's terminal)."""
    from console.services.terminal_text import safe_for_terminal

    return safe_for_terminal(text) if stream.isatty() else text


def _print_line(worker: int, text: str) -> None:
    print(f"[w{worker}] {_for(sys.stdout, text)}", flush=True)


async def _stream_job(source, jobs_service, job, selection: str, follow: bool) -> int:
    """Local copy first (what was already fetched), then whatever the workers have beyond it."""
    from console.models import NodeGone, parse_worker_selection
    from console.services.lines import copy_lines

    chosen = {w.worker for w in job.workers}
    if selection != "all":
        try:
            chosen &= set(parse_worker_selection(selection, max(chosen, default=0) + 1))
        except ValueError as exc:
            ran_on = ", ".join(f"w{w}" for w in sorted(chosen))
            raise FleetError(str(exc), f"Job {job.job_id} ran on {ran_on}.") from None
    printed = 0

    def show(worker: int, text: str) -> None:
        nonlocal printed
        printed += 1
        _print_line(worker, text)

    try:
        node = await source.fleet.get_node(job.zone, job.node)
        rcs = await jobs_service.follow(
            job, node, show, selection=selection, follow=follow, from_start=True
        )
    except NodeGone as gone:  # the job ended with its VM: say so at once, in one sentence
        print(f"tpuconsole: {gone.reason}", file=sys.stderr)
        return 1
    except FleetError as exc:
        if printed:  # the copy was replayed already; the worker was lost after
            print(f"tpuconsole: lost {job.node}: {exc}", file=sys.stderr)
            return 1
        for w in sorted(chosen):
            for line in copy_lines(jobs_service.log_path(job.job_id, w)):
                _print_line(w, line)
        print(
            f"tpuconsole: cannot reach {job.node}: {exc}; shown: the local copy.", file=sys.stderr
        )
        return 1
    if not follow:
        return 0
    worst = max((rc if rc is not None else 255 for rc in rcs.values()), default=0)
    for w, rc in sorted(rcs.items()):
        print(
            f"tpuconsole: w{w} {'ended without an exit status' if rc is None else f'rc={rc}'}",
            file=sys.stderr,
        )
    return worst


def _job_goes_on(job) -> str:
    number = job.job_id.split("-")[0]
    return (
        f"Job {job.job_id} runs on on the workers; follow it again with `tpuconsole logs "
        f"{number} -f`, stop it with `tpuconsole stop {number}`."
    )


async def _template_plan(jobs_service, node, args):
    """Values, preflight and the exact command: (ok, (rendered, kind, values) | None)."""
    from console.services.preflight import preflight
    from console.services.probe import ProbeService
    from console.services.templates import parse_sets, template

    chosen = template(args.target[0])
    values = chosen.values(args.preset, parse_sets(args.sets))
    rendered = chosen.render(values)
    probes = (
        await ProbeService(jobs_service.remote).probe(node, args.worker)
        if node.state == "READY"
        else []
    )
    checks = preflight(chosen, values, node, args.worker, probes)
    for check in checks:
        print(
            f"{check.level.upper()}: {check.message}"
            + (f" — {check.remedy}" if check.remedy else "")
        )
    exports = " ".join(f"{k}={v}" for k, v in rendered.env.items())
    print("command:" + (f" [{exports}]" if exports else ""))
    for line in rendered.shell().splitlines():
        print(f"  {line}")
    if any(c.level == "refuse" for c in checks):
        print("tpuconsole: refused by preflight; nothing launched", file=sys.stderr)
        return False, None
    if args.dry_run:
        return True, None
    offered = any(c.level == "offer" for c in checks) and not args.force
    if offered and not await _stale_cleared(jobs_service, node, args):
        return False, None
    return True, (rendered, chosen.name, values)


async def _upload(jobs_service, node, selection: str, local: str, remote_dir: str) -> int:
    """The sync template: no job, the folder's changed files to every chosen worker."""
    from console.services.shipping import Shipper

    outcomes = await Shipper(jobs_service.remote).upload(
        node, selection, Path(local).expanduser(), remote_dir
    )
    return _print_uploads(local, remote_dir, outcomes)


def _print_uploads(local, remote_dir: str, outcomes) -> int:
    """One line per worker (failures on stderr); exit 1 when any worker failed."""
    print(f"{local} -> {remote_dir}")
    for outcome in outcomes:
        print(outcome.describe(), file=sys.stderr if outcome.failed else sys.stdout)
    return 1 if any(o.failed for o in outcomes) else 0


async def _stale_cleared(jobs_service, node, args) -> bool:
    """The seeds' `rm -f /tmp/libtpu_lockfile`, done safely: probe, then clean or refuse."""
    from console.services.probe import ProbeService, node_status, odd_lock_note, plan_for

    prober = ProbeService(jobs_service.remote)
    probes = await prober.probe(node, args.worker)
    plans = [plan_for(p.report) for p in probes if p.report is not None]
    if all(p.empty for p in plans):
        for probe in probes:  # nothing to clean, but something a person should look at
            if probe.report is not None and probe.report.odd_lock:
                print(f"w{probe.worker}: note: {odd_lock_note(probe.report)}", file=sys.stderr)
        return True
    print(f"{node.name}: {node_status(probes)}")
    print_plans(probes, plans)
    if not args.clean_first:
        print(
            "tpuconsole: stale TPU state on the workers; add --clean-first to clear it "
            "before launching (or --force to launch anyway)",
            file=sys.stderr,
        )
        return False
    results, after = await prober.execute(node, [p for p in plans if not p.empty])
    for r in results:
        print(f"w{r.worker}: {'done' if r.done else 'NOT DONE'}: {r.result}")
    return all(r.done for r in results)


def _remote(source, args: argparse.Namespace | None = None):
    """The ssh fan-out, as the flags ask, telling on stderr what it does to reach the VMs."""
    remote = source.remote(
        internal_ip=getattr(args, "internal_ip", False), iap=getattr(args, "iap", False)
    )
    remote.notices.append(lambda text: print(f"tpuconsole: {text}", file=sys.stderr, flush=True))
    return remote


def _job_services(source, settings, args: argparse.Namespace, *, tui: bool = False):
    """Jobs on the fan-out; the TUI's tells nothing on stderr (the screen is the terminal)."""
    from console.services.jobs import JobService

    history = _history(settings, args)
    remote = source.remote() if tui else _remote(source, args)
    return JobService(remote, history, settings.home)


def cmd_jobs_family(args: argparse.Namespace) -> int:
    from console.fleet_source import open_fleet_source
    from console.services.remote import command_from_argv

    settings = _settings(args)
    if args.command == "launch" and len(args.target) == 1 and not args.remote_argv:
        return _fail(
            "launch needs a template and a node (tpuconsole launch multi-engine "
            "demo-v4-8), or a node and a command after -- (tpuconsole launch NODE -- "
            "python x.py)"
        )
    if args.command == "launch" and len(args.target) == 1:
        from console.services.jobs import check_command

        check_command(command_from_argv(args.remote_argv))  # before a probe touches the node
    source = open_fleet_source(settings)
    jobs_service = _job_services(source, settings, args)

    async def go() -> int:
        try:
            if args.command == "jobs" and args.action == "stop":
                if not args.job:
                    print("tpuconsole: jobs stop needs a job id", file=sys.stderr)
                    return 2
                job = jobs_service.get(args.job)
                if not job.open:
                    print(f"job {job.job_id} is already {job.status}; nothing to stop")
                    return 0
                if not _confirmed(
                    args,
                    f"Stop job {job.job_id} on {job.node} (SIGTERM, then "
                    "SIGKILL after 10 s, to its processes on every worker)?",
                ):
                    return 1
                node = await source.fleet.get_node(job.zone, job.node)
                outcome = await jobs_service.stop(job, node)
                for w, result in sorted(outcome.items()):
                    print(f"w{w}: {result}")
                return 0 if all(not r.startswith("not stopped") for r in outcome.values()) else 1
            if args.command == "jobs" and args.action == "show":
                if not args.job:
                    print("tpuconsole: jobs show needs a job id", file=sys.stderr)
                    return 2
                job = jobs_service.get(args.job)
                if await jobs_service.settle_ended([job]):
                    job = jobs_service.get(job.job_id)
                if args.json:
                    print(json.dumps(_job_json(job)))
                else:
                    _print_job(job)
                return 0
            if args.command == "jobs":
                await jobs_service.settle_ended()  # ended since anyone looked: say so, and when
            if args.command == "jobs" and args.json:
                for job in jobs_service.history.recent():
                    print(json.dumps(_job_json(job)))
                return 0
            if args.command == "jobs":
                for job in jobs_service.history.recent():
                    pids = " ".join(f"w{w.worker}:{w.pid or '-'}" for w in job.workers)
                    print(
                        f"{job.job_id:<12} {job.status:<8} {job.started_at:%Y-%m-%d %H:%M} "
                        f"{job.zone}/{job.node}  {pids}  {job.short_command(80)}"
                    )
                return 0
            if args.command == "launch":
                zone = args.zone[0] if args.zone else ""
                node = await source.fleet.find_node(args.target[-1], zone)
                if len(args.target) == 2:
                    ok, plan = await _template_plan(jobs_service, node, args)
                    if plan is None:
                        return 0 if ok else 1
                    rendered, kind, params = plan
                    if rendered.upload:
                        return await _upload(jobs_service, node, args.worker, *rendered.upload)
                    command, env, ship = rendered.shell(), rendered.env, rendered.ship_runners
                else:
                    if args.dry_run:
                        print(command_from_argv(args.remote_argv))
                        return 0
                    if not args.force and not await _stale_cleared(jobs_service, node, args):
                        return 1
                    command, env, kind = command_from_argv(args.remote_argv), {}, "custom"
                    params, ship = {"argv": args.remote_argv}, False
                job = await jobs_service.launch(
                    node, args.worker, command, kind=kind, env=env, params=params, ship_runners=ship
                )
                print(
                    f"job {job.job_id} {job.status} on {node.name}: "
                    + " ".join(
                        f"w{w.worker}:pid {w.pid}" if w.pid else f"w{w.worker}:{w.error}"
                        for w in job.workers
                    ),
                    flush=True,
                )
                if job.status == "failed":
                    return 1
                if not args.follow:
                    return 0
                ONGOING.sentence = _job_goes_on(job)
                return await _stream_job(source, jobs_service, job, "all", True)
            job = jobs_service.get(args.job)
            if args.follow and job.open:
                ONGOING.sentence = _job_goes_on(job)
            return await _stream_job(source, jobs_service, job, args.worker, args.follow)
        finally:
            await jobs_service.remote.close()
            await source.fleet.close()
            jobs_service.history.close()

    try:
        return asyncio.run(go())
    finally:
        source.close()


def cmd_sync(args: argparse.Namespace) -> int:
    from console.fleet_source import open_fleet_source
    from console.services.shipping import Shipper
    from console.services.templates import default_remote_dir

    settings = _settings(args)
    local = Path(args.local).expanduser()
    remote_dir = args.remote or default_remote_dir(str(local))
    source = open_fleet_source(settings)

    async def go():
        remote = _remote(source, args)
        try:
            zone = args.zone[0] if args.zone else ""
            node = await source.fleet.find_node(args.node, zone)
            return await Shipper(remote).upload(
                node, args.worker, local, remote_dir, method="sftp" if args.sftp else "auto"
            )
        finally:
            await remote.close()
            await source.fleet.close()

    try:
        outcomes = asyncio.run(go())
    finally:
        source.close()
    return _print_uploads(local, remote_dir, outcomes)


def print_plans(probes, plans) -> None:
    from console.services.probe import describe_kill, describe_lock

    for probe in probes:
        if probe.report is None:
            print(f"w{probe.worker}: unreachable: {probe.error}")
    for plan in plans:
        if plan.empty and not plan.notes:
            print(f"w{plan.worker}: clean, nothing to do")
            continue
        for step in plan.kills:
            print(f"w{plan.worker}: {describe_kill(step)}")
        for step in plan.locks:
            print(f"w{plan.worker}: {describe_lock(step)}")
        for note in plan.notes:
            print(f"w{plan.worker}: note: {note}")


def still_held(name: str, after) -> list[str]:
    """A sentence for each worker whose TPU someone still holds once the plan has run."""
    from console.services.probe import describe_holders

    out = []
    for probe in after:
        if probe.report is None:
            out.append(f"{name} w{probe.worker}: cannot tell after the cleanup: {probe.error}")
            continue
        holders = describe_holders(probe.report)
        if holders:
            out.append(
                f"{name} w{probe.worker}: the TPU is still held after the cleanup: {holders}; "
                f"`tpuconsole probe {name}` shows it, stop what holds (or restarts) it."
            )
    return out


def cmd_probe_family(args: argparse.Namespace) -> int:
    import dataclasses

    from console.fleet_source import open_fleet_source
    from console.services.probe import ProbeService, node_status, plan_for

    settings = _settings(args)
    source = open_fleet_source(settings)

    async def go() -> int:
        remote = _remote(source, args)
        prober = ProbeService(remote)
        try:
            zone = args.zone[0] if args.zone else ""
            node = await source.fleet.find_node(args.node, zone)
            probes = await prober.probe(node, args.worker)
            plans = [plan_for(p.report) for p in probes if p.report is not None]
            if args.command == "probe":
                if args.json:
                    print(json.dumps([dataclasses.asdict(p) for p in probes], default=str))
                else:
                    print(f"{node.name}: {node_status(probes)}")
                    print_plans(probes, plans)
                return 0 if all(p.report and p.report.clean for p in probes) else 1
            print_plans(probes, plans)
            todo = [p for p in plans if not p.empty]
            if not todo:  # nothing we may do; still not clean if a note says what is left
                return 0 if all(p.report and p.report.clean for p in probes) else 1
            if args.dry_run:
                return 0
            if not args.yes:
                if not sys.stdin.isatty():
                    print(
                        "tpuconsole: not a terminal; add --yes to carry out the plan above",
                        file=sys.stderr,
                    )
                    return 2
                if input("Carry out this plan? [y/N] ").strip().lower() != "y":
                    print("nothing done")
                    return 1
            print("carrying out the plan…", flush=True)
            ONGOING.sentence = (
                f"The cleanup of {node.name} may go on on the workers (a process is signalled "
                f"and waited for there); `tpuconsole probe {node.name}` shows what is left."
            )
            results, after = await prober.execute(node, todo)
            ONGOING.sentence = ""
            for r in results:
                print(f"w{r.worker}: {'done' if r.done else 'NOT DONE'}: {r.result}")
            print(f"{node.name} after cleanup: {node_status(after)}")
            held = still_held(node.name, after)
            for sentence in held:
                print(f"tpuconsole: {sentence}", file=sys.stderr)
            return 0 if all(r.done for r in results) and not held else 1
        finally:
            await remote.close()
            await source.fleet.close()

    try:
        return asyncio.run(go())
    finally:
        source.close()


def cmd_lifecycle(args: argparse.Namespace) -> int:
    from console.fleet_source import open_fleet_source
    from console.services.lifecycle import (
        CreateRequest,
        LifecycleService,
        parse_labels,
        stop_refusal,
    )

    settings = _settings(args)
    zone = args.zone[0] if args.zone else ""
    if args.command == "create" and not zone:
        if not settings.default_zone:
            return _fail("create needs --zone (where the TPU VM goes)")
        zone = settings.default_zone
        print(f"zone: {zone} (from {settings.default_zone_source})", flush=True)
    history = _history(settings, args)
    source = open_fleet_source(settings)
    node_zone = [zone]  # the node's zone once it is found (stop/start/delete may omit --zone)

    def show(progress) -> None:
        print(progress.line(), flush=True)
        ONGOING.sentence = _ongoing_operation(progress, _where(source), node_zone[0])

    async def go() -> int:
        remote = _remote(source, args)
        from console.services.jobs import JobService

        jobs = JobService(remote, history, settings.home)
        life = LifecycleService(source.fleet, history, remote, jobs=jobs)
        try:
            if args.command == "create":
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
                outcome = await life.create(request, show, wait=args.wait)
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
            node = await source.fleet.find_node(args.name, zone)
            refusal = stop_refusal(node, args.command)
            if refusal:  # before asking, before calling the API
                return _fail(f"{refusal} Delete it when done and create it again.")
            if args.command in {"stop", "delete"} and not _confirmed(
                args,
                f"{args.command.capitalize()} {node.name} ({node.zone}, "
                f"{node.accelerator_type}, now {node.state})?",
            ):
                return 1
            node_zone[0] = node.zone
            after = await life.change(args.command, node, show)
            print(f"{args.name}: {after.state if after else 'deleted'}")
            return 0
        finally:
            await remote.close()
            await source.fleet.close()
            history.close()

    try:
        return asyncio.run(go())
    finally:
        source.close()


# The state that ends each operation: after it, nothing of it goes on without us.
_DONE_STATE = {"create": "READY", "start": "READY", "stop": "STOPPED", "delete": "GONE"}


def _ongoing_operation(progress, where: str, zone: str) -> str:
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


JOB_REF = re.compile(r"^\d+(-[0-9a-f]+)?$")


def _confirmed(args: argparse.Namespace, question: str) -> bool:
    """Destructive commands ask on a terminal; elsewhere they need --yes, and say so."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise FleetError(f"{question} Not a terminal to ask on;", "add --yes to go ahead.")
    if input(f"{question} [y/N] ").strip().lower() == "y":
        return True
    print("nothing done")
    return False


def _job_json(job) -> dict:
    return {
        "job_id": job.job_id,
        "status": job.status,
        "kind": job.kind,
        "params": job.params,
        "node": job.node,
        "zone": job.zone,
        "command": job.command,
        "env": job.env,
        "started_at": job.started_at.isoformat(),
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
        "note": job.note,
        "workers": [
            {"worker": w.worker, "pid": w.pid, "rc": w.rc, "error": w.error} for w in job.workers
        ],
        "metrics": job.metrics,
        "diagnoses": list(job.diagnoses),
    }


def _print_job(job) -> None:
    """`jobs show`: the record as a person reads it, results and diagnoses last."""
    from console.services.job_record import job_record_lines

    for line in job_record_lines(job):
        print(line)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Exit 0 when the log shows no known failure, 1 when it does, 2 when it cannot be read."""
    import dataclasses

    from console.services.diagnosis import diagnose_text
    from console.services.lines import split_lines
    from console.services.metrics import JobMetrics

    try:
        text = Path(args.logfile).read_text(errors="replace")
    except OSError as exc:
        return _fail(f"cannot read {args.logfile}: {exc.strerror}")
    found = diagnose_text(text)
    metrics = JobMetrics()
    for line in split_lines(text):
        m = re.match(r"\[w(\d+)\] ", line)
        metrics.feed(int(m.group(1)) if m else 0, line[m.end() :] if m else line)
    if args.json:
        print(
            json.dumps(
                {"diagnoses": [dataclasses.asdict(d) for d in found], "summary": metrics.summary()}
            )
        )
        return 1 if found else 0
    for d in found:
        where = f"w{d.worker}: " if d.worker is not None else ""
        print(
            f"{where}{d.title}\n  evidence: {d.evidence}\n  cause: {d.cause}\n  remedy: {d.remedy}"
        )
    summary = metrics.summary()
    print(f"results: {summary}" if summary else "results: none found")
    if not found:
        print("no known failure found")
    return 1 if found else 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from console.sandbox.runtime import SandboxBusy, reset_sandbox
    from console.sandbox.serving import stop_background, users

    settings = _settings(args)
    if args.sandbox_command == "reset":
        try:
            if not users(settings.home):  # a background server nobody uses gives way
                stop_background(settings.home)
            reset_sandbox(settings.home)
        except SandboxBusy as busy:
            return _fail(f"{busy}. Stop that process first (Ctrl-C in its terminal).")
        print(f"sandbox reset: default fleet restored under {settings.home / 'sandbox'}")
        return 0
    if args.sandbox_command == "preempt":
        return _preempt(settings, args.node)
    if args.background:
        return _serve_in_background(settings.home)
    return _serve(settings.home)


def _serve(home: Path) -> int:
    """The foreground server: a background one that serves now gives way (its users follow)."""
    from console.sandbox.runtime import Sandbox, SandboxBusy

    try:
        sandbox = Sandbox.start(home)
    except SandboxBusy as busy:
        return _fail(f"{busy}; use it as it is, or stop it first.")
    try:
        if sandbox.replaced is not None:
            print(f"took over from the background server (pid {sandbox.replaced.pid})")
        print(f"TPU API (gRPC, insecure): {sandbox.api_address}")
        print(f"project: {sandbox.project}")
        print(f"ssh key: {sandbox.user_key_path}")
        print(f"ssh port: {sandbox.ssh_port} (every worker, each on its own loopback address)")
        print("a node lets you in once your key is in its ssh-keys metadata (tpuconsole adds it)")
        for node in sorted(sandbox.fleet.nodes.values(), key=lambda n: n.key):
            for w in range(node.hosts):
                place = sandbox.worker_address(node.zone, node.name, w)
                where = (
                    f"ssh -i {sandbox.user_key_path} -p {place[1]} {place[0]}"
                    if place
                    else f"(no ssh: {node.state})"
                )
                print(f"  {node.zone}/{node.name} w{w}: {where}")
        print("serving; Ctrl-C to stop", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    finally:
        sandbox.stop()
    return 0


def _serve_in_background(home: Path) -> int:
    """What a command starts when nobody serves the sandbox: it serves until unused."""
    from console.sandbox.runtime import Sandbox, SandboxBusy
    from console.sandbox.serving import serve_until_unused

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        sandbox = Sandbox.start(home, background=True)
    except SandboxBusy as busy:
        print(f"{datetime.now():%H:%M:%S} {busy}: nothing to do", flush=True)
        return 0
    try:
        print(f"{datetime.now():%H:%M:%S} serving {home} (pid {sandbox.endpoint.pid})", flush=True)
        why = serve_until_unused(sandbox, stop)
        print(f"{datetime.now():%H:%M:%S} stopping: {why}", flush=True)
    finally:
        sandbox.stop()
    return 0


def _preempt(settings, name: str) -> int:
    """Edit the stored sandbox state; a serving process would overwrite it, so refuse then
    (a background server gives way: its users follow to the next one)."""
    from console.sandbox.fleet_state import FailedPrecondition, NotFound
    from console.sandbox.runtime import Sandbox, SandboxBusy

    try:
        with Sandbox.start(settings.home, ssh=False, publish=False) as sandbox:
            matches = [n for n in sandbox.fleet.nodes.values() if n.name == name]
            if not matches:
                return _fail(f"no sandbox node named {name!r}; `tpuconsole ls` lists them.")
            sandbox.fleet.preempt(matches[0].zone, name)
    except SandboxBusy as busy:
        return _fail(f"{busy}; preempt from that process, or stop it first.")
    except (FailedPrecondition, NotFound) as exc:
        return _fail(str(exc))
    print(f"{name}: PREEMPTED")
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from console.fleet_source import open_fleet_source
    from console.ui.app import TpuConsoleApp

    settings = _settings(args)
    source = open_fleet_source(settings, serve_here=True)
    try:
        from console.services.session import Services

        jobs = _job_services(source, settings, args, tui=True)
        app = TpuConsoleApp(
            Services.build(jobs),
            mode=source.label,
            refresh_s=args.refresh or settings.refresh_s,
            others_using=source.stranded_by_quit,
        )
        app.run()
        jobs.history.close()
    finally:
        source.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is the remote command, untouched by our own flags.
    remote_argv: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, remote_argv = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    args.remote_argv = remote_argv
    try:
        if args.command == "ls":
            return cmd_ls(args)
        if args.command == "exec":
            return cmd_exec(args)
        if args.command == "diagnose":
            return cmd_diagnose(args)
        if args.command in {"probe", "clean"}:
            return cmd_probe_family(args)
        if args.command == "stop" and JOB_REF.match(args.name):
            # VM names start with a letter, job ids with their number: `stop 17` is a job.
            args.command, args.action, args.job, args.json = "jobs", "stop", args.name, False
        if args.command in {"create", "stop", "start", "delete"}:
            return cmd_lifecycle(args)
        if args.command == "sync":
            return cmd_sync(args)
        if args.command in {"launch", "logs", "jobs"}:
            return cmd_jobs_family(args)
        if args.command == "sandbox":
            return cmd_sandbox(args)
        return cmd_tui(args)
    except FleetError as exc:
        return _fail_error(exc)
    except KeyboardInterrupt:
        if ONGOING.sentence:
            print(f"\ntpuconsole: interrupted. {ONGOING.sentence}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    except sqlite3.DatabaseError as exc:  # the checks on opening passed; it broke since
        return _fail(f"the job history failed while in use ({exc}); nothing else was changed.")


def _reader_went_away() -> int:
    """Whoever read our output stopped (`| head`): stop quietly, as `seq 1 1e9 | head` does.

    No sentence (it would land under head's output, which is what the user asked for) and no
    traceback; the status is the shell's for a process ended by SIGPIPE. Later writes, and the
    interpreter's own flush at exit, go to /dev/null.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
