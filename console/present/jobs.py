"""Jobs as text and JSON: `jobs`, `jobs show`, `diagnose`.

`jobs --json` and `jobs show --json` print one object per job (JOB_JSON_KEYS, in that order):
job_id, status (launching|running|succeeded|failed|killed|lost), kind (the template or
"custom"), params, node, zone, command, env, started_at and ended_at (ISO 8601, ended_at null
while open), note, workers ([{worker, pid, rc, error}]), metrics (JobMetrics.as_json()),
diagnoses ([{key, title, evidence, cause, remedy, worker}]).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from console.models import Job
from console.services.diagnosis import Diagnosis

JOB_JSON_KEYS = (
    "job_id", "status", "kind", "params", "node", "zone", "command", "env", "started_at",
    "ended_at", "note", "workers", "metrics", "diagnoses",
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
        "diagnoses": [dict(d) for d in job.diagnoses],
    }


def job_row(job: Job) -> str:
    """One line of `tpuconsole jobs`: id, status, start, where, pids, the command."""
    pids = " ".join(f"w{w.worker}:{w.pid or '-'}" for w in job.workers)
    return (
        f"{job.job_id:<12} {job.status:<8} {job.started_at:%Y-%m-%d %H:%M} "
        f"{job.zone}/{job.node}  {pids}  {job.short_command(80)}"
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
    return {"diagnoses": [dataclasses.asdict(d) for d in found], "summary": summary}
