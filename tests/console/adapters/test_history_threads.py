"""The history from many threads at once, as 256 workers' ends and the log view's reads are:
every write lands, no transaction runs inside another, the process does not crash."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from console.adapters.history_db import HistoryStore
from console.models import Diagnosis, Job, JobWorker

WORKERS = 64


def _job(n: int) -> Job:
    return Job(
        f"{n}-{n:06x}",
        "demo-v4-2048",
        "us-central2-b",
        "echo hi",
        datetime.now(UTC),
        workers=tuple(JobWorker(w) for w in range(WORKERS)),
    )


def test_launches_worker_ends_and_findings_from_many_threads_all_land(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "history.db")
    jobs = [_job(n) for n in range(1, 17)]

    def one_job(job: Job) -> None:
        store.record_launch(job)  # a transaction (BEGIN IMMEDIATE) of its own
        for w in range(WORKERS):
            store.set_worker(job.job_id, w, pid=1000 + w, rc=w % 3, log_offset=w * 10)
        finding = Diagnosis("node_left", "The VM left READY", "went DELETING", "", "")
        store.set_results(job.job_id, {"steps": 1}, [finding])

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            for done in [pool.submit(one_job, job) for job in jobs]:
                done.result()  # a transaction begun inside another's raises here
        for job in jobs:
            got = store.get(job.job_id)
            assert got is not None and [d.key for d in got.diagnoses] == ["node_left"]
            assert [(w.pid, w.rc, w.log_offset) for w in got.workers] == [
                (1000 + w, w % 3, w * 10) for w in range(WORKERS)
            ]
    finally:
        store.close()
