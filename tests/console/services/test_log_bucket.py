"""`[jobs] log_bucket`: the workers copy their logs as they go, so lines written while no console
follows survive the VM. The sandbox stands a local folder in for the gs:// bucket."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from console.adapters.history_db import HistoryStore
from console.models import Job, JobWorker, Node
from console.sandbox.runtime import Sandbox
from console.services import log_bucket
from console.services.jobs import JobService
from console.services.log_bucket import BucketRead, vm_gone
from console.services.remote import RemoteService
from tests.console.services.test_managed import eventually

ZONE = "us-central2-b"


async def test_the_log_copy_outlives_the_deleted_vm_with_lines_no_console_followed(
    sandbox: Sandbox, remote: RemoteService, tmp_path: Path
) -> None:
    bucket = tmp_path / "bucket-stand-in"
    history = HistoryStore(tmp_path / "history.db")
    jobs = JobService(remote, history, tmp_path / "home", log_bucket=str(bucket))
    try:
        node = await remote.fleet.find_node("demo-v4-16")
        job = await jobs.launch(node, "all", 'echo "early from $(basename $HOME)"; sleep 600')
        copies = [bucket / job.job_id / f"w{w}.log" for w in (0, 1)]
        # Nobody follows the job: the workers copy on their own.
        await eventually(lambda: all(c.exists() and "early" in c.read_text() for c in copies), 60)
        sandbox.fleet.delete(ZONE, "demo-v4-16")
        await eventually(
            lambda: (
                not list(sandbox.fleet.list(ZONE))
                or all(n.name != "demo-v4-16" for n in sandbox.fleet.list(ZONE))
            ),
            60,
        )
        assert [c.read_text() for c in copies] == ["early from w0\n", "early from w1\n"]
    finally:
        history.close()


async def test_a_job_that_ends_leaves_its_whole_log_in_the_bucket(
    remote: RemoteService, tmp_path: Path
) -> None:
    bucket = tmp_path / "bucket-stand-in"
    history = HistoryStore(tmp_path / "history.db")
    jobs = JobService(remote, history, tmp_path / "home", log_bucket=str(bucket))
    try:
        node = await remote.fleet.find_node("demo-v4-8")
        job = await jobs.launch(node, "all", "seq 1 3; sleep 0.5; echo last")
        await jobs.follow(job, node, lambda w, t: None)
        copy = bucket / job.job_id / "w0.log"
        await eventually(lambda: copy.exists() and copy.read_text().endswith("last\n"), 60)
        assert copy.read_text() == "1\n2\n3\nlast\n"
    finally:
        history.close()


# ----- reading the copies back (services/log_bucket.py) ---------------------------------------

# A stand-in for `gcloud storage cat -r START- gs://…`, answering as its reference says
# (cloud.google.com/sdk/gcloud/reference/storage/cat): the bytes from START to the end, nothing
# when START is past it, and for a missing object "ERROR: (gcloud.storage.cat) The following URLs
# matched no objects or files:" with exit 1. gs://B/K is read from $FAKE_GCS/B/K.
FAKE_GCLOUD = """#!/bin/sh
[ "$1 $2 $3" = "storage cat -r" ] || { echo "unexpected: $*" >&2; exit 2; }
start="${4%-}"; path="$FAKE_GCS/${5#gs://}"
if [ ! -f "$path" ]; then
  echo "ERROR: (gcloud.storage.cat) The following URLs matched no objects or files:" >&2
  echo "-$5" >&2; exit 1
fi
tail -c +"$((start + 1))" "$path"
"""


def _job(job_id: str, workers: int, started: datetime) -> Job:
    return Job(
        job_id, "demo-v4-16", ZONE, "echo", started,
        workers=tuple(JobWorker(w, pid=100 + w) for w in range(workers)), status="running",
    )  # fmt: skip


def test_a_vm_is_gone_when_missing_preempted_or_created_again_after_the_job_started() -> None:
    started = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    job = _job("3-abc", 1, started)
    node = Node("demo-v4-16", ZONE, "p", "v4-16", "READY", create_time=started - timedelta(hours=1))
    assert vm_gone(job, node) == ""
    assert vm_gone(job, None) == "demo-v4-16 no longer exists"
    assert vm_gone(job, replace(node, state="PREEMPTED")) == "demo-v4-16 is PREEMPTED"
    again = replace(node, create_time=started + timedelta(minutes=5))
    assert vm_gone(job, again) == "demo-v4-16 was created again after job 3-abc started"


async def _restored(tmp_path: Path, bucket: str, job: Job) -> tuple[JobService, BucketRead]:
    history = HistoryStore(tmp_path / "history.db")
    history.record_launch(job)
    jobs = JobService(None, history, tmp_path / "home", log_bucket=bucket)  # type: ignore[arg-type]
    local = jobs.log_path(job.job_id, 0)
    local.parent.mkdir(parents=True)
    local.write_bytes(b"line 1\nline 2\n")  # what a follower fetched before the VM went
    try:
        read = await log_bucket.read_back(jobs, job, "demo-v4-16 no longer exists")
        assert history.get(job.job_id).status == "lost"
        assert history.get(job.job_id).workers[0].log_offset == local.stat().st_size
    finally:
        history.close()
    return jobs, read


async def test_the_local_copy_is_completed_from_the_stand_in_folder_and_a_missing_copy_said(
    tmp_path: Path,
) -> None:
    bucket = tmp_path / "bucket-stand-in"
    job = _job("4-def", 2, datetime.now(UTC))
    (bucket / job.job_id).mkdir(parents=True)
    (bucket / job.job_id / "w0.log").write_bytes(b"line 1\nline 2\nline 3 (after)\n")
    jobs, read = await _restored(tmp_path, str(bucket), job)
    assert jobs.log_path(job.job_id, 0).read_bytes() == b"line 1\nline 2\nline 3 (after)\n"
    assert read.read == (0,) and read.added_bytes == len(b"line 3 (after)\n")
    assert read.missing == ((1, "has no copy"),)
    line = read.line("demo-v4-16 no longer exists")
    assert line.startswith(
        f"demo-v4-16 no longer exists; lines read from the bucket copy in {bucket}"
    )
    assert "the sandbox's stand-in for a bucket" in line and "not there: w1 has no copy" in line


async def test_a_gs_bucket_is_read_from_the_local_copy_s_end_with_gcloud_storage_cat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    gcloud = tools / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCS", str(tmp_path / "gcs"))
    job = _job("5-aaa", 2, datetime.now(UTC))
    objects = tmp_path / "gcs" / "logs-bucket" / "runs" / job.job_id
    objects.mkdir(parents=True)
    (objects / "w0.log").write_bytes(b"line 1\nline 2\nline 3\n")
    jobs, read = await _restored(tmp_path, "gs://logs-bucket/runs", job)
    assert jobs.log_path(job.job_id, 0).read_bytes() == b"line 1\nline 2\nline 3\n"
    assert read.read == (0,) and read.added_bytes == len(b"line 3\n")
    assert read.missing == ((1, "has no copy"),)  # gcloud's "matched no objects"
    assert "in gs://logs-bucket/runs (w0, 7 bytes more" in read.line("gone")
