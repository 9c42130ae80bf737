"""Jobs as text and JSON: `jobs`, `jobs show`, `diagnose`.

`jobs --json` and `jobs show --json` print one object per job (JOB_JSON_KEYS, in that order):
job_id, status (launching|running|succeeded|failed|killed|lost), kind (the template or
"custom"), params, node, zone, command, env, started_at and ended_at (ISO 8601, ended_at null
while open), note, workers ([{worker, pid, rc, error}]), metrics (JobMetrics.as_json()),
diagnoses ([{key, title, evidence, cause, remedy, worker}]), recoveries (how many times a
managed job was brought back: 0 for any other), attempt_of (a managed job's later attempt: that
job's id, else ""), managed (null, or {state, current, attempts, max_recoveries, note} for the
first run of a managed job, whose id is the managed job's).
"""

from __future__ import annotations

from typing import Any

from console.models import Diagnosis, Job

JOB_JSON_KEYS = (
    "job_id", "status", "kind", "params", "node", "zone", "command", "env", "started_at",
    "ended_at", "note", "workers", "metrics", "diagnoses", "recoveries", "attempt_of", "managed",
)  # fmt: skip


def job_json(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "status": str(job.status),
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
        "diagnoses": [d.as_dict() for d in job.diagnoses],
        "recoveries": job.recoveries,
        "attempt_of": job.attempt_of,
        "managed": None
        if job.managed is None
        else {
            "state": str(job.managed.state),
            "current": job.managed.current,
            "attempts": list(job.managed.attempts),
            "max_recoveries": job.managed.spec.get("max_recoveries"),
            "note": job.managed.note,
        },
    }


def shown_status(job: Job) -> str:
    """A managed job shows where it stands (its first run may be long lost); others their own."""
    return str(job.managed.state) if job.managed is not None else str(job.status)


def managed_line(job: Job) -> str:
    m = job.managed
    where = f"{job.zone}/{job.node}"
    if m is None:
        return f"started job {job.job_id} on {where}"
    budget = m.spec.get("max_recoveries")
    return (
        f"started managed job {job.job_id} on {where} (recoveries {m.recoveries} of at most "
        f"{budget}; attempt run {m.current})"
    )


def job_row(job: Job) -> str:
    """One line of `tpuconsole jobs`: id, status, start, where, pids, the command."""
    pids = " ".join(f"w{w.worker}:{w.pid or '-'}" for w in job.workers)
    mark = f" ↻{job.recoveries}" if job.managed is not None else ""
    mark += f" (attempt of {job.attempt_of})" if job.attempt_of else ""
    return (
        f"{job.job_id:<12} {shown_status(job):<8} {job.started_at:%Y-%m-%d %H:%M} "
        f"{job.zone}/{job.node}  {pids}{mark}  {job.short_command(80)}"
    )


def finding_lines(d: Diagnosis) -> list[str]:
    """A known failure found in a log: what, the line that shows it, why, and what to do."""
    where = f"w{d.worker}: " if d.worker is not None else ""
    return [
        f"{where}{d.title}",
        f"  evidence: {d.evidence}",
        f"  cause: {d.cause}",
        f"  remedy: {d.remedy}",
    ]


def findings_json(found: list[Diagnosis], summary: str) -> dict[str, Any]:
    """`diagnose --json`: {"diagnoses": [{key, title, evidence, cause, remedy, worker}],
    "summary": the results line (tokens/s, rewards…) or ""}."""
    return {"diagnoses": [d.as_dict() for d in found], "summary": summary}
