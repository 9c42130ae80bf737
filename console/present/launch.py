"""A launch plan as text: preflight's checks and the exact command (`launch`, the form)."""

from __future__ import annotations

from collections.abc import Sequence

from console.models import Check, Launched, LaunchPlan, UploadOutcome


def check_line(check: Check) -> str:
    return f"{check.level.upper()}: {check.message}" + (
        f" — {check.remedy}" if check.remedy else ""
    )


def plan_lines(plan: LaunchPlan) -> list[str]:
    """The checks, then `command: [ENV=…]` and the shell text indented under it."""
    out = [check_line(c) for c in plan.checks]
    exports = " ".join(f"{k}={v}" for k, v in plan.rendered.env.items())
    out.append("command:" + (f" [{exports}]" if exports else ""))
    out += [f"  {line}" for line in plan.rendered.shell().splitlines()]
    return out


def started_line(launched: Launched) -> str:
    """`job 3-ab12 running on NODE: w0:pid 123 w1:<error>`."""
    job = launched.job
    assert job is not None
    return f"job {job.job_id} {job.status} on {launched.plan.node.name}: " + " ".join(
        f"w{w.worker}:pid {w.pid}" if w.pid else f"w{w.worker}:{w.error}" for w in job.workers
    )


def not_started(launched: Launched) -> str:
    job = launched.job
    assert job is not None
    return f"Job {job.job_id} did not start: " + "; ".join(
        f"w{w.worker}: {w.error}" for w in job.workers if w.error
    )


def upload_lines(
    local: str, remote_dir: str, outcomes: Sequence[UploadOutcome]
) -> list[tuple[str, bool]]:
    """(line, failed): a `local -> remote` heading, then one line per worker."""
    return [(f"{local} -> {remote_dir}", False)] + [(o.describe(), o.failed) for o in outcomes]
