"""Detached jobs: launched on every chosen worker in one fan-out, recorded first, tailed after.

A job survives the console and the connection: it runs under setsid/nohup with its own folder
(`~/.tpuconsole/jobs/<id>/` holding cmd, pid, log, rc) and is followed by byte offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shlex
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import remote
from console.adapters.history_db import HistoryStore, JobNumberTaken
from console.adapters.ssh_pool import SshTarget
from console.models import (
    FleetError,
    Job,
    JobStatus,
    JobWorker,
    Node,
    NodeGone,
    StopResult,
    WorkerStop,
    parse_worker_selection,
)
from console.services.diagnosis import SIGQUIT_RC, Diagnoser, from_condition, node_left
from console.services.fanout_progress import ProgressSink, StageSink, staged
from console.services.lines import bounded_runs
from console.services.log_stream import LineSink, LogStream, job_dir, parse_rc_file
from console.services.metrics import JobMetrics
from console.services.remote import RemoteService

RUNNERS_LOCAL = Path(remote.__file__).resolve().parent  # the runners this console ships
DRAIN_S = 15.0  # how long a stop waits for the follower to take the job's last lines
LAUNCH_GRACE_S = 600.0  # a job launching longer than this, with no pid, never started
# How often a follower asks after the node itself: a deleted VM's connection may hang rather
# than close, and the job's end should not wait for ssh's keepalives to notice.
NODE_CHECK_S = 15.0
_RESULTS_PIECE = 1 << 20  # results are read from the copies a piece at a time, GIL held briefly
EndSink = Callable[[int, int | None], None]
# Runs the job's script and leaves its exit status (128+N for a signal) where the probe finds it.
# The job's folder is in its environment: a runner leaves its stack-dump marker there.
_WRAPPER = (
    'export TPUCONSOLE_JOB_DIR="$1"; bash "$1/cmd"; rc=$?; '
    'echo "$rc" > "$1/rc.tmp"; mv "$1/rc.tmp" "$1/rc"'
)


def check_command(command: str) -> None:
    """A job runs something: an empty or blank command is refused before anything is done."""
    if not command.strip():
        raise FleetError(
            "Nothing to launch: the command is empty.",
            "Give the command after --, e.g. tpuconsole launch NODE -- python train.py.",
        )


def job_script(command: str, env: Mapping[str, str] | None = None) -> str:
    """The `cmd` file: exports first, each value quoted, then the command as given."""
    exports = [f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    return "\n".join([*exports, command]) + "\n"


# Copies the job's log to the bucket every few seconds while the job lives, once more after:
# lines written while no console follows survive the VM. gs:// through `gcloud storage cp` (on
# every TPU VM image); a local folder is the sandbox's stand-in for a bucket.
_COPIER = (
    'd="$1"; b="$2"; pid="$3"; copy() { case "$b" in gs://*) gcloud storage cp -q "$d/log" "$b"'
    ' ;; *) mkdir -p "$(dirname "$b")" && cp "$d/log" "$b.tmp" && mv "$b.tmp" "$b" ;; esac; }; '
    'while kill -0 "$pid" 2>/dev/null; do copy; sleep {every}; done; copy'
)
LOG_COPY_S = 5


def bucket_log(bucket: str, job_id: str, worker: int) -> str:
    """Where a worker's log of a job is copied: `<bucket>/<job-id>/w<N>.log`."""
    return f"{bucket.rstrip('/')}/{job_id}/w{worker}.log"


def launch_command(job_id: str, script: str, log_copy: str = "") -> str:
    """Shell text that writes the job folder and starts the job detached; prints its pid.

    With `log_copy` (a gs:// object, or the sandbox's local stand-in), a copier follows it.
    """
    d = job_dir(job_id)
    copier = []
    if log_copy:
        body = _COPIER.replace("{every}", str(LOG_COPY_S))
        copier = [
            f'setsid nohup bash -c {shlex.quote(body)} tpuconsole-logcopy "$d" '
            f'{shlex.quote(log_copy)} "$pid" </dev/null >/dev/null 2>&1 &'
        ]
    return "\n".join(
        [
            "set -e",
            f'd="{d}"',
            'mkdir -p "$d"',
            f'printf %s {shlex.quote(script)} > "$d/cmd"',
            'cd "$HOME"',
            f'setsid nohup bash -c {shlex.quote(_WRAPPER)} tpuconsole-job "$d"'
            ' </dev/null >"$d/log" 2>&1 &',
            'pid=$!; echo "$pid" > "$d/pid"',
            # Its start time in clock ticks: a later probe tells this process from a reused pid.
            'cut -d" " -f22 "/proc/$pid/stat" > "$d/start" 2>/dev/null || true',
            *copier,
            'echo "$pid"',
        ]
    )


class JobService:
    def __init__(
        self, remote: RemoteService, history: HistoryStore, home: Path, log_bucket: str = ""
    ) -> None:
        self.remote = remote
        self.log_bucket = log_bucket  # [jobs] log_bucket: each worker's log copied there
        self.history = history
        self.home = home
        self._watchers: dict[str, asyncio.Future] = {}
        self._listeners: dict[str, list[EndSink]] = {}
        self._ended: dict[str, dict[int, int | None]] = {}

    def log_path(self, job_id: str, worker: int) -> Path:
        return self.home / "logs" / job_id / f"w{worker}.log"

    async def launch(
        self,
        node: Node,
        selection: str,
        command: str,
        *,
        kind: str = "custom",
        env: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        ship_runners: bool = False,
        attempt_of: str | None = None,
        on_progress: StageSink | None = None,
    ) -> Job:
        """Record the job, ship remote/ when its program is there, start it on every target.

        `attempt_of` makes it an attempt of a managed job ("" for the first, whose id becomes
        the managed job's): TPUCONSOLE_JOB in its environment then names that one id.

        If the runners cannot reach a worker, nothing starts anywhere: the workers of a slice
        run one program, and a part of it would wait for the rest, holding the TPU.
        `on_progress` hears each stage's fan-out ("shipping runners", "starting").
        """
        stage = staged(on_progress)
        check_command(command)
        targets = await self.remote.targets(node, selection)
        job = Job(
            job_id="",
            node=node.name,
            zone=node.zone,
            command=command,
            kind=kind,
            started_at=datetime.now(UTC),
            workers=tuple(JobWorker(t.worker) for t in targets),
            env=dict(env or {}),
            params=dict(params or {}),
            attempt_of=attempt_of or "",
        )
        job = self._record(job)  # before anything runs: the record is never lost
        if attempt_of is not None:
            env = {**(env or {}), "TPUCONSOLE_JOB": attempt_of or job.job_id}
        if ship_runners:
            failed = await self._ship_runners(targets, stage("shipping runners"))
            if failed:
                return self._not_started(job, failed)
        pids: dict[int, list[bytes]] = {t.worker: [] for t in targets}
        result = await self.remote.run_on_targets(
            node.name,
            targets,
            lambda target: launch_command(
                job.job_id,
                job_script(command, env),
                bucket_log(self.log_bucket, job.job_id, target.worker) if self.log_bucket else "",
            ),
            on_line=lambda line: (
                pids[line.worker].append(line.text.encode()) if line.stream == "out" else None
            ),
            on_progress=stage("starting"),
        )
        workers = []
        for outcome in result.outcomes:
            text = b"".join(pids[outcome.worker]).strip()
            if outcome.ok and text.isdigit():
                workers.append(JobWorker(outcome.worker, pid=int(text)))
                self.history.set_worker(job.job_id, outcome.worker, pid=int(text))
            else:
                reason = outcome.describe()
                workers.append(JobWorker(outcome.worker, error=reason))
                self.history.set_worker(job.job_id, outcome.worker, error=reason)
        workers.sort(key=lambda w: w.worker)
        started = [w for w in workers if w.pid]
        status = JobStatus.RUNNING if started else JobStatus.FAILED
        note = "" if len(started) == len(workers) else result.summary()
        self.history.set_status(job.job_id, status, note)
        return replace(job, workers=tuple(workers), status=status)

    def _record(self, job: Job) -> Job:
        """The job in the history under a number of its own, however many launch at once."""
        for _ in range(100):
            numbered = replace(job, job_id=f"{self.history.next_seq()}-{secrets.token_hex(3)}")
            try:
                self.history.record_launch(numbered)
            except JobNumberTaken:
                continue  # another console launched at the same moment: take the next
            return numbered
        raise FleetError("Could not give the job a number in the history.", "Try again.")

    def _not_started(self, job: Job, failed: dict[int, str]) -> Job:
        workers = []
        for w in job.workers:
            reason = failed.get(w.worker) or "not started: the runners did not reach every worker"
            workers.append(JobWorker(w.worker, error=reason))
            self.history.set_worker(job.job_id, w.worker, error=reason)
        note = "; ".join(f"w{w}: {reason}" for w, reason in sorted(failed.items()))
        self.history.set_status(job.job_id, JobStatus.FAILED, note)
        return replace(job, workers=tuple(workers), status=JobStatus.FAILED)

    async def _ship_runners(
        self, targets: list, on_progress: ProgressSink | None = None
    ) -> dict[int, str]:
        """remote/ as this console has it, to where the templates' programs expect it."""
        from console.services.shipping import Shipper
        from console.services.templates import RUNNERS_DIR

        outcomes = await Shipper(self.remote).upload_to(
            targets, RUNNERS_LOCAL, RUNNERS_DIR, on_progress=on_progress
        )
        return {o.worker: f"could not ship the runners: {o.error}" for o in outcomes if o.error}

    def get(self, job_ref: str) -> Job:
        job = self.history.get(job_ref)
        if job is None:
            raise FleetError(
                f"No job {job_ref!r} in the history.", "`tpuconsole jobs` lists recent jobs."
            )
        return job

    async def streams(self, job: Job, node: Node, selection: str = "all") -> list[LogStream]:
        targets = {t.worker: t for t in await self.remote.targets(node, "all")}
        wanted = {w.worker for w in job.workers}
        if selection != "all":
            wanted &= set(parse_worker_selection(selection, len(node.workers)))
        return [
            LogStream(
                self.remote.pool,
                targets[w.worker],
                job.job_id,
                w.pid,
                self.log_path(job.job_id, w.worker),
                resolve=self._resolver(job, node, w.worker),
            )
            for w in job.workers
            if w.worker in wanted and w.pid and w.worker in targets
        ]

    def _resolver(self, job: Job, node: Node, worker: int):
        """Where a follower finds its worker again after a lost link: the API followed to
        wherever it is served now, then the node asked again (addresses, port, host keys)."""

        async def resolve() -> SshTarget:
            await self.remote.relink()
            fresh = await self.node_now(job, node)
            [target] = await self.remote.targets(fresh, str(worker))
            return target

        return resolve

    async def node_now(self, job: Job, node: Node) -> Node:
        """The job's node as the API has it now; NodeGone if the VM it ran on is no more."""
        number = job.job_id.split("-")[0]
        kept = f"`tpuconsole logs {number}` shows every line it wrote"
        try:
            fresh = await self.remote.fleet.get_node(job.zone, job.node)
        except FleetError as exc:
            if exc.code != "NOT_FOUND":
                raise
            raise NodeGone(
                f"{job.node} was deleted while job {job.job_id} ran; its processes went with "
                f"it, and {kept}.",
                "GONE",
            ) from None
        if node.node_id and fresh.node_id and fresh.node_id != node.node_id:
            raise NodeGone(
                f"{job.node} was deleted and created again while job {job.job_id} ran; the "
                f"job went with the old VM, and {kept}.",
                "GONE",
            )
        if fresh.state != "READY":
            fate = {
                "PREEMPTED": "was preempted",
                "DELETING": "is being deleted",
                "STOPPING": "is stopping",
                "STOPPED": "was stopped",
                "TERMINATED": "was terminated",
            }.get(fresh.state, f"went {fresh.state}")
            raise NodeGone(
                f"{job.node} {fate} while job {job.job_id} ran; its processes went with it, "
                f"and {kept}.",
                fresh.state,
            )
        return fresh

    async def _watch_node(self, job: Job, node: Node) -> None:
        """Raise NodeGone as soon as the API says the job's VM is no more; else never return."""
        while True:
            await asyncio.sleep(NODE_CHECK_S)
            try:
                await self.node_now(job, node)
            except NodeGone:
                raise
            except FleetError:
                continue  # the API cannot say now: the streams will tell, or the next look

    async def follow(
        self,
        job: Job,
        node: Node,
        on_line: LineSink | None,
        *,
        selection: str = "all",
        follow: bool = True,
        on_end: Callable[[int, int | None], None] | None = None,
        from_start: bool = False,
    ) -> dict[int, int | None]:
        """Stream every chosen worker's log at once; record each rc and the job's end.

        With `from_start`, every line of the local copies first: one stream of lines, read by
        one rule, whether they were fetched before or arrive now.
        """
        streams = await self.streams(job, node, selection)

        async def one(stream: LogStream) -> int | None:
            rc: int | None = None
            try:
                rc = await stream.follow(on_line, follow=follow, from_start=from_start)
            finally:
                # One write a worker, on a thread: each is a commit (an fsync in WAL), and the
                # 256 workers of a pod slice end together; made on the loop, they froze the
                # log view for seconds.
                await asyncio.to_thread(
                    self.history.set_worker,
                    job.job_id,
                    stream.worker,
                    log_offset=stream.offset,
                    rc=rc,
                )
            if on_end is not None and follow:
                on_end(stream.worker, rc)
            return rc

        try:
            results = await self._all_or_gone(job, node, [one(s) for s in streams], follow)
        except NodeGone as gone:
            current = self.history.get(job.job_id)
            if current is not None and current.open:
                self.history.set_status(job.job_id, JobStatus.LOST, gone.reason)
                # The follower may see it before the fleet's refresh does: the finding either way.
                self.history.set_results(
                    job.job_id, diagnoses=[node_left(job.node, _as_listed(gone.state), gone.reason)]
                )
            await self.record_results(job)  # what its logs said up to the end
            raise
        rcs: dict[int, int | None] = {}
        for stream, result in zip(streams, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            rcs[stream.worker] = result
        started = [w for w in job.workers if w.pid]
        if follow and selection == "all" and len(rcs) == len(started):
            self._settle(job, rcs, _latest([s.ended_at for s in streams]))
            await self.record_results(job)  # whatever the status: a killed job's last lines too
        return rcs

    async def _all_or_gone(self, job: Job, node: Node, followers: list, follow: bool) -> list:
        """Every follower's result (or exception), unless the node goes first: then NodeGone at
        once, the other followers stopped, rather than each waiting out its own outage."""
        tasks = [asyncio.ensure_future(f) for f in followers]
        watcher = asyncio.ensure_future(self._watch_node(job, node)) if follow else None
        try:
            pending = {*tasks, *([watcher] if watcher else [])}
            while not all(t.done() for t in tasks):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and isinstance(task.exception(), NodeGone):
                        raise task.exception()
        finally:
            for task in [*tasks, *([watcher] if watcher else [])]:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, *([watcher] if watcher else []), return_exceptions=True)
        return [t.exception() or t.result() for t in tasks]

    def _settle(
        self, job: Job, rcs: dict[int, int | None], ended_at: datetime | None = None
    ) -> None:
        """The state a job ended in, unless it was already settled (killed, lost stay so).

        `ended_at` is when the last worker's rc file was written, not when someone looked.
        """
        current = self.history.get(job.job_id)
        if current is None or not current.open:
            return
        never = [w for w in job.workers if not w.pid]
        vanished = sorted(w for w, rc in rcs.items() if rc is None)
        notes = [f"w{w} rc={rc}" for w, rc in sorted(rcs.items()) if rc is not None]
        notes += [f"w{w.worker} did not start" for w in never]
        notes += [f"w{w}: the process vanished without an exit code" for w in vanished]
        if vanished:
            status = JobStatus.LOST
        elif never or any(rc != 0 for rc in rcs.values()):
            status = JobStatus.FAILED
        else:
            status = JobStatus.SUCCEEDED
        self.history.set_status(job.job_id, status, ", ".join(notes), ended_at)

    async def settle_ended(
        self, jobs: list[Job] | None = None, timeout_s: float = 15.0
    ) -> list[str]:
        """Open jobs that no follower of this console watches, settled if every worker ended.

        Read from each worker's job folder: its rc file and the file's mtime (the end time),
        or that the process is still running, or that it vanished without one. A job nobody
        followed would otherwise show `running` until someone did. Returns the job ids settled.
        """
        if jobs is None:  # every 10 s from the jobs screen: read on a thread, not the loop
            jobs = await asyncio.to_thread(self.history.recent, 200)
        watched = {j for j, task in self._watchers.items() if not task.done()}
        candidates = [
            j for j in jobs if j.open and j.job_id not in watched and any(w.pid for w in j.workers)
        ]
        nodes: dict[str, asyncio.Future] = {}

        def node_of(job: Job) -> asyncio.Future:
            if job.node_key not in nodes:
                nodes[job.node_key] = asyncio.ensure_future(
                    self.remote.fleet.get_node(job.zone, job.node)
                )
            return nodes[job.node_key]

        async def one(job: Job) -> str | None:
            node = await node_of(job)
            targets = {t.worker: t for t in await self.remote.targets(node, "all")}
            started = [w for w in job.workers if w.pid]
            if any(w.worker not in targets for w in started):
                return None
            said: dict[int, list[str]] = {w.worker: [] for w in started}
            result = await self.remote.run_on_targets(
                node.name,
                [targets[w.worker] for w in started],
                settle_command(job.job_id),
                on_line=lambda line: (
                    said[line.worker].append(line.text) if line.stream == "out" else None
                ),
            )
            if result.failed:
                return None
            rcs: dict[int, int | None] = {}
            ended: list[float | None] = []
            for worker, words in ((w, " ".join(t).split()) for w, t in said.items()):
                if words[:1] == ["ended"]:
                    rc, when = parse_rc_file(" ".join(words[1:]).encode())
                    rcs[worker] = rc
                    ended.append(when)
                elif words == ["vanished"]:
                    rcs[worker] = None
                else:
                    return None  # still running (or unreadable): nothing to settle
            for worker, rc in rcs.items():
                if rc is not None:
                    self.history.set_worker(job.job_id, worker, rc=rc)
            self._settle(job, rcs, _latest(ended))
            await self.record_results(job)
            return job.job_id

        if not candidates:
            return []
        tasks = [asyncio.ensure_future(one(j)) for j in candidates]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        for future in nodes.values():
            future.cancel()
        settled: list[str] = []
        for task in done:
            if not task.cancelled() and task.exception() is None and (note := task.result()):
                settled.append(note)
        return settled

    async def record_results(self, job: Job) -> None:
        """Metrics and diagnoses from the local copies, into the history with the job.

        Read from the copies rather than gathered from the live lines, so a job followed by no
        view, or re-attached after a restart, gets the same record as one watched throughout.
        """
        metrics, found = await asyncio.to_thread(self._results_from_copies, job)
        current = self.history.get(job.job_id) or job
        explained = {(d.key, d.worker) for d in found}
        for w in current.workers:  # died of SIGQUIT with no line saying so (sgl-jax's way)
            if w.rc == SIGQUIT_RC and ("scheduler_failed", w.worker) not in explained:
                found.append(from_condition("killed_by_sigquit", f"rc={w.rc}", w.worker))
        self.history.set_results(job.job_id, metrics.as_json(), found)

    def _results_from_copies(self, job: Job) -> tuple[JobMetrics, list]:
        metrics, diagnoser = JobMetrics(), Diagnoser()
        for w in job.workers:
            with (
                contextlib.suppress(FileNotFoundError),
                self.log_path(job.job_id, w.worker).open("rb") as f,
            ):
                # Runs of whole lines, a long line as its visible part: linear in the copy.
                for run in bounded_runs(iter(partial(f.read, _RESULTS_PIECE), b"")):
                    metrics.feed_chunk(w.worker, run)
                    diagnoser.feed_chunk(w.worker, run)
        return metrics, diagnoser.found

    async def watch(
        self, job: Job, node: Node, on_end: EndSink | None = None
    ) -> dict[int, int | None]:
        """Follow a job once per console, however many views want it.

        One follower appends to the local copies; a second one would write every line twice.
        Views that come later are told at once of the workers that already ended.
        """
        listeners = self._listeners.setdefault(job.job_id, [])
        ended = self._ended.setdefault(job.job_id, {})
        if on_end is not None:
            listeners.append(on_end)
            for worker, rc in list(ended.items()):
                on_end(worker, rc)

        def tell(worker: int, rc: int | None) -> None:
            ended[worker] = rc
            for listener in list(listeners):
                listener(worker, rc)

        task = self._watchers.get(job.job_id)
        # A finished follower is not reused: following an ended job again costs one round trip
        # per worker and restores a local copy that went missing since.
        if task is None or task.done():
            task = asyncio.ensure_future(self.follow(job, node, None, on_end=tell))
            self._watchers[job.job_id] = task
        try:
            return await asyncio.shield(task)
        finally:
            if on_end is not None and on_end in listeners:
                listeners.remove(on_end)

    async def reconcile(self, fleet) -> list[str]:
        """On start: re-attach to jobs still running; mark lost those whose VM is gone.

        Returns what it found, for the status line.
        """
        from console.models import FleetError

        notes = []
        for job in await asyncio.to_thread(self.history.recent, 200):
            if not job.open:
                continue
            if job.status == JobStatus.LAUNCHING and not any(w.pid for w in job.workers):
                age = (datetime.now(UTC) - job.started_at).total_seconds()
                if age < LAUNCH_GRACE_S:
                    continue  # another console may be launching it right now
                self.history.set_status(job.job_id, JobStatus.FAILED, "the launch never completed")
                notes.append(f"job {job.job_id} failed: its launch never completed")
                continue
            try:
                node = await fleet.get_node(job.zone, job.node)
            except FleetError as exc:
                if exc.code != "NOT_FOUND":
                    continue  # unreachable now: try again next start, do not guess
                self.history.set_status(job.job_id, JobStatus.LOST, f"{job.node} no longer exists")
                notes.append(f"job {job.job_id} lost: {job.node} no longer exists")
                continue
            if node.state != "READY":
                self.history.set_status(job.job_id, JobStatus.LOST, f"{job.node} is {node.state}")
                notes.append(f"job {job.job_id} lost: {job.node} is {node.state}")
                continue
            asyncio.ensure_future(self._watch_quietly(job, node))
            notes.append(f"job {job.job_id} re-attached")
        return notes

    async def _watch_quietly(self, job: Job, node: Node) -> None:
        from console.models import FleetError

        with contextlib.suppress(FleetError, OSError):
            await self.watch(job, node)

    async def stop(self, job: Job, node: Node, grace_s: float = 10.0) -> dict[int, WorkerStop]:
        """SIGTERM the job's whole session on every worker, SIGKILL after the grace period.

        The session is the job's (launched with setsid); its leader's start time is checked
        first, so a pid reused since the launch is never signalled.
        """
        targets = {t.worker: t for t in await self.remote.targets(node, "all")}
        wanted = [w for w in job.workers if w.pid and w.worker in targets]
        outcome: dict[int, WorkerStop] = {}

        def sink(worker: int):
            return lambda line: (
                outcome.__setitem__(worker, WorkerStop.parse(line.text))
                if line.stream == "out"
                else None
            )

        async def one(worker: JobWorker) -> None:
            result = await self.remote.run_on_targets(
                node.name,
                [targets[worker.worker]],
                stop_command(job.job_id, grace_s),
                on_line=sink(worker.worker),
            )
            if not result.outcomes[0].ok:
                failed = WorkerStop(StopResult.NOT_STOPPED, result.outcomes[0].describe())
                outcome[worker.worker] = failed

        await asyncio.gather(*(one(w) for w in wanted))
        stopped = any(v.result.ended_it for v in outcome.values())
        if stopped:
            note = ", ".join(f"w{w}: {v}" for w, v in sorted(outcome.items()))
            self.history.set_status(job.job_id, JobStatus.KILLED, note)
        if stopped or (outcome and all(v.result == StopResult.GONE for v in outcome.values())):
            await self._drain(job, node)
        return outcome

    async def _drain(self, job: Job, node: Node) -> None:
        """Let the job's one follower (running already, or started now) take what a stopped or
        ended job last wrote (its last lines say why it ended), then settle and record it."""
        try:
            await asyncio.wait_for(asyncio.shield(self.watch(job, node)), DRAIN_S)
        except (FleetError, OSError, TimeoutError):
            await self.record_results(job)  # what the local copies hold by now

    async def rerun(self, job: Job, node: Node) -> Job:
        """The same command, environment and kind, on the same workers."""
        from console.services.templates import TEMPLATES

        selection = ",".join(str(w.worker) for w in job.workers) or "all"
        template = TEMPLATES.get(job.kind)
        return await self.launch(
            node,
            selection,
            job.command,
            kind=job.kind,
            env=job.env,
            params=job.params,
            ship_runners=template is not None and template.ships_runners,
        )


def _latest(times: list[float | None]) -> datetime | None:
    known = [t for t in times if t is not None]
    return datetime.fromtimestamp(max(known), UTC) if known else None


def settle_command(job_id: str) -> str:
    """Shell text printing `ended RC MTIME`, `running` or `vanished` for the job's folder.

    The rc is looked for again after the liveness check: it is written as the process exits.
    """
    d = job_dir(job_id)
    return "\n".join(
        [
            f'd="{d}"; rc="$d/rc"',
            'ended() { [ -f "$rc" ] && echo "ended $(cat "$rc") $(stat -c %Y "$rc")"; }',
            "ended && exit 0",
            'pid=$(cat "$d/pid" 2>/dev/null); start=$(cat "$d/start" 2>/dev/null)',
            'now=$(cut -d" " -f22 "/proc/$pid/stat" 2>/dev/null)',
            'if [ -n "$now" ] && { [ -z "$start" ] || [ "$now" = "$start" ]; } '
            '&& ! ps -o stat= -p "$pid" 2>/dev/null | grep -q "^Z"; then echo running; exit 0; fi',
            "ended || echo vanished",
        ]
    )


def stop_command(job_id: str, grace_s: float) -> str:
    """Shell text that ends the job's session; prints what it did, `word[: detail]`.

    The session outlives its leader when the command backgrounded a child: those processes
    are the job's too, and stopping the job ends them (the session id is the leader's pid,
    which the kernel keeps allocated while any member lives, so it cannot name another job).
    """
    d = job_dir(job_id)
    ticks = max(1, int(grace_s * 10))
    return "\n".join(
        [
            f'd="{d}"; pid=$(cat "$d/pid" 2>/dev/null); start=$(cat "$d/start" 2>/dev/null)',
            '[ -n "$pid" ] || { echo gone; exit 0; }',
            'now=$(cut -d" " -f22 "/proc/$pid/stat" 2>/dev/null)',
            '[ -z "$now" ] || [ -z "$start" ] || [ "$now" = "$start" ] '
            '|| { echo "gone: pid reused"; exit 0; }',
            "members() { ps -o pid=,stat= --sid \"$pid\" 2>/dev/null | awk '$2 !~ /^Z/'; }",
            'n=$(members | wc -l); [ "$n" -gt 0 ] || { echo gone; exit 0; }',
            'left=""',
            'if [ -z "$now" ] || ps -o stat= -p "$pid" 2>/dev/null | grep -q "^Z"; then',
            '  rc=$(cat "$d/rc" 2>/dev/null)',
            '  s=""; [ "$n" = 1 ] || s=es',
            '  left=": $n process$s it left running in its session (its command had ended'
            '${rc:+ with rc=$rc})"',
            "fi",
            'pkill -TERM -s "$pid" 2>/dev/null',
            f"for i in $(seq 1 {ticks}); do",
            '  [ -n "$(members)" ] || { echo "stopped$left"; exit 0; }; sleep 0.1',
            "done",
            'pkill -KILL -s "$pid" 2>/dev/null; echo "killed$left"',
        ]
    )


def _as_listed(state: str) -> str:
    """A node no longer listed was deleted: DELETING, as the fleet's refresh calls it."""
    return "DELETING" if state == "GONE" else state
