"""Managed jobs: a node spec, setup steps and a run step, brought back after a preemption.

What SkyPilot's managed jobs and levanter's "babysit" scripts do, with their users' traps
avoided: the preempted node is deleted (and gone) before the new create, since a PREEMPTED TPU
keeps its quota (skypilot#1468, #1483) and retries must not leak VMs (#1716); ssh is tried only
while the API says READY (no minutes of ssh into a dead VM, #849); the user is told (#2000).

One job id over every attempt: the first attempt's run id is the managed job's, each later
attempt is its own run in the history (`attempt_of` names the managed job), run with
TPUCONSOLE_RECOVERY=N and TPUCONSOLE_JOB=<id> in its environment. Preemptions (the node
PREEMPTED, TERMINATED, stopped, deleted, or the run `lost`) are recovered up to
`max_recoveries`; a run that fails is retried only when a worker's exit code is in
`retry_on_exit` (SkyPilot's `recover_on_exit_codes`), on the same node, from the same budget.

Who acts: whoever holds the job's lease in the history (`managed:<id>`), the TUI while open or
`tpuconsole watch`; a lease whose holder died is taken over. Claiming a recovery is a
compare-and-set on the attempt number, so two watchers never recover one attempt twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from console.adapters.history_db import HistoryStore
from console.models import (
    EventKind,
    FleetError,
    Job,
    JobStatus,
    ManagedRecord,
    ManagedState,
    Node,
)
from console.services.chip_metrics import ChipMetricsService
from console.services.fleet import FleetService
from console.services.hangs import HangFinding, HangSettings, HangWatch
from console.services.job_monitor import JobMonitor
from console.services.jobs import JobService
from console.services.launch import LaunchService
from console.services.lifecycle import CreateRequest, LifecycleService, ProgressSink
from console.services.notify import JobEvent, Notifier
from console.services.settings import DEFAULT_STUCK_AFTER_S

# The node is lost to the job: recovered. A node someone stopped is not (that is their call):
# the job waits for it to be started, then runs again on it, set up afresh.
GONE_STATES = frozenset({"PREEMPTED", "TERMINATED", "DELETING"})
STOPPED_STATES = frozenset({"STOPPING", "STOPPED", "STARTING"})
ON_THE_WAY = frozenset({"CREATING", "RESTARTING", "REPAIRING", "STARTING"})
RECOVERY = "TPUCONSOLE_RECOVERY"
# A recovery that failed (no room in any zone, a setup step failing) is tried again after
# 10 s, doubling up to 5 minutes, as SkyPilot's controller backs off its launches.
RETRY_FIRST_S = 10.0
RETRY_MAX_S = 300.0


@dataclass(frozen=True)
class NodeSpec:
    """What to create (again): gcloud's create flags; `zones` tried in order after a loss."""

    name: str
    zones: tuple[str, ...]
    accelerator_type: str = ""
    runtime_version: str = ""
    spot: bool = False
    fallback_on_demand: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    def request(self, zone: str) -> CreateRequest:
        return CreateRequest(
            self.name,
            zone,
            self.accelerator_type,
            self.runtime_version,
            spot=self.spot,
            fallback_on_demand=self.fallback_on_demand,
            labels=dict(self.labels),
        )


@dataclass(frozen=True)
class Step:
    """A template with its preset and values (bootstrap, sync, grpo…), or a command as is."""

    template: str = ""
    preset: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    command: str = ""

    def describe(self) -> str:
        return self.template or f"command {self.command!r}"


@dataclass(frozen=True)
class ManagedSpec:
    node: NodeSpec
    run: Step
    setup: tuple[Step, ...] = ()
    selection: str = "all"
    max_recoveries: int = 3
    retry_on_exit: tuple[int, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ManagedSpec:
        node = dict(doc["node"])
        node["zones"] = tuple(node.get("zones", ()))
        return cls(
            node=NodeSpec(**node),
            run=Step(**doc["run"]),
            setup=tuple(Step(**s) for s in doc.get("setup", ())),
            selection=doc.get("selection", "all"),
            max_recoveries=int(doc.get("max_recoveries", 3)),
            retry_on_exit=tuple(int(c) for c in doc.get("retry_on_exit", ())),
        )


def parse_exit_codes(text: str) -> tuple[int, ...]:
    """`--retry-on-exit 1,137`: exit codes, 0..255, comma separated."""
    codes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 0 <= int(part) <= 255:
            raise FleetError(
                f"--retry-on-exit {text!r}: {part!r} is not an exit code (0 to 255).",
                "Give codes separated by commas, e.g. --retry-on-exit 1,137.",
                field="retry_on_exit",
            )
        codes.append(int(part))
    return tuple(codes)


class StepFailed(FleetError):
    """A setup step (or the run's start) did not succeed: the recovery tries again later."""


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class ManagedService:
    def __init__(
        self,
        fleet: FleetService,
        history: HistoryStore,
        jobs: JobService,
        lifecycle: LifecycleService,
        launcher: LaunchService,
        notifier: Notifier | None = None,
        *,
        holder: str = "",
        poll_s: float = 2.0,
        lease_s: float = 30.0,
        say: Callable[[str], None] | None = None,
        chips: ChipMetricsService | None = None,
        stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
    ) -> None:
        """`chips`: the duty cycle a running attempt's "stuck?" weighs against its silence
        (without, silence alone decides); `stuck_after_s` is config.toml's `stuck_after`."""
        self.fleet = fleet
        self.history = history
        self.jobs = jobs
        self.lifecycle = lifecycle
        self.launcher = launcher
        self.notifier = notifier or Notifier()
        self.holder = holder or holder_name()
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.say = say or (lambda _text: None)
        self.chips = chips
        self.stuck_after_s = stuck_after_s
        self.monitors: dict[str, JobMonitor] = {}  # run id -> its "stuck?" while followed
        self._acting: dict[str, asyncio.Future] = {}  # managed id -> its recovery under way
        self._followers: dict[str, asyncio.Future] = {}  # run id -> its follower
        self._held: set[str] = set()  # the managed jobs whose lease this process holds
        self._failures: dict[str, tuple[int, float]] = {}  # id -> (failed tries, retry at)

    # ----- launch ------------------------------------------------------------------------------
    async def launch(self, spec: ManagedSpec, progress: ProgressSink | None = None) -> Job:
        """Adopt the spec's node if it is there (READY), else create it; set up; run.

        The run's id becomes the managed job's; the lease is this process's from the start.
        """
        if not spec.node.zones:
            raise FleetError(
                f"No zone for {spec.node.name}.", "Give --zone (the first is tried first)."
            )
        node = await self._node_or_none(spec.node.zones[0], spec.node.name)
        if node is not None and node.state != "READY":
            raise FleetError(
                f"{spec.node.name} is {node.state}; a managed job starts on a READY node or "
                "creates its own.",
                "Delete it, or give another name with --type to create one.",
                code="FAILED_PRECONDITION",
            )
        if node is None:
            if not spec.node.accelerator_type:
                raise FleetError(
                    f"No node {spec.node.name} in {spec.node.zones[0]} to adopt.",
                    "Give --type (and --spot) to create it, or name an existing node.",
                    code="NOT_FOUND",
                )
            node = await self._create(spec, progress)
        spec = self._adopted(spec, node)
        await self._set_up(spec, node, recovery=0)
        run = await self._start_run(spec, node, root="", recovery=0)
        self.history.record_managed(run.job_id, spec.as_json())
        if self.history.take_lease(self._lease(run.job_id), self.holder, self.lease_s):
            self._held.add(run.job_id)
        return self.history.get(run.job_id) or run

    @staticmethod
    def _adopted(spec: ManagedSpec, node: Node) -> ManagedSpec:
        """The spec completed from the node it runs on: what a recreate must ask for."""
        n = spec.node
        zones = (node.zone, *[z for z in n.zones if z != node.zone])
        adopted = NodeSpec(
            n.name,
            zones,
            n.accelerator_type or node.accelerator_type,
            n.runtime_version or node.runtime_version,
            n.spot or node.spot or node.preemptible,
            n.fallback_on_demand,
            n.labels or dict(node.labels),
        )
        return ManagedSpec(
            adopted, spec.run, spec.setup, spec.selection, spec.max_recoveries, spec.retry_on_exit
        )

    # ----- the loop ----------------------------------------------------------------------------
    async def run_forever(self, *, until_done: bool = False) -> None:
        """Check every open managed job each `poll_s`; with `until_done`, return when none is
        open any more (and no recovery of ours is under way)."""
        try:
            while True:
                await self.check()
                if until_done and not self.history.open_managed() and not self._busy():
                    return
                await asyncio.sleep(self.poll_s)
        finally:
            await self.close()

    def _busy(self) -> bool:
        return any(not t.done() for t in self._acting.values())

    async def close(self) -> None:
        tasks = [*self._acting.values(), *self._followers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._acting.clear()
        self._followers.clear()
        for job_id in self._held:
            self.history.release_lease(self._lease(job_id), self.holder)
        self._held.clear()
        await self.notifier.drain()

    @staticmethod
    def _lease(job_id: str) -> str:
        return f"managed:{job_id}"

    async def check(self) -> list[str]:
        """One look at every open managed job this process holds (or may take) the lease of."""
        said = []
        for record in self.history.open_managed():
            if not self.history.take_lease(self._lease(record.job_id), self.holder, self.lease_s):
                self._held.discard(record.job_id)
                continue  # another watcher acts on it
            self._held.add(record.job_id)
            task = self._acting.get(record.job_id)
            if task is not None and not task.done():
                continue  # our recovery goes on (the lease renewed just now)
            if task is not None:
                self._acting.pop(record.job_id)
                with contextlib.suppress(asyncio.CancelledError):
                    if (exc := task.exception()) is not None:
                        tries = self._failures.get(record.job_id, (0, 0.0))[0] + 1
                        wait = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (tries - 1))
                        now = asyncio.get_running_loop().time()
                        self._failures[record.job_id] = (tries, now + wait)
                        said.append(f"job {record.job_id}: {exc} (trying again in {wait:.0f} s)")
                        self.history.set_managed(record.job_id, note=said[-1])
                        self.say(said[-1])
                    else:
                        self._failures.pop(record.job_id, None)
            _, retry_at = self._failures.get(record.job_id, (0, 0.0))
            if asyncio.get_running_loop().time() < retry_at:
                continue  # a recovery that failed: tried again after its backoff
            said.extend(await self._look(record))
        return said

    async def _look(self, record: ManagedRecord) -> list[str]:
        spec = ManagedSpec.from_json(record.spec)
        if (
            record.state == ManagedState.RECOVERING
        ):  # claimed, and its recovery did not finish: go on
            return [self._act(record, spec, "resume", "")]
        run = self.history.get(record.current)
        if run is None:
            self.history.set_managed(
                record.job_id, state=ManagedState.FAILED, note="its run is missing"
            )
            return []
        node = await self._node_or_none(run.zone, run.node)
        if node is not None and node.state in STOPPED_STATES:
            return []  # stopped by someone: recovered once it is started again
        gone = node is None or node.state in GONE_STATES
        if gone or run.status == JobStatus.LOST:
            state = "GONE" if node is None else node.state
            why = f"{run.node} is {state}" if gone else f"its run was lost: {run.note}"
            return [self._recover_or_give_up(record, spec, run, EventKind.PREEMPTED, why)]
        if node is None or node.state != "READY":
            return []  # CREATING, STARTING, REPAIRING: look again later
        if run.open:
            self._follow(record.job_id, run, node)
            return []
        return [self._ended(record, spec, run)]

    def _recover_or_give_up(
        self, record: ManagedRecord, spec: ManagedSpec, run: Job, why_kind: EventKind, why: str
    ) -> str:
        if record.recoveries >= spec.max_recoveries:
            status = JobStatus.LOST if why_kind == EventKind.PREEMPTED else JobStatus.FAILED
            if run.open:
                self.history.set_status(run.job_id, JobStatus.LOST, why)
            times = f"{record.recoveries} recover{'y' if record.recoveries == 1 else 'ies'}"
            note = f"{why}; gave up after {times} (--max-recoveries {spec.max_recoveries})"
            self.history.set_managed(record.job_id, state=ManagedState.GAVE_UP, note=note)
            self._tell(
                EventKind.GAVE_UP, record.job_id, status, run.node, f"job {record.job_id}: {note}"
            )
            return note
        if not self.history.claim_recovery(record.job_id, record.attempt):
            return ""  # another watcher claimed this attempt first
        if run.open:
            self.history.set_status(run.job_id, JobStatus.LOST, why)
        text = f"job {record.job_id} {why_kind}: {why}; recovering (attempt {record.attempt + 2})"
        self._tell(why_kind, record.job_id, ManagedState.RECOVERING, run.node, text)
        fresh = self.history.managed(record.job_id)
        assert fresh is not None
        return self._act(fresh, spec, why_kind, why)

    def _act(self, record: ManagedRecord, spec: ManagedSpec, kind: str, why: str) -> str:
        task = asyncio.ensure_future(self._recover(record, spec, kind))
        self._acting[record.job_id] = task
        return f"job {record.job_id}: recovering ({kind}{': ' + why if why else ''})"

    def _ended(self, record: ManagedRecord, spec: ManagedSpec, run: Job) -> str:
        if run.status == JobStatus.SUCCEEDED:
            self.history.set_managed(record.job_id, state=ManagedState.SUCCEEDED)
            text = f"job {record.job_id} succeeded on {run.node}"
            if record.recoveries:
                n = record.recoveries
                text += f" after {n} recover{'y' if n == 1 else 'ies'}"
            self._tell(EventKind.ENDED, record.job_id, run.status, run.node, text)
            return text
        if run.status == JobStatus.KILLED:
            self.history.set_managed(
                record.job_id, state=ManagedState.CANCELLED, note="stopped by the user"
            )
            text = f"job {record.job_id} was stopped; not recovered"
            self._tell(EventKind.ENDED, record.job_id, run.status, run.node, text)
            return text
        codes = sorted({w.rc for w in run.workers if w.rc not in (None, 0)})
        listed = [c for c in codes if c in spec.retry_on_exit]
        said = ", ".join(str(c) for c in codes) or "none"
        if listed:
            return self._recover_or_give_up(
                record,
                spec,
                run,
                EventKind.RETRIED,
                f"it exited with {listed[0]} (--retry-on-exit)",
            )
        note = f"the run failed (exit {said}); not retried"
        if spec.retry_on_exit:
            note += f" (--retry-on-exit lists {','.join(map(str, spec.retry_on_exit))})"
        self.history.set_managed(record.job_id, state=ManagedState.FAILED, note=note)
        self._tell(
            EventKind.FAILED, record.job_id, run.status, run.node, f"job {record.job_id}: {note}"
        )
        return note

    def _follow(self, managed_id: str, run: Job, node: Node) -> None:
        """One follower per open run: it records the workers' rcs and settles the run, and
        asks "stuck?" while it runs."""
        task = self._followers.get(run.job_id)
        if task is not None and not task.done():
            return
        follower = self._follow_quietly(managed_id, run, node)
        self._followers[run.job_id] = asyncio.ensure_future(follower)

    async def _follow_quietly(self, managed_id: str, run: Job, node: Node) -> None:
        ended = {w.worker: "" for w in run.workers if w.pid}

        def on_end(worker: int, rc: int | None) -> None:
            ended[worker] = "ended, no rc" if rc is None else f"rc={rc}"

        watching = asyncio.ensure_future(self._watch_for_stuck(managed_id, run, node, ended))
        try:
            with contextlib.suppress(FleetError, OSError):
                await self.jobs.watch(run, node, on_end=on_end)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            self.monitors.pop(run.job_id, None)

    async def _watch_for_stuck(
        self, managed_id: str, run: Job, node: Node, ended: dict[int, str]
    ) -> None:
        """The log view's "stuck?" without a view: silence read off the local copies (which
        the follower appends to) and the chips' duty cycle; told once per stuck spell."""

        def told(finding: HangFinding) -> None:
            text = f"job {managed_id} on {run.node}: {finding.summary()}"
            self._tell(EventKind.STUCK, managed_id, JobStatus.RUNNING, run.node, text)

        hang = HangWatch(run, HangSettings(after_s=self.stuck_after_s))
        monitor = JobMonitor(run.job_id, self.history, hang=hang, on_stuck=told)
        self.monitors[run.job_id] = monitor
        chips = self.chips.watch(node, monitor.saw_metrics) if self.chips is not None else None
        sizes: dict[int, int] = {}
        try:
            while True:
                for worker, (size, mtime) in (await asyncio.to_thread(self._copies, run)).items():
                    if size != sizes.get(worker, 0):  # the follower appended: output, then
                        sizes[worker] = size
                        monitor.worker_output(worker, mtime)
                monitor.check(True, ended)
                await asyncio.sleep(self.poll_s)
        finally:
            if chips is not None:
                await chips.close()

    def _copies(self, run: Job) -> dict[int, tuple[int, float]]:
        """Each started worker's local copy: its size and when it last grew."""
        out = {}
        for w in run.workers:
            if w.pid:
                with contextlib.suppress(FileNotFoundError):
                    st = self.jobs.log_path(run.job_id, w.worker).stat()
                    out[w.worker] = (st.st_size, st.st_mtime)
        return out

    # ----- recovery ----------------------------------------------------------------------------
    async def _recover(self, record: ManagedRecord, spec: ManagedSpec, kind: str) -> None:
        """Converge on a READY node with the run of attempt `record.attempt` started.

        From wherever a previous try (ours, or a watcher that died) left it: a node not READY
        is deleted and waited out before any create (its quota must be free); a missing one
        is created, in the spec's zones in turn; then the setup steps, then the run.
        """
        run = self.history.get(record.current)
        assert run is not None
        recovery = record.attempt
        same_node = kind == EventKind.RETRIED
        if same_node:
            node = await self.fleet.get_node(run.zone, run.node)
        else:
            node = await self._fresh_node(spec, run)
            spec = self._adopted(spec, node)
            await self._set_up(spec, node, recovery=recovery)
        new = await self._start_run(spec, node, root=record.job_id, recovery=recovery)
        if new.status == JobStatus.FAILED:
            raise StepFailed(f"attempt {recovery + 1} did not start: {new.note}")
        self.history.set_managed(
            record.job_id,
            state=ManagedState.RUNNING,
            current=new.job_id,
            recoveries=recovery,
            note="",
        )
        text = (
            f"job {record.job_id} recovered on {node.name} in {node.zone}: attempt "
            f"{recovery + 1} is run {new.job_id}"
        )
        self._tell(EventKind.RECOVERED, record.job_id, ManagedState.RUNNING, node.name, text)

    async def _fresh_node(self, spec: ManagedSpec, run: Job) -> Node:
        """A READY node for the next attempt: the one there if READY (recreated by a try that
        did not finish, or started again), else the lost one deleted and a new one created."""
        node = await self._node_or_none(run.zone, run.node)
        while node is not None and node.state in ON_THE_WAY:  # the API says when it is done
            await asyncio.sleep(self.poll_s)
            node = await self._node_or_none(run.zone, run.node)
        if node is not None and node.state == "READY":
            _, failed = await self.lifecycle.check_ssh(node)
            if failed:
                raise StepFailed(f"{node.name} is READY but ssh fails: {'; '.join(failed)}")
            return node
        if node is not None and node.state in STOPPED_STATES:
            raise StepFailed(f"{node.name} is {node.state}; start it and the job runs again")
        if node is not None:
            await self._delete(node)
        return await self._create(spec, None, after=run.zone)

    async def _delete(self, node: Node) -> None:
        """Delete the lost node and wait until the API no longer lists it: only then is its
        quota free for the create that follows."""
        self.say(f"deleting {node.name} ({node.state}) so that its quota frees")
        if node.state != "DELETING":
            await self.lifecycle.change("delete", node)
        while await self._node_or_none(node.zone, node.name) is not None:
            await asyncio.sleep(self.poll_s)

    async def _create(
        self, spec: ManagedSpec, progress: ProgressSink | None, *, after: str = ""
    ) -> Node:
        """The spec's node, created and followed to READY with ssh answering on every worker;
        its zones in turn (the one it was lost in first) when a zone has no room."""
        zones = list(spec.node.zones)
        if after in zones:
            zones.remove(after)
            zones.insert(0, after)
        last: FleetError | None = None
        for zone in zones:
            try:
                outcome = await self.lifecycle.create(spec.node.request(zone), progress)
            except FleetError as exc:
                last = exc
                if exc.kind in {"quota", "stockout"} and zone != zones[-1]:
                    self.say(f"{spec.node.name}: no room in {zone} ({exc.reason}); next zone")
                    continue
                raise
            if outcome.ssh_failed:
                raise StepFailed(
                    f"{spec.node.name} is READY but ssh fails: {'; '.join(outcome.ssh_failed)}"
                )
            return outcome.node
        assert last is not None
        raise last

    async def _set_up(self, spec: ManagedSpec, node: Node, *, recovery: int) -> None:
        for step in spec.setup:
            job = await self._start(step, spec, node, recovery=recovery, root=None)
            if job is None:
                continue  # an upload: done when start returns
            rcs = await self.jobs.watch(job, node)
            done = self.history.get(job.job_id)
            if done is None or done.status != JobStatus.SUCCEEDED:
                raise StepFailed(
                    f"setup step {step.describe()} (job {job.job_id}) ended "
                    f"{done.status if done else 'unrecorded'} (rc {rcs})"
                )

    async def _start_run(self, spec: ManagedSpec, node: Node, *, root: str, recovery: int) -> Job:
        job = await self._start(spec.run, spec, node, recovery=recovery, root=root)
        if job is None:
            raise StepFailed("the run step is an upload; give a template that runs")
        return job

    async def _start(
        self, step: Step, spec: ManagedSpec, node: Node, *, recovery: int, root: str | None
    ) -> Job | None:
        """One step on the node: its plan, then its start (an upload returns None)."""
        env = {RECOVERY: str(recovery)}
        if step.template:
            plan = await self.launcher.plan_template(
                node, step.template, preset=step.preset, overrides=step.values,
                selection=spec.selection,
            )  # fmt: skip
            if plan.refused:
                why = "; ".join(c.message for c in plan.checks if c.level == "refuse")
                raise StepFailed(f"{step.describe()} refused by preflight: {why}")
            if plan.rendered.upload is not None:
                launched = await self.launcher.start(plan)
                failed = [o for o in launched.uploads if o.failed]
                if failed:
                    raise StepFailed(f"{step.describe()}: {failed[0].error}")
                return None
            return await self.jobs.launch(
                node,
                spec.selection,
                plan.rendered.shell(),
                kind=plan.kind,
                env={**plan.rendered.env, **env},
                params=plan.params,
                ship_runners=plan.rendered.ship_runners,
                attempt_of=root,
            )
        return await self.jobs.launch(
            node, spec.selection, step.command, kind="custom", env=env, attempt_of=root
        )

    async def _node_or_none(self, zone: str, name: str) -> Node | None:
        try:
            return await self.fleet.get_node(zone, name)
        except FleetError as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise

    def _tell(
        self, event: EventKind, job_id: str, status: JobStatus | ManagedState, node: str, text: str
    ) -> None:
        """To every sink and hook (the front ends show it through their sinks)."""
        self.notifier.tell_soon(JobEvent(event, job_id, status, node, text))
