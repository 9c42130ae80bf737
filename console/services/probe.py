"""The TPU-lock probe on every worker, the cleanup plan made from it, and carrying it out.

The probe is remote/probe.py, fed to the worker's own python3 on stdin (no upload step); the
plan kills only processes the probe proved stale, and the worker re-checks each one before
every signal.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import shlex
from importlib import resources

from console.adapters.ssh_pool import SshTarget
from console.models import (
    CleanupDone,
    CleanupPlan,
    KillStep,
    Node,
    ProbeReport,
    RemoveLockStep,
    SshConfigError,
    SshError,
    StepResult,
    WorkerPlan,
    WorkerProbe,
    describe_kill,
    describe_lock,
    job_label,
    odd_lock_note,
)
from console.services.remote import RemoteService

GRACE_S = 10.0


@functools.cache
def probe_source() -> bytes:
    return resources.files("remote").joinpath("probe.py").read_bytes()


def probe_module() -> str:
    """The name the probe is kept under on a worker: this exact source's, so never stale."""
    return "tpuconsole_probe_" + hashlib.sha256(probe_source()).hexdigest()[:16]


def probe_command(mode_args: list[str]) -> str:
    """Run the probe (sent on stdin), through `sudo -n` when that works, and say which it was.

    The paths, and who we logged in as, are read before sudo, which would drop the environment
    and make us root: "ours" means the login user's processes, never root's. The first run on a
    worker keeps the source, compiled, under ~/.tpuconsole/probe (written as the login user, not
    root); later runs import it, saving the compile (milliseconds, 256 times on a pod). Where it
    cannot be kept the probe runs from stdin, as always.
    """
    args = shlex.join(mode_args)
    module = probe_module()
    tail = (
        f"{args} "
        '--lockfile "${TPUCONSOLE_LOCKFILE:-/tmp/libtpu_lockfile}" '
        '--devices "${TPUCONSOLE_DEVICES:-}" --jobs-dir "$HOME/.tpuconsole/jobs" --sudo "$N" '
        # A sandbox worker is a folder, not a VM: the probe looks at its processes only.
        '--sandbox-home "${TPUCONSOLE_SANDBOX:+$HOME}" --login-uid "$U"'
    )
    return (
        # bash knows its user without forking `id` (a fork and an exec, 256 at once on a pod).
        'if [ -n "${BASH_VERSION:-}" ]; then U=$EUID; else U=$(id -u); fi; '
        'if [ "$U" = 0 ]; then S=""; N="not needed (root)"; '
        'elif sudo -n true 2>/dev/null; then S="sudo -n"; N="used"; '
        'else S=""; N="unavailable"; fi; '
        # The system's python3 first: a version manager's shim costs ~100 ms to start.
        "P=python3; [ -x /usr/bin/python3 ] && P=/usr/bin/python3; "
        f'D="$HOME/.tpuconsole/probe"; F="$D/{module}.py"; T="$D/.{module}.$$"; '
        'if [ ! -s "$F" ] && mkdir -p "$D" 2>/dev/null; then '
        'if cat > "$T" 2>/dev/null && mv -f "$T" "$F"; then '
        # Through sudo the import may not write its .pyc (it would be root's): compile it now.
        '[ -z "$S" ] || "$P" -S -E -c '
        "'import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)' "
        '"$F" >/dev/null 2>&1; else rm -f "$T"; fi; fi; '
        'B=""; [ -z "$S" ] || B="-B"; '
        f'if [ -s "$F" ]; then exec $S "$P" -S -E $B -c '
        f"'import sys; sys.path.insert(0, sys.argv.pop(1)); from {module} import main; "
        f'main(sys.argv[1:])\' "$D" {tail}; fi; '
        f'exec $S "$P" -S -E - {tail}'
    )


def plan_for(report: ProbeReport, grace_s: float = GRACE_S) -> WorkerPlan:
    holders = {h.pid: h for h in report.holders}
    kills, notes = [], []
    for entry in report.lingering:
        holder = holders.get(entry.pid)
        if holder is None:  # a finished job's process holding nothing: still ours, still stale
            kills.append(
                KillStep(
                    entry.pid,
                    entry.start_ticks,
                    entry.cmdline,
                    report.login_user or report.user,
                    0.0,
                    (),
                    entry.why,
                    grace_s,
                )
            )
            continue
        if not entry.ours and not report.root:
            notes.append(
                f"pid {entry.pid} of user {holder.user} holds the TPU ({entry.why}); "
                "not ours and we are not root: not touched. Ask them, or `sudo kill "
                f"{entry.pid}` if you are sure."
            )
            continue
        if not entry.ours:
            notes.append(
                f"pid {entry.pid} belongs to user {holder.user}: not touched (the "
                "console only stops processes of the user it logs in as)."
            )
            continue
        kills.append(
            KillStep(
                holder.pid,
                holder.start_ticks,
                holder.cmdline,
                holder.user,
                holder.elapsed_s,
                holder.devices,
                entry.why,
                grace_s,
            )
        )
    killed = {k.pid for k in kills}
    holding = {h.pid for h in report.holders} | set(report.lock_holders)
    locks = []
    if report.lock_exists and not (report.foreign_lock or report.odd_lock) and holding <= killed:
        # Once the plan's kills are done nobody holds the TPU, so the file is stale; the worker
        # still takes the lock itself before it removes the file.
        why = (
            "no process holds its lock or a chip"
            if not holding
            else "its only holders are stopped first; re-checked then"
        )
        locks.append(RemoveLockStep(report.lockfile, why))
    if report.odd_lock:
        notes.append(odd_lock_note(report))
    if report.foreign_lock:
        notes.append(
            f"{report.lockfile} belongs to {report.lock_owner} and we may not open it: "
            f"a false 'TPU in use' for us. Needs root: `sudo rm {report.lockfile}` "
            "(sudo -n was " + report.sudo + ")."
        )
    if report.busy:
        notes.append(
            "busy: " + ", ".join(job_label(j) for j in report.busy) + " running; not touched."
        )
    if not report.root and report.unreadable_processes:
        notes.append(
            f"{report.unreadable_processes} processes of other users could not be "
            "inspected without root; holders among them are not shown."
        )
    return WorkerPlan(report.worker, tuple(kills), tuple(locks), tuple(notes))


def _step_json(step: KillStep | RemoveLockStep) -> dict:
    if isinstance(step, KillStep):
        return {
            "pid": step.pid,
            "start_ticks": step.start_ticks,
            "cmdline": step.cmdline,
            "grace_s": step.grace_s,
        }
    return {"path": step.path}


class ProbeService:
    def __init__(self, remote: RemoteService) -> None:
        self.remote = remote

    async def _run_probe(self, target: SshTarget, args: list[str]) -> dict:
        out: list[bytes] = []
        err: list[bytes] = []
        result = await self.remote.pool.run(
            target,
            probe_command(args),
            on_stdout=out.append,
            on_stderr=err.append,
            stdin=probe_source(),
        )
        text = b"".join(out).decode(errors="replace").strip()
        if result.exit_status != 0 or not text:
            detail = b"".join(err).decode(errors="replace").strip().splitlines()[-1:] or [""]
            if result.exit_status == 127:
                raise SshConfigError(
                    "python3 is missing on the worker.",
                    "Install python3 (any 3.8+) on the VM image.",
                )
            raise SshConfigError(f"the probe failed (exit {result.exit_status}): {detail[0]}")
        return json.loads(text.splitlines()[-1])

    async def probe(self, node: Node, selection: str = "all") -> list[WorkerProbe]:
        targets = await self.remote.targets(node, selection)

        async def one(target: SshTarget) -> WorkerProbe:
            try:
                raw = await self._run_probe(target, ["probe"])
            except (SshError, ValueError) as exc:
                return WorkerProbe(target.worker, error=str(exc))
            return WorkerProbe(target.worker, ProbeReport.from_json(target.worker, raw))

        return list(await asyncio.gather(*(one(t) for t in targets)))

    async def execute(
        self, node: Node, plans: list[WorkerPlan]
    ) -> tuple[list[StepResult], list[WorkerProbe]]:
        """Kills first, then lockfiles; the worker re-probes and reports what changed."""
        targets = {t.worker: t for t in await self.remote.targets(node, "all")}

        async def one(plan: WorkerPlan) -> tuple[list[StepResult], WorkerProbe]:
            target = targets[plan.worker]
            doc = {
                "kills": [_step_json(k) for k in plan.kills],
                "locks": [_step_json(lk) for lk in plan.locks],
            }
            try:
                raw = await self._run_probe(target, ["clean", json.dumps(doc)])
            except (SshError, ValueError) as exc:
                return (
                    [StepResult(plan.worker, "cleanup", False, str(exc))],
                    WorkerProbe(plan.worker, error=str(exc)),
                )
            steps: list[KillStep | RemoveLockStep] = [*plan.kills, *plan.locks]
            results = [
                StepResult(
                    plan.worker,
                    describe_kill(s) if isinstance(s, KillStep) else describe_lock(s),
                    bool(r.get("done")),
                    r.get("result", ""),
                    bool(r.get("needs_root")),
                )
                for s, r in zip(steps, raw.get("results", []), strict=False)
            ]
            after = WorkerProbe(plan.worker, ProbeReport.from_json(plan.worker, raw["after"]))
            return results, after

        done = await asyncio.gather(*(one(p) for p in plans if not p.empty))
        results = [r for rs, _ in done for r in rs]
        after = [a for _, a in done]
        return results, after

    async def plan_cleanup(self, node: Node, selection: str = "all") -> CleanupPlan:
        """Probe the chosen workers and plan what cleaning them would do: the one way to a
        cleanup plan, for `probe`, `clean`, `launch --clean-first` and the TUI's `K` and form."""
        probes = await self.probe(node, selection)
        plans = [plan_for(p.report) for p in probes if p.report is not None]
        return CleanupPlan(node, tuple(probes), tuple(plans))

    async def clean(self, plan: CleanupPlan) -> CleanupDone:
        """Carry out a plan's steps (only those) and say how each worker is afterwards."""
        results, after = await self.execute(plan.node, list(plan.todo))
        return CleanupDone(plan.node, tuple(results), tuple(after), plan.probes)
