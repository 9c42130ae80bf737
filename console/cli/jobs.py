"""`launch`, `logs`, `jobs` (list, show, stop): detached runs and their logs."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
import sys
from collections import Counter

from console.cli.common import ONGOING, confirmed, fail, print_line, run, say, zone_of
from console.cli.workers import print_uploads
from console.models import (
    CleanupPlan,
    FleetError,
    Job,
    LaunchPlan,
    ManagedState,
    Node,
    NodeGone,
    StopResult,
    WorkerSelectionError,
    parse_worker_selection,
)
from console.present.cleanup import plan_entries, result_entries
from console.present.jobs import job_json, job_row
from console.present.launch import plan_lines, started_line
from console.services import log_bucket
from console.services.jobs import check_command
from console.services.lines import copy_lines
from console.services.queued_resources import QueuedGroup, QueuedResourceService, group_of
from console.services.remote import command_from_argv
from console.services.templates import parse_sets
from console.wiring import Wiring

# VM names start with a letter, job ids with their number: `stop 17` is a job.
JOB_REF = re.compile(r"^\d+(-[0-9a-f]+)?$")


def _job_goes_on(job: Job) -> str:
    number = job.job_id.split("-")[0]
    return (
        f"Job {job.job_id} runs on on the workers; follow it again with `tpuconsole logs "
        f"{number} -f`, stop it with `tpuconsole stop {number}`."
    )


def cmd_launch(args: argparse.Namespace) -> int:
    if args.managed:
        from console.cli.managed import cmd_launch_managed

        return cmd_launch_managed(args)
    if len(args.target) == 1 and not args.remote_argv:
        return fail(
            "launch needs a template and a node (tpuconsole launch multi-engine "
            "demo-v4-8), or a node and a command after -- (tpuconsole launch NODE -- "
            "python x.py)"
        )
    command = command_from_argv(args.remote_argv)
    if len(args.target) == 1:
        check_command(command)  # before a probe touches the node

    async def body(services: Wiring) -> int:
        launcher = services.launcher
        node = await services.fleet.find_node(args.target[-1], zone_of(args))
        group = await multislice_group(services, node) if args.group else None
        if len(args.target) == 2:
            plan = await launcher.plan_template(
                node,
                args.target[0],
                preset=args.preset,
                overrides=parse_sets(args.sets),
                selection=args.worker,
                group=group,
            )
            for line in plan_lines(plan):
                print(line)
            if plan.refused:
                say("refused by preflight; nothing launched")
                return 1
            if args.dry_run:
                return 0
            check_stale = plan.offers_cleanup and not args.force
        else:
            if args.dry_run:
                print(command)
                return 0
            plan = launcher.plan_command(node, command, args.remote_argv, args.worker, group)
            if plan.refused:
                for line in plan_lines(plan):
                    print(line)
                say("refused by preflight; nothing launched")
                return 1
            check_stale = not args.force
        if group is not None:  # each slice's stale state shown, and cleared only if asked
            stale = False
            for each in sorted(group.nodes, key=group.slice_of) if check_stale else ():
                one = dataclasses.replace(plan, node=each, selection="all")
                found = await _stale_cleared(services, one, args.clean_first)
                if found is False:
                    return 1
                stale |= found is not True
            return await launch_on_group(services, plan, group, stale)
        cleanup = await _stale_cleared(services, plan, args.clean_first) if check_stale else True
        if cleanup is False:
            return 1
        launched = await launcher.start(plan, cleanup=None if cleanup is True else cleanup)
        if launched.cleanup is not None:
            for entry in result_entries(launched.cleanup):
                print(entry.line())
            if not launched.cleanup.done:
                return 1
        if plan.rendered.upload is not None:
            return print_uploads(*plan.rendered.upload, list(launched.uploads))
        assert launched.job is not None
        print(started_line(launched), flush=True)
        if launched.failed:
            return 1
        if not args.follow:
            return 0
        ONGOING.sentence = _job_goes_on(launched.job)
        return await _stream_job(services, launched.job, "all", True)

    return run(args, body)


async def multislice_group(services: Wiring, node: Node) -> QueuedGroup:
    """The multislice group `--group` names by one of its slices, as the fleet lists it."""
    snapshot = await services.fleet.list_nodes((node.zone,))
    group = group_of(snapshot, node)
    if group is None or not group.request.multislice:
        raise FleetError(
            f"{node.name} is not a slice of a multislice queued resource.",
            "Launch without --group.",
        )
    return group


async def launch_on_group(
    services: Wiring, plan: LaunchPlan, group: QueuedGroup, clean_first: bool
) -> int:
    """`launch --group`: every worker of every slice in one fan-out (the TUI's group launch)."""
    refusal = QueuedResourceService.launch_refusal(group, plan.node, plan.selection)
    if plan.selection.strip() not in {"", "all"}:
        return fail(refusal)
    queued = QueuedResourceService(services.fleet, services.lifecycle)
    jobs, held = await services.launcher.start_group(plan, group, queued, clean_first)
    if held is not None:
        for entry in result_entries(held):
            print(entry.line())
        say(f"{held.node.name} is still held; nothing launched on group {group.request.name}")
        return 1
    for job in jobs:
        pids = " ".join(f"w{w.worker}:pid {w.pid}" for w in job.workers)
        print(f"job {job.job_id} {job.status} on {job.node}: {pids}", flush=True)
    return 0 if all(all(w.pid for w in job.workers) for job in jobs) else 1


async def _stale_cleared(
    services: Wiring, plan: LaunchPlan, clean_first: bool
) -> CleanupPlan | bool:
    """The seeds' `rm -f /tmp/libtpu_lockfile`, done safely: the cleanup plan to carry out
    first, True when there is nothing to clean, False when stale state refuses the launch."""
    cleanup = await services.launcher.plan_cleanup(plan)
    if not cleanup.todo:
        for worker, note in cleanup.odd_lock_notes():  # nothing to clean, but worth a look
            print(f"w{worker}: note: {note}", file=sys.stderr)
        return True
    print(f"{plan.node.name}: {cleanup.status}")
    for entry in plan_entries(cleanup):
        print(entry.line())
    if not clean_first:
        say(
            "stale TPU state on the workers; add --clean-first to clear it "
            "before launching (or --force to launch anyway)"
        )
        return False
    return cleanup


async def _stream_job(services: Wiring, job: Job, selection: str, follow: bool) -> int:
    """Local copy first (what was already fetched), then whatever the workers have beyond it;
    with `[jobs] log_bucket`, a job whose VM is gone is read from the bucket's copy instead."""
    jobs = services.jobs
    chosen = {w.worker for w in job.workers}
    if selection != "all":
        try:
            chosen &= set(parse_worker_selection(selection, max(chosen, default=0) + 1))
        except WorkerSelectionError as exc:
            ran_on = ", ".join(f"w{w}" for w in sorted(chosen))
            raise WorkerSelectionError(exc.reason, f"Job {job.job_id} ran on {ran_on}.") from None
    printed: Counter[int] = Counter()

    def show(worker: int, text: str) -> None:
        printed[worker] += 1
        print_line(worker, text)

    try:
        node = await services.fleet.get_node(job.zone, job.node)
        if jobs.log_bucket and (gone := log_bucket.vm_gone(job, node)):
            raise NodeGone(gone, node.state)  # preempted, or a new VM of the same name
        rcs = await jobs.follow(
            job, node, show, selection=selection, follow=follow, from_start=True
        )
    except NodeGone as gone_now:  # the job ended with its VM: say so at once, in one sentence
        if jobs.log_bucket:
            return await _from_bucket(services, job, chosen, printed, gone_now.reason, follow)
        say(gone_now.reason)
        return 1
    except FleetError as exc:
        if jobs.log_bucket and exc.code == "NOT_FOUND":
            why = f"{job.node} no longer exists"
            return await _from_bucket(services, job, chosen, printed, why, follow)
        if printed:  # the copy was replayed already; the worker was lost after
            say(f"lost {job.node}: {exc}")
            return 1
        _print_local(services, job, chosen)
        say(f"cannot reach {job.node}: {exc}; shown: the local copy.")
        return 1
    if not follow:
        return 0
    worst = max((rc if rc is not None else 255 for rc in rcs.values()), default=0)
    for w, rc in sorted(rcs.items()):
        say(f"w{w} {'ended without an exit status' if rc is None else f'rc={rc}'}")
    return worst


def _print_local(services: Wiring, job: Job, chosen: set[int]) -> None:
    for w in sorted(chosen):
        for line in copy_lines(services.jobs.log_path(job.job_id, w)):
            print_line(w, line)


async def _from_bucket(
    services: Wiring, job: Job, chosen: set[int], printed: Counter[int], why: str, follow: bool
) -> int:
    """The VM is gone: the local copies completed from the bucket, the lines not printed yet
    printed, and one line saying where they came from."""
    read = await log_bucket.read_back(services.jobs, job, why, chosen)
    for w in sorted(chosen):
        lines = copy_lines(services.jobs.log_path(job.job_id, w))
        for line in itertools.islice(lines, printed[w], None):
            print_line(w, line)
    say(read.line(why))
    return 1 if read.missing or follow else 0


def cmd_logs(args: argparse.Namespace) -> int:
    async def body(services: Wiring) -> int:
        job = services.jobs.get(args.job)
        if job.managed is not None and len(job.managed.attempts) > 1:
            job = await _earlier_attempts(services, job, args.worker)
        if args.follow and job.open:
            ONGOING.sentence = _job_goes_on(job)
        return await _stream_job(services, job, args.worker, args.follow)

    return run(args, body)


async def _earlier_attempts(services: Wiring, job: Job, selection: str) -> Job:
    """A managed job's logs are every attempt's: the earlier ones from their local copies (each
    under a line on stderr naming it), completed from the bucket where one is configured (their
    VMs are gone), then the current one as any job's. Returns that one."""
    assert job.managed is not None
    *earlier, last = job.managed.attempts
    for number, run_id in enumerate(earlier, start=1):
        say(f"attempt {number} of {job.job_id}: run {run_id}")
        ran = services.jobs.get(run_id)
        wanted = {w.worker for w in ran.workers}
        if selection != "all":
            wanted &= set(parse_worker_selection(selection, max(wanted, default=0) + 1))
        read = None
        if services.jobs.log_bucket:
            read = await log_bucket.restore(services.jobs, ran, wanted)
        _print_local(services, ran, wanted)
        if read is not None and (read.added_bytes or read.missing):
            say(read.line(f"attempt {number} (run {run_id})"))
    say(f"attempt {len(earlier) + 1} of {job.job_id}: run {last}")
    return services.jobs.get(last)


def cmd_jobs(args: argparse.Namespace) -> int:
    """`jobs [list]`, `jobs show JOB`, `jobs stop JOB` (also `tpuconsole stop JOB`)."""
    action = JOB_ACTIONS[args.action]
    if args.action != "list" and not args.job:
        return fail(f"jobs {args.action} needs a job id")
    return run(args, lambda services: action(services, args))


async def _list(services: Wiring, args: argparse.Namespace) -> int:
    await services.jobs.settle_ended()  # ended since anyone looked: say so, and when
    for job in services.history.recent():
        print(json.dumps(job_json(job)) if args.json else job_row(job))
    return 0


async def _show(services: Wiring, args: argparse.Namespace) -> int:
    job = services.jobs.get(args.job)
    if await services.jobs.settle_ended([job]):
        job = services.jobs.get(job.job_id)
    if args.json:
        print(json.dumps(job_json(job)))
    else:
        from console.services.job_record import job_record_lines

        for line in job_record_lines(job):
            print(line)
    return 0


async def _stop(services: Wiring, args: argparse.Namespace) -> int:
    job = services.jobs.get(args.job)
    if job.managed is not None and job.managed.open:
        # Stopping a managed job stops its attempt now, and no watcher brings it back.
        if not confirmed(args, f"Stop managed job {job.job_id} (no more recoveries)?"):
            return 1
        services.history.set_managed(
            job.job_id, state=ManagedState.CANCELLED, note="stopped by the user"
        )
        print(f"managed job {job.job_id} cancelled; stopping its attempt {job.managed.current}")
        job = services.jobs.get(job.managed.current)
        args.yes = True
    if not job.open:
        print(f"job {job.job_id} is already {job.status}; nothing to stop")
        return 0
    if not confirmed(
        args,
        f"Stop job {job.job_id} on {job.node} (SIGTERM, then "
        "SIGKILL after 10 s, to its processes on every worker)?",
    ):
        return 1
    node = await services.fleet.get_node(job.zone, job.node)
    outcome = await services.jobs.stop(job, node)
    for w, result in sorted(outcome.items()):
        print(f"w{w}: {result}")
    return 0 if all(r.result != StopResult.NOT_STOPPED for r in outcome.values()) else 1


JOB_ACTIONS = {"list": _list, "show": _show, "stop": _stop}
