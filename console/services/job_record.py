"""A job's record as a person reads it: `tpuconsole jobs show` prints it, the TUI's `d` shows it.

Plain lines, the command in full; results and diagnoses last.
"""

from __future__ import annotations

from console.models import Job


def job_record_lines(job: Job) -> list[str]:
    ended = f" → {job.ended_at.astimezone():%Y-%m-%d %H:%M:%S}" if job.ended_at else ""
    lines = [
        f"job {job.job_id}  {job.status}  {job.kind}  on {job.zone}/{job.node}",
        f"  time: {job.started_at.astimezone():%Y-%m-%d %H:%M:%S}{ended}",
    ]
    if job.managed is not None:
        m = job.managed
        lines.append(
            f"  managed: {m.state}, recoveries {m.recoveries} of at most "
            f"{m.spec.get('max_recoveries')}; attempts {', '.join(m.attempts)}"
            + (f" ({m.note})" if m.note else "")
        )
    if job.attempt_of:
        lines.append(f"  attempt of managed job {job.attempt_of}")
    if job.params:
        lines.append("  params: " + " ".join(f"{k}={v}" for k, v in job.params.items()))
    for w in job.workers:
        rc = "running" if w.rc is None and job.open else f"rc={w.rc}"
        lines.append(f"  w{w.worker}: pid {w.pid or '-'} {w.error or rc}")
    if job.note:
        lines.append(f"  note: {job.note}")
    lines.append("  command:")
    lines += [f"    {line}" for line in job.command.splitlines() or ["(empty)"]]
    summary = job.metrics.get("summary", "")
    lines.append(f"  results: {summary or 'none recorded'}")
    for d in job.diagnoses:
        where = f"w{d.worker}: " if d.worker is not None else ""
        lines += [
            f"  {where}{d.title}",
            f"    evidence: {d.evidence}",
            f"    remedy: {d.remedy}",
        ]
    return lines
