"""A job's lines read back from `[jobs] log_bucket` once its VM is gone (deleted, preempted, or
created again under the same name), so `logs` and the log view show them instead of failing.

The workers copy their whole log to `<bucket>/<job-id>/w<N>.log` as they go (services/jobs.py);
the local copy is an exact prefix of the same log, so what the bucket holds beyond it is
appended and the copy stays a prefix. On Google Cloud the object is read with `gcloud storage
cat -r START-` (the byte range from the local copy's end); the sandbox's stand-in for a bucket is
a local folder, read as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from console.models import FleetError, Job, JobStatus, Node
from console.services.fleet import FleetService
from console.services.jobs import JobService, bucket_log

GONE_STATES = frozenset({"PREEMPTED", "TERMINATED", "DELETING"})
READ_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class BucketRead:
    """What a read-back found: the workers whose copies grew, and those the bucket lacks."""

    bucket: str
    read: tuple[int, ...]  # workers whose bucket copy was read (grown or already whole)
    added_bytes: int
    missing: tuple[tuple[int, str], ...]  # (worker, why) with nothing read

    def line(self, why_gone: str) -> str:
        """The one line that says where the lines shown came from."""
        took = ", ".join(f"w{w}" for w in self.read) or "no worker"
        where = self.bucket
        if not where.startswith("gs://"):
            where += ", the sandbox's stand-in for a bucket"
        text = f"{why_gone.rstrip('.')}; lines read from the bucket copy in {where} ({took}"
        text += f", {self.added_bytes:,} bytes more than the local copy)"
        if self.missing:
            text += "; not there: " + "; ".join(f"w{w} {why}" for w, why in self.missing)
        return text + "."


def vm_gone(job: Job, node: Node | None) -> str:
    """Why the VM the job ran on is no more, or "" if it may still be there: the API has no
    such node, it is preempted or going, or the node of that name was created after the job
    started (the one the job ran on was deleted and created again)."""
    if node is None:
        return f"{job.node} no longer exists"
    if node.state in GONE_STATES:
        return f"{job.node} is {node.state}"
    if node.create_time is not None and node.create_time > job.started_at:
        return f"{job.node} was created again after job {job.job_id} started"
    return ""


async def node_or_none(fleet: FleetService, job: Job) -> Node | None:
    try:
        return await fleet.get_node(job.zone, job.node)
    except FleetError as exc:
        if exc.code == "NOT_FOUND":
            return None
        raise


async def read_back(
    jobs: JobService, job: Job, why_gone: str, workers: set[int] | None = None
) -> BucketRead:
    """The job ended with its VM (recorded `lost` if it was open): its copies completed."""
    current = await asyncio.to_thread(jobs.history.get, job.job_id)
    if current is not None and current.open:
        await asyncio.to_thread(jobs.history.set_status, job.job_id, JobStatus.LOST, why_gone)
    return await restore(jobs, job, workers)


async def restore(jobs: JobService, job: Job, workers: set[int] | None = None) -> BucketRead:
    """Append to each worker's local copy what its bucket copy holds beyond it."""
    bucket = jobs.log_bucket
    wanted = [w for w in job.workers if w.pid and (workers is None or w.worker in workers)]
    read: list[int] = []
    missing: list[tuple[int, str]] = []
    added = 0
    for w in wanted:
        local = jobs.log_path(job.job_id, w.worker)
        where = bucket_log(bucket, job.job_id, w.worker)
        start = local.stat().st_size if local.exists() else 0
        try:
            extra = await _read_from(where, start)
        except FileNotFoundError:
            missing.append((w.worker, "has no copy"))
            continue
        except OSError as exc:
            missing.append((w.worker, f"could not be read ({exc})"))
            continue
        if extra and not await asyncio.to_thread(_append, local, extra):
            missing.append((w.worker, "is being written by a follower"))
            continue
        added += len(extra)
        read.append(w.worker)
        size = start + len(extra)
        # The copy is the log's prefix up to here: a later follower starts from its end.
        await asyncio.to_thread(jobs.history.set_worker, job.job_id, w.worker, log_offset=size)
    return BucketRead(bucket, tuple(read), added, tuple(missing))


async def _read_from(where: str, start: int) -> bytes:
    if not where.startswith("gs://"):
        return await asyncio.to_thread(_read_file, Path(where), start)
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise OSError(f"gcloud is not installed to read {where}")
    # A range starting at or past the end outputs nothing (gcloud storage cat's reference).
    proc = await asyncio.create_subprocess_exec(
        gcloud, "storage", "cat", "-r", f"{start}-", where,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), READ_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise OSError(f"gcloud storage cat took over {READ_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        said = err.decode(errors="replace").strip().splitlines()
        # gcloud says "The following URLs matched no objects or files" for a missing object.
        if any("matched no objects" in line or "404" in line for line in said):
            raise FileNotFoundError(where)
        raise OSError(said[-1] if said else f"gcloud storage cat exited {proc.returncode}")
    return out


def _read_file(path: Path, start: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(start)
        return fh.read()


def _append(local: Path, data: bytes) -> bool:
    """Under the copy's own lock (log_stream.LocalCopy's flock): False while a follower writes."""
    local.parent.mkdir(parents=True, exist_ok=True)
    with local.open("ab") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        with contextlib.suppress(OSError):
            fh.write(data)
            fh.flush()
            return True
    return False
