"""A cleanup plan and its results, worker by worker: `probe`, `clean`, `launch` and `K`."""

from __future__ import annotations

from dataclasses import dataclass

from console.models import CleanupDone, CleanupPlan, describe_holders, describe_kill, describe_lock


@dataclass(frozen=True)
class Entry:
    """One line about one worker; `tone` says how the TUI colours it."""

    worker: int
    text: str
    tone: str  # unreachable | step | note | clean | done | not_done

    def line(self) -> str:
        return f"w{self.worker}: {self.text}"


def plan_entries(plan: CleanupPlan, *, say_clean: bool = True) -> list[Entry]:
    """Unreachable workers, then each worker's kills, lockfiles and notes, in that order."""
    out = [
        Entry(p.worker, f"unreachable: {p.error}", "unreachable")
        for p in plan.probes
        if p.report is None
    ]
    for wp in plan.plans:
        if wp.empty and not wp.notes:
            if say_clean:
                out.append(Entry(wp.worker, "clean, nothing to do", "clean"))
            continue
        out += [Entry(wp.worker, describe_kill(s), "step") for s in wp.kills]
        out += [Entry(wp.worker, describe_lock(s), "step") for s in wp.locks]
        out += [Entry(wp.worker, f"note: {n}", "note") for n in wp.notes]
    return out


def result_entries(done: CleanupDone) -> list[Entry]:
    out = []
    for r in done.results:
        extra = " (needs root)" if r.needs_root else ""
        word, tone = ("done", "done") if r.done else ("NOT DONE", "not_done")
        out.append(Entry(r.worker, f"{word}: {r.result}{extra}", tone))
    return out


def still_held(done: CleanupDone) -> list[str]:
    """A sentence for each cleaned worker whose TPU someone still holds afterwards."""
    name = done.node.name
    out = []
    for probe in done.after:
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
