"""The command line's grammar: gcloud's flag names, common flags before or after the command."""

from __future__ import annotations

import argparse


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
    _fleet_commands(sub)
    _worker_commands(sub)
    _job_commands(sub)
    _sandbox_commands(sub)
    _chip_commands(sub)
    _managed_commands(sub)
    return parser


def _fleet_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """ls, create, stop, start, delete: the VMs themselves."""
    ls = sub.add_parser("ls", help="list TPU VMs across zones")
    _add_common(ls, top=False)
    ls.add_argument("--json", action="store_true", help="print JSON objects, one per node")
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
    from console.cli.queued import add_create_flags

    add_create_flags(create)
    for verb in ("stop", "start", "delete"):
        change = sub.add_parser(verb, help=f"{verb} a TPU VM and wait for it")
        _add_common(change, top=False)
        change.add_argument(
            "name", help="node name" + (" (or a job id: stop that job)" if verb == "stop" else "")
        )
        change.add_argument("--yes", "-y", action="store_true", help="do not ask")


def _worker_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """exec, sync, probe, clean: what runs on the workers."""
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


def _job_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """launch, logs, diagnose, jobs: detached runs and their logs."""
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
    launch.add_argument(
        "--group",
        action="store_true",
        help="NODE is a slice of a multislice queued resource: run on every worker of every "
        "slice, each with its MEGASCALE_* environment",
    )
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
    _add_managed_flags(launch)
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


def _sandbox_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """sandbox reset | serve | preempt: the embedded fleet."""
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


def _chip_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """top, stacks (issue 18): every chip of a node, every worker's stacks of a job."""
    top = sub.add_parser(
        "top", help="HBM, duty cycle and holder of every chip of a node's workers, refreshing"
    )
    _add_common(top, top=False)
    _add_reach(top)
    top.add_argument("node", help="node name")
    top.add_argument("--json", action="store_true", help="print one reading as JSON and exit")
    top.add_argument("--count", "-n", type=int, default=None, help="stop after this many readings")
    stacks = sub.add_parser(
        "stacks", help="every worker's thread stacks of a running job, grouped, side by side"
    )
    _add_common(stacks, top=False)
    _add_reach(stacks)
    stacks.add_argument("job", help="job id, or its leading number")
    stacks.add_argument("--json", action="store_true", help="print JSON")


def _add_managed_flags(launch: argparse.ArgumentParser) -> None:
    """`launch --managed`: the job survives preemption (recreated, set up, run again)."""
    group = launch.add_argument_group("managed jobs (recovered after preemption)")
    group.add_argument(
        "--managed",
        action="store_true",
        help="recreate the node, set it up and run again after a preemption",
    )
    group.add_argument(
        "--max-recoveries",
        type=int,
        default=3,
        help="how many times to recover (preemptions and listed exit codes; default 3)",
    )
    group.add_argument(
        "--retry-on-exit",
        default="",
        metavar="CODES",
        help="exit codes of the run that are retried, e.g. 1,137 (default: none)",
    )
    group.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="'TEMPLATE [preset=P] [key=value ...]'",
        help="a setup step run on every new node before the run (bootstrap, sync); repeatable",
    )
    group.add_argument(
        "--type", dest="accelerator_type", default="", help="create the node if missing, e.g. v4-8"
    )
    group.add_argument("--version", default="", help="runtime version for the create")
    group.add_argument("--spot", action="store_true", help="create it on spot capacity")
    group.add_argument(
        "--fallback-on-demand",
        action="store_true",
        help="recreate on-demand when spot is refused or has no capacity",
    )
    group.add_argument("--label", action="append", default=[], help="key=value, repeatable")


def _managed_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """watch: managed jobs recovered with no TUI open."""
    watch = sub.add_parser(
        "watch", help="recover managed jobs headless (for tmux or systemd), one watcher per job"
    )
    _add_common(watch, top=False)
    _add_reach(watch)
    watch.add_argument("--until-done", action="store_true", help="exit once no managed job is open")
    watch.add_argument("--poll", type=float, default=5.0, help="seconds between looks (default 5)")
