"""Every worker's thread stacks of a job at once, grouped, with the workers that differ.

remote/stacks.py runs on each worker (fed on stdin, as the probe is): it sends SIGUSR1 to the
job's processes that registered faulthandler for it (every runner does, remote/stack_dumps.py)
and cuts each dump out of the job's log as it lands there, or reads another Python process with
py-spy where that is installed. The dump stays in the log (nothing a job wrote is removed); its
lines carry no failure or result pattern, so diagnosis and results parsing pass over them.
Workers are grouped by their main thread's stack; when one place holds most workers, the others
are named: the rank that is elsewhere is usually the cause of a hang.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import resources

from console.adapters.ssh_pool import SshTarget
from console.models import (
    FleetError,
    Frame,
    Job,
    Node,
    ProcessStacks,
    SshError,
    StackGroup,
    StacksReport,
    ThreadStack,
    WorkerStacks,
)
from console.services.log_stream import job_dir
from console.services.remote import RemoteService

_FH_HEADER = re.compile(r"^(Current thread|Thread) (0x[0-9a-fA-F]+).*\(most recent call first\):$")
_FH_FRAME = re.compile(r'^  File "(?P<path>.*)", line (?P<line>\d+) in (?P<function>.*)$')
_SPY_HEADER = re.compile(r'^Thread (?P<id>\S+) \((?P<state>[^)]*)\)(?::\s*"(?P<name>.*)")?\s*$')
_SPY_FRAME = re.compile(r"^\s{4}(?P<function>.+?) \((?P<path>.+):(?P<line>\d+)\)\s*$")
# Functions a rank waits in when it reached a collective point and the others have not.
SYNC_POINT = re.compile(
    r"barrier|sync_global_devices|broadcast_one_to_all|process_allgather|all_?reduce|"
    r"all_?gather|wait_for_peers",
    re.IGNORECASE,
)


def stacks_source() -> bytes:
    return resources.files("remote").joinpath("stacks.py").read_bytes()


def stacks_command(job_id: str, wait_s: float) -> str:
    return (
        "P=python3; [ -x /usr/bin/python3 ] && P=/usr/bin/python3; "
        f'exec "$P" -S -E - --job-dir "{job_dir(job_id)}" --wait-s {wait_s:g}'
    )


def _home_relative(path: str, home: str) -> str:
    if home and (path == home or path.startswith(home.rstrip("/") + "/")):
        return "~" + path[len(home.rstrip("/")) :]
    return path


def parse_faulthandler(text: str, home: str = "") -> tuple[ThreadStack, ...]:
    """faulthandler's dump: threads newest first, so the main thread is the last one."""
    threads: list[tuple[str, bool, list[Frame]]] = []
    for line in text.splitlines():
        if m := _FH_HEADER.match(line):
            threads.append((m.group(2), m.group(1) == "Current thread", []))
        elif (m := _FH_FRAME.match(line)) and threads:
            path = _home_relative(m.group("path"), home)
            threads[-1][2].append(Frame(path, int(m.group("line")), m.group("function")))
    last = len(threads) - 1
    return tuple(
        ThreadStack(name, tuple(frames), main=i == last, current=current)
        for i, (name, current, frames) in enumerate(threads)
    )


def parse_py_spy(text: str, home: str = "") -> tuple[ThreadStack, ...]:
    """`py-spy dump`: each thread with its name; the main one is called MainThread."""
    threads: list[tuple[str, str, list[Frame]]] = []
    for line in text.splitlines():
        if m := _SPY_HEADER.match(line):
            threads.append((m.group("name") or m.group("id"), m.group("state"), []))
        elif (m := _SPY_FRAME.match(line)) and threads:
            path = _home_relative(m.group("path"), home)
            threads[-1][2].append(Frame(path, int(m.group("line")), m.group("function")))
    main = next((i for i, t in enumerate(threads) if t[0] == "MainThread"), 0)
    return tuple(
        ThreadStack(name, tuple(frames), main=i == main, state=state)
        for i, (name, state, frames) in enumerate(threads)
    )


def worker_stacks(worker: int, raw: dict) -> WorkerStacks:
    home = str(raw.get("home", ""))
    processes = []
    for p in raw.get("processes", []):
        method, text = p.get("method", "none"), p.get("text", "")
        if method == "faulthandler":
            threads = parse_faulthandler(text, home)
        elif method == "py-spy":
            threads = parse_py_spy(text, home)
        else:
            threads = ()
        processes.append(
            ProcessStacks(
                int(p["pid"]),
                str(p.get("cmdline", "")),
                method,
                threads,
                str(p.get("note", "")),
                bool(p.get("python", True)),
            )
        )
    return WorkerStacks(worker, tuple(processes), note=str(raw.get("note", "")))


def _key(frames: tuple[Frame, ...]) -> tuple[tuple[str, str], ...]:
    """Same place = the same functions in the same files; lines move in a busy loop."""
    return tuple((f.path, f.function) for f in frames)


def _where(frames: tuple[Frame, ...]) -> str:
    return str(frames[0]) if frames else "no Python frame"


Grouping = tuple[tuple[StackGroup, ...], tuple[int, ...], str]


def group_workers(workers: Iterable[WorkerStacks]) -> Grouping:
    """Groups (largest first), the workers that differ from the majority, and the verdict.

    With no majority (two workers, or an even split), the group waiting at a synchronisation
    point (a barrier, JAX's multi-host syncs) is where the job should be, when exactly one is.
    """
    by_key: dict[tuple, list[WorkerStacks]] = {}
    for w in workers:
        if w.main_stack is not None:
            by_key.setdefault(_key(w.main_stack), []).append(w)
    groups = sorted(
        (
            StackGroup(
                tuple(w.worker for w in members),
                members[0].main_stack or (),
                any(SYNC_POINT.search(f.function) for f in members[0].main_stack or ()),
            )
            for members in by_key.values()
        ),
        key=lambda g: (-len(g.workers), g.workers),
    )
    if not groups:
        return (), (), "No stacks: no Python process of the job could be read on any worker."
    if len(groups) == 1:
        (only,) = groups
        return (
            tuple(groups),
            (),
            f"Every worker's main thread is at the same place: {_where(only.frames)}.",
        )
    reference = None
    if len(groups[0].workers) > len(groups[1].workers):
        reference = groups[0]
    else:
        tied = [g for g in groups if len(g.workers) == len(groups[0].workers)]
        waiting = [g for g in tied if g.at_sync_point]
        if len(waiting) == 1:
            reference = waiting[0]
    if reference is None:
        places = "; ".join(f"{_names(g.workers)} in {_where(g.frames)}" for g in groups)
        return tuple(groups), (), f"No majority: {places}."
    differing = tuple(sorted(w for g in groups if g is not reference for w in g.workers))
    elsewhere = "; ".join(
        f"{_names(g.workers)} in {_where(g.frames)}" for g in groups if g is not reference
    )
    many = len(reference.workers) > 1
    how = ("wait" if many else "waits") if reference.at_sync_point else ("are" if many else "is")
    verb = "are" if len(differing) > 1 else "is"
    return (
        tuple(groups),
        differing,
        f"{_names(differing)} {verb} elsewhere ({elsewhere}) while "
        f"{_names(reference.workers)} {how} in {_where(reference.frames)}.",
    )


def _names(workers: Iterable[int]) -> str:
    return ", ".join(f"w{w}" for w in workers)


class StacksService:
    def __init__(self, remote: RemoteService, *, wait_s: float = 5.0, timeout_s: float = 60.0):
        self.remote = remote
        self.wait_s = wait_s  # how long each process's dump may take to land in the log
        self.timeout_s = timeout_s

    async def _one(self, target: SshTarget, job: Job) -> WorkerStacks:
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            result = await asyncio.wait_for(
                self.remote.pool.run(
                    target,
                    stacks_command(job.job_id, self.wait_s),
                    on_stdout=out.append,
                    on_stderr=err.append,
                    stdin=stacks_source(),
                ),
                self.timeout_s,
            )
        except SshError as exc:
            return WorkerStacks(target.worker, error=str(exc))
        except TimeoutError:
            return WorkerStacks(
                target.worker, error=f"{target.label}: no answer within {self.timeout_s:.0f} s."
            )
        text = b"".join(out).decode(errors="replace").strip()
        try:
            raw = json.loads(text.splitlines()[-1]) if text else None
        except ValueError:
            raw = None
        if result.exit_status != 0 or not isinstance(raw, dict):
            detail = b"".join(err).decode(errors="replace").strip().splitlines()[-1:] or [""]
            return WorkerStacks(
                target.worker,
                error=f"{target.label}: the stacks script failed (exit "
                f"{result.exit_status}): {detail[0]}",
            )
        return worker_stacks(target.worker, raw)

    async def collect(self, job: Job, node: Node) -> StacksReport:
        """Every worker's stacks at once (each worker's processes one after another)."""
        targets = {t.worker: t for t in await self.remote.targets(node, "all")}
        started = [w for w in job.workers if w.pid]
        if not started:
            raise FleetError(f"Job {job.job_id} never started on any worker: no stacks to take.")
        taken_at = datetime.now(UTC)

        async def one(worker: int) -> WorkerStacks:
            target = targets.get(worker)
            if target is None:
                return WorkerStacks(worker, error=f"{node.name} has no worker {worker} now.")
            return await self._one(target, job)

        workers = tuple(await asyncio.gather(*(one(w.worker) for w in started)))
        groups, differing, verdict = group_workers(workers)
        return StacksReport(job.job_id, node.key, taken_at, workers, groups, differing, verdict)
