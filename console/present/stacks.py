"""A job's stacks as text: the verdict, the groups side by side, then every worker in full.

`tpuconsole stacks JOB` prints these lines and the stacks screen shows the same, so the worker
that differs is pointed at in the same words in both. Frames are innermost first, as
faulthandler and py-spy print them. No text from a job is interpreted: function names and paths
are shown as they came.
"""

from __future__ import annotations

from typing import Any

from console.models import Frame, StackGroup, StacksReport

COLUMN_WIDTH = 48
DEPTH = 12  # frames shown per group side by side (every frame in the per-worker part)


def _names(workers: tuple[int, ...]) -> str:
    return ", ".join(f"w{w}" for w in workers)


def group_title(report: StacksReport, group: StackGroup) -> str:
    differs = any(w in report.differing for w in group.workers)
    mark = "◀ DIFFERS " if differs else ""
    where = " (at a sync point)" if group.at_sync_point else ""
    count = len(group.workers)
    return f"{mark}{_names(group.workers)}: {count} worker{'s' if count != 1 else ''}{where}"


def _frame_text(frame: Frame) -> str:
    return f"{frame.function}  {frame.path.rsplit('/', 1)[-1]}:{frame.line}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def side_by_side(report: StacksReport, width: int = COLUMN_WIDTH) -> list[str]:
    """The groups as columns, innermost frame on top: where each group of workers is."""
    groups = list(report.groups)
    if not groups:
        return []
    columns = []
    for group in groups:
        cells = [group_title(report, group), "─" * min(width, 40)]
        cells += [_frame_text(f) for f in group.frames[:DEPTH]]
        if len(group.frames) > DEPTH:
            cells.append(f"… {len(group.frames) - DEPTH} more frames")
        columns.append([_fit(c, width) for c in cells])
    height = max(len(c) for c in columns)
    return [
        " │ ".join(col[i].ljust(width) if i < len(col) else " " * width for col in columns).rstrip()
        for i in range(height)
    ]


def report_lines(report: StacksReport) -> list[str]:
    """The whole report: verdict, groups side by side, workers without stacks, each worker."""
    when = report.taken_at.astimezone().strftime("%H:%M:%S")
    lines = [f"job {report.job_id} on {report.node.rsplit('/', 1)[-1]} · stacks at {when}", ""]
    lines.append(report.verdict)
    if report.differing:
        lines.append(
            f"Look at {_names(report.differing)} first: the rank that is elsewhere is usually "
            "the cause."
        )
    lines.append("")
    lines += side_by_side(report)
    for worker in report.workers:
        lines.append("")
        mark = "  ◀ differs" if worker.worker in report.differing else ""
        lines.append(f"── w{worker.worker}{mark}")
        if worker.error:
            lines.append(f"  could not be asked: {worker.error}")
        if worker.note:
            lines.append(f"  {worker.note}")
        for process in worker.processes:
            lines.append(f"  pid {process.pid} ({process.method}): {_fit(process.command, 80)}")
            if process.note:
                lines.append(f"    {process.note}")
            for thread in process.threads:
                tags = [t for t, on in (("main", thread.main), ("current", thread.current)) if on]
                tag = f" [{', '.join(tags)}]" if tags else ""
                state = f" ({thread.state})" if thread.state else ""
                lines.append(f"    thread {thread.name}{tag}{state}")
                lines += [f"      {f}" for f in thread.frames]
    return lines


def report_as_json(report: StacksReport) -> dict[str, Any]:
    """`stacks --json`: the verdict, the groups and every worker's threads."""

    def frames(fs: tuple[Frame, ...]) -> list[dict[str, Any]]:
        return [{"function": f.function, "path": f.path, "line": f.line} for f in fs]

    return {
        "job_id": report.job_id,
        "node": report.node,
        "taken_at": report.taken_at.isoformat(),
        "verdict": report.verdict,
        "differing": list(report.differing),
        "groups": [
            {
                "workers": list(g.workers),
                "at_sync_point": g.at_sync_point,
                "frames": frames(g.frames),
            }
            for g in report.groups
        ],
        "workers": [
            {
                "worker": w.worker,
                "error": w.error,
                "note": w.note,
                "processes": [
                    {
                        "pid": p.pid,
                        "command": p.command,
                        "method": p.method,
                        "note": p.note,
                        "threads": [
                            {
                                "name": t.name,
                                "main": t.main,
                                "current": t.current,
                                "state": t.state,
                                "frames": frames(t.frames),
                            }
                            for t in p.threads
                        ],
                    }
                    for p in w.processes
                ],
            }
            for w in report.workers
        ],
    }
