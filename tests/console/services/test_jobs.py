"""Detached jobs on sandbox workers: recorded first, surviving drops, logs resumed by offset."""

from __future__ import annotations

import asyncio
from pathlib import Path

from console.adapters.history_db import HistoryStore
from console.models import StopResult, WorkerStop
from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from console.services.remote import RemoteService
from tests.conftest import worker_output

ZONE = "us-central2-b"


async def _remote_text(remote: RemoteService, node, command: str, worker: int = 0) -> str:
    return (await worker_output(remote, node, command, worker))[1]


async def test_launch_records_the_job_and_runs_it_detached_on_every_worker(
    jobs: JobService, tmp_path: Path
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-16")
    job = await jobs.launch(
        node,
        "all",
        'echo "hello from $(basename $HOME)"',
        kind="custom",
        env={"GREETING": "it's me"},
    )
    assert job.status == "running"
    assert [w.worker for w in job.workers] == [0, 1] and all(w.pid > 0 for w in job.workers)
    stored = HistoryStore(tmp_path / "history.db").get(job.job_id.split("-")[0])
    assert stored is not None and stored.job_id == job.job_id
    assert [w.pid for w in stored.workers] == [w.pid for w in job.workers]
    cmd = await _remote_text(jobs.remote, node, f"cat .tpuconsole/jobs/{job.job_id}/cmd")
    assert cmd.splitlines() == [
        "export GREETING='it'\"'\"'s me'",
        'echo "hello from $(basename $HOME)"',
    ]
    lines: list[tuple[int, str]] = []
    rcs = await jobs.follow(job, node, lambda w, text: lines.append((w, text)))
    assert rcs == {0: 0, 1: 0}
    assert sorted(lines) == [(0, "hello from w0"), (1, "hello from w1")]
    assert jobs.log_path(job.job_id, 1).read_text() == "hello from w1\n"
    assert jobs.get(job.job_id).status == "succeeded"


async def test_exit_codes_and_signals_are_recorded_per_worker(jobs: JobService) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-16")
    job = await jobs.launch(
        node, "all", 'if [ "$(basename $HOME)" = w0 ]; then exit 3; else kill -TERM $$; fi'
    )
    rcs = await jobs.follow(job, node, lambda w, t: None)
    assert rcs == {0: 3, 1: 143}
    stored = jobs.get(job.job_id)
    assert stored.status == "failed" and [w.rc for w in stored.workers] == [3, 143]


async def test_a_job_outlives_the_console_connection(jobs: JobService, sandbox: Sandbox) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "sleep 30")
    await jobs.remote.pool.close()  # the console goes away
    sandbox.set_worker_down(ZONE, "demo-v4-8", 0, True)
    sandbox.set_worker_down(ZONE, "demo-v4-8", 0, False)
    pid = job.workers[0].pid
    alive = await _remote_text(jobs.remote, node, f"kill -0 {pid} && echo alive; kill {pid}")
    assert alive == "alive"


async def test_twenty_thousand_lines_survive_repeated_cuts_exactly_once(
    jobs: JobService, sandbox: Sandbox
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    # Paced so the stream is still running when it is cut: a pause every 1000 lines.
    job = await jobs.launch(
        node,
        "all",
        'for i in $(seq 1 20000); do echo "line $i"; '
        "if [ $((i % 1000)) = 0 ]; then sleep 0.1; fi; done",
    )
    received: list[str] = []
    cut_at = [2500, 7000, 12500, 16000]
    cut_due = asyncio.Event()

    def on_line(worker: int, text: str) -> None:
        received.append(text)
        if cut_at and len(received) >= cut_at[0]:
            cut_at.pop(0)
            cut_due.set()

    async def cutter() -> int:
        cuts = 0
        while True:
            await cut_due.wait()
            cut_due.clear()
            await asyncio.to_thread(sandbox.set_worker_down, ZONE, "demo-v4-8", 0, True)
            await asyncio.to_thread(sandbox.set_worker_down, ZONE, "demo-v4-8", 0, False)
            cuts += 1

    cutting = asyncio.create_task(cutter())
    streams = await jobs.streams(job, node)
    try:
        rc = await streams[0].follow(on_line)
    finally:
        cutting.cancel()
    assert rc == 0
    local = streams[0].local_path.read_text().splitlines()
    assert local == [f"line {i}" for i in range(1, 20001)]
    assert received == local
    assert streams[0].reconnects >= 3


async def test_logs_resume_from_the_local_copy_after_a_console_restart(
    jobs: JobService,
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "seq 1 50")
    await jobs.follow(job, node, lambda w, t: None)
    path = jobs.log_path(job.job_id, 0)
    path.write_text("".join(f"{i}\n" for i in range(1, 21)))  # only 20 lines made it last time
    seen: list[str] = []
    await jobs.follow(jobs.get(job.job_id), node, lambda w, t: seen.append(t), follow=False)
    assert seen == [str(i) for i in range(21, 51)]
    assert path.read_text().split() == [str(i) for i in range(1, 51)]


async def test_stop_ends_the_whole_session_on_every_worker_and_records_killed(
    jobs: JobService,
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-16")
    # A job whose child ignores SIGTERM: the grace period runs out and SIGKILL follows.
    job = await jobs.launch(node, "all", "(trap '' TERM; sleep 60) & sleep 60")
    outcome = await jobs.stop(job, node, grace_s=0.5)
    assert outcome == {0: WorkerStop(StopResult.KILLED), 1: WorkerStop(StopResult.KILLED)}
    assert jobs.get(job.job_id).status == "killed"
    for w in job.workers:
        alive = await _remote_text(
            jobs.remote, node, f"ps -o stat= --sid {w.pid} | grep -v '^Z' | wc -l", worker=w.worker
        )
        assert alive.strip() == "0"


async def test_rerun_launches_the_same_command_and_environment(jobs: JobService) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-16")
    first = await jobs.launch(
        node, "1", 'echo "$GREETING"', kind="custom", env={"GREETING": "again"}
    )
    await jobs.follow(first, node, lambda w, t: None)
    again = await jobs.rerun(jobs.get(first.job_id), node)
    assert again.job_id != first.job_id and [w.worker for w in again.workers] == [1]
    lines: list[str] = []
    await jobs.follow(again, node, lambda w, t: lines.append(t))
    assert lines == ["again"] and jobs.get(again.job_id).env == {"GREETING": "again"}


def test_history_migrates_an_old_file_keeping_its_rows(tmp_path: Path) -> None:
    import sqlite3

    from console.adapters.history_db import MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])  # a file from before the env column existed
    db.execute(
        "INSERT INTO jobs (job_id, node, zone, kind, command, started_at, status) "
        "VALUES ('1-aaaaaa', 'n', 'z', 'custom', 'true', '2026-11-23T00:00:00+00:00', "
        "'succeeded')"
    )
    db.commit()
    db.close()
    store = HistoryStore(path)
    assert store.schema_version == len(MIGRATIONS)
    job = store.get("1")
    assert job is not None and job.status == "succeeded" and job.env == {}
    assert job.params == {} and job.metrics == {} and job.diagnoses == ()
    store.close()


def test_a_job_that_was_starting_under_schema_two_is_launching_now(tmp_path: Path) -> None:
    import sqlite3

    from console.adapters.history_db import MIGRATIONS

    path = tmp_path / "v2.db"
    db = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        db.executescript(f"{script}; PRAGMA user_version = {number};")
    db.execute(
        "INSERT INTO jobs (job_id, node, zone, kind, command, started_at, status) "
        "VALUES ('4-bbbbbb', 'n', 'z', 'grpo', 'x', '2026-11-23T00:00:00+00:00', 'starting')"
    )
    db.commit()
    db.close()
    store = HistoryStore(path)
    job = store.get("4")
    assert job is not None and job.status == "launching" and job.open
    assert [j.job_id for j in store.running_jobs_on("z", "n")] == ["4-bbbbbb"]
    store.close()


async def test_the_record_holds_parameters_results_and_diagnoses_once_the_job_ends(
    jobs: JobService, tmp_path: Path
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-16")
    script = (
        'w=$(basename $HOME); echo "Train step 1 training loss: 0.5"; '
        'echo "Train step 2 training loss: 0.25"; '
        '[ "$w" = w1 ] && echo "RuntimeError: Not enough memory. Please try to increase '
        '--mem-fraction-static." && exit 1; echo "DONE: steps=2 elapsed_sec=1.5"'
    )
    job = await jobs.launch(node, "all", script, kind="grpo", params={"steps": 2, "model": "toy"})
    await jobs.follow(job, node, lambda w, t: None)
    # A console started afterwards reads it all from the file.
    stored = HistoryStore(tmp_path / "history.db").get(job.job_id)
    assert stored is not None and stored.status == "failed" and stored.ended_at is not None
    assert stored.kind == "grpo" and stored.params == {"steps": 2, "model": "toy"}
    assert stored.metrics["losses"] == {"0": [[1, 0.5], [2, 0.25]], "1": [[1, 0.5], [2, 0.25]]}
    assert stored.metrics["done"] == {"0": "DONE: steps=2 elapsed_sec=1.5"}
    assert [(d.key, d.worker) for d in stored.diagnoses] == [("hbm_oom", 1)]
    assert "mem-fraction-static" in stored.diagnoses[0].remedy


async def test_a_process_that_sigquit_killed_without_a_word_is_diagnosed(
    jobs: JobService, tmp_path: Path
) -> None:
    """sgl-jax's way of ending a process whose scheduler failed, when no handler speaks first.

    (A detached job inherits SIGQUIT ignored, as every `&` command of a non-interactive shell
    does; the seeds ran by hand, where it is not: the stand-in restores that.)
    """
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    script = (
        "echo loading; python3 -c 'import os, signal; signal.signal(signal.SIGQUIT, "
        "signal.SIG_DFL); os.kill(os.getpid(), signal.SIGQUIT)'"
    )
    job = await jobs.launch(node, "all", script, kind="custom")
    await jobs.follow(job, node, lambda w, t: None)
    stored = HistoryStore(tmp_path / "history.db").get(job.job_id)
    assert stored is not None and stored.status == "failed" and stored.workers[0].rc == 131
    assert [(d.key, d.worker, d.evidence) for d in stored.diagnoses] == [
        ("killed_by_sigquit", 0, "rc=131")
    ]


async def test_a_job_is_launching_until_its_workers_report_their_pids(
    jobs: JobService, tmp_path: Path
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    seen: list[str] = []
    record = jobs.history.record_launch

    def spy(job):
        record(job)
        seen.append(jobs.history.get(job.job_id).status)

    jobs.history.record_launch = spy  # type: ignore[method-assign]
    job = await jobs.launch(node, "all", "true")
    assert seen == ["launching"] and job.status == "running"


async def test_after_a_console_restart_running_jobs_are_reattached_and_vanished_ones_lost(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    from console.services.remote import RemoteService
    from tests.conftest import fleet_for, ssh_options_for

    def console():
        fleet = fleet_for(sandbox)
        remote = RemoteService(fleet, ssh_options_for(sandbox, tmp_path))
        return (
            fleet,
            remote,
            JobService(remote, HistoryStore(tmp_path / "restart.db"), tmp_path / "home"),
        )

    fleet, remote, before = console()
    v48 = await fleet.find_node("demo-v4-8")
    waiting = await before.launch(
        v48, "all", 'until [ -f "$HOME/go" ]; do sleep 0.05; done; seq 1 5'
    )
    v416 = await fleet.find_node("demo-v4-16")
    doomed = await before.launch(v416, "all", "sleep 60")
    await remote.close()
    before.history.close()  # the console closes; the jobs go on

    sandbox.fleet.delete("us-central2-b", "demo-v4-16")
    (sandbox.worker_place(sandbox.fleet.get("us-central2-b", "demo-v4-8"), 0).root / "go").touch()
    fleet, remote, after = console()
    notes = await after.reconcile(fleet)
    assert f"job {waiting.job_id} re-attached" in notes
    assert any(n.startswith(f"job {doomed.job_id} lost") for n in notes)
    assert after.get(doomed.job_id).status == "lost"
    rcs = await after.watch(after.get(waiting.job_id), v48)
    assert rcs == {0: 0} and after.get(waiting.job_id).status == "succeeded"
    assert after.log_path(waiting.job_id, 0).read_text().split() == ["1", "2", "3", "4", "5"]
    await remote.close()
    after.history.close()


async def test_template_jobs_run_the_runners_this_console_shipped(
    jobs: JobService, sandbox: Sandbox
) -> None:
    from console.services.templates import RUNNERS_PRELUDE

    node = await jobs.remote.fleet.find_node("demo-v4-16")
    # On w1 something else sits where the runners go.
    blocker = sandbox.worker_place(sandbox.fleet.get(ZONE, "demo-v4-16"), 1).root / ".tpuconsole"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "runners").write_text("not a folder")
    command = f"{RUNNERS_PRELUDE}\npython -c 'import remote.grpo as g; print(g.__file__)'"
    job = await jobs.launch(node, "all", command, kind="grpo", ship_runners=True)
    # Half a slice would wait for the other half: nothing starts, and the record says why.
    assert job.status == "failed" and not any(w.pid for w in job.workers)
    assert "could not ship the runners" in job.workers[1].error
    assert "did not reach every worker" in job.workers[0].error
    assert jobs.get(job.job_id).note.startswith("w1: could not ship the runners")
    (blocker / "runners").unlink()
    job = await jobs.launch(node, "all", command, kind="grpo", ship_runners=True)
    lines: list[tuple[int, str]] = []
    await jobs.follow(job, node, lambda w, t: lines.append((w, t)))
    roots = [sandbox.worker_place(sandbox.fleet.get(ZONE, "demo-v4-16"), w).root for w in (0, 1)]
    expected = [(w, str(r / ".tpuconsole" / "runners" / "remote" / "grpo.py"))
                for w, r in enumerate(roots)]  # fmt: skip
    assert sorted(lines) == expected and jobs.get(job.job_id).status == "succeeded"


async def test_watching_an_ended_job_again_restores_a_deleted_local_copy(jobs: JobService) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "seq 1 3")
    assert await jobs.watch(job, node) == {0: 0}
    jobs.log_path(job.job_id, 0).unlink()
    assert await jobs.watch(jobs.get(job.job_id), node) == {0: 0}
    assert jobs.log_path(job.job_id, 0).read_text() == "1\n2\n3\n"


async def test_a_stopped_job_keeps_its_last_lines_and_their_diagnosis(jobs: JobService) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    script = (
        "trap 'echo \"RuntimeError: TPU is already in use by process 7\"; exit 1' TERM; "
        "echo step; while true; do sleep 0.05; done"
    )
    job = await jobs.launch(node, "all", script)
    await jobs.follow(job, node, lambda w, t: None, follow=False)  # some output, then the stop
    assert (await jobs.stop(job, node, grace_s=5)) == {0: WorkerStop(StopResult.STOPPED)}
    stored = jobs.get(job.job_id)
    assert stored.status == "killed"
    assert jobs.log_path(job.job_id, 0).read_text().splitlines()[-1].startswith("RuntimeError")
    assert [d.key for d in stored.diagnoses] == ["tpu_in_use"]


async def test_a_job_whose_process_vanished_without_an_exit_code_is_lost(
    jobs: JobService,
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "sleep 60")
    # What a VM reboot does: the process is gone and no rc was written.
    await _remote_text(
        jobs.remote,
        node,
        f"kill -9 $(cat .tpuconsole/jobs/{job.job_id}/pid); rm -f "
        f".tpuconsole/jobs/{job.job_id}/rc*",
    )
    assert await jobs.follow(job, node, lambda w, t: None) == {0: None}
    stored = jobs.get(job.job_id)
    assert stored.status == "lost" and "vanished without an exit code" in stored.note


async def test_on_start_a_job_still_launching_elsewhere_is_left_alone(
    jobs: JobService,
) -> None:
    from datetime import UTC, datetime, timedelta

    from console.models import Job, JobWorker

    def launching(seq: int, age_s: float) -> Job:
        job = Job(
            job_id=f"{seq}-abcdef",
            node="demo-v4-8",
            zone=ZONE,
            command="true",
            started_at=datetime.now(UTC) - timedelta(seconds=age_s),
            workers=(JobWorker(0),),
        )
        jobs.history.record_launch(job)
        return job

    fresh, stale = launching(1, 5), launching(2, 3600)
    notes = await jobs.reconcile(jobs.remote.fleet)
    assert jobs.get(fresh.job_id).status == "launching"
    assert jobs.get(stale.job_id).status == "failed"
    assert notes == [f"job {stale.job_id} failed: its launch never completed"]


async def test_stopping_a_job_that_already_ended_settles_its_record(jobs: JobService) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "exit 3")  # nobody follows it
    assert jobs.get(job.job_id).status == "running"
    pid = job.workers[0].pid
    await _remote_text(  # until its whole session has ended
        jobs.remote, node, f"while ps -o stat= --sid {pid} | grep -qv '^Z'; do sleep 0.05; done"
    )
    assert await jobs.stop(job, node) == {0: WorkerStop(StopResult.GONE)}
    stored = jobs.get(job.job_id)
    assert stored.status == "failed" and stored.workers[0].rc == 3


async def test_stop_ends_what_the_command_left_running_in_its_session_and_says_so(
    jobs: JobService,
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "sleep 60 & echo started")  # the command ends at once
    pid = job.workers[0].pid
    await _remote_text(
        jobs.remote, node, f"until [ -f .tpuconsole/jobs/{job.job_id}/rc ]; do sleep 0.05; done"
    )
    outcome = await jobs.stop(job, node, grace_s=2)
    said = "stopped: 1 process it left running in its session (its command had ended with rc=0)"
    assert {w: str(v) for w, v in outcome.items()} == {0: said}
    assert outcome[0].result == StopResult.STOPPED
    stored = jobs.get(job.job_id)
    assert stored.status == "killed" and stored.note == f"w0: {said}"
    left = await _remote_text(jobs.remote, node, f"ps -o stat= --sid {pid} | grep -v '^Z' | wc -l")
    assert left.strip() == "0"


async def test_jobs_nobody_follows_are_settled_from_their_workers_folders(
    jobs: JobService,
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-16")
    ended = await jobs.launch(node, "all", "exit 0")
    running = await jobs.launch(node, "all", "sleep 60")
    vanished = await jobs.launch(node, "0", "sleep 60")
    d = f".tpuconsole/jobs/{vanished.job_id}"
    # SIGKILL is delivered, not waited for: wait until the worker no longer lists it (a
    # zombie counts as gone, as the status check counts it).
    await _remote_text(
        jobs.remote,
        node,
        f"P=$(cat {d}/pid); kill -9 $P; rm -f {d}/rc*; "
        'while ps -o stat= -p "$P" | grep -qv "^Z"; do sleep 0.05; done',
    )
    for w in (0, 1):
        await _remote_text(
            jobs.remote,
            node,
            f"until [ -f .tpuconsole/jobs/{ended.job_id}/rc ]; do sleep 0.05; done",
            worker=w,
        )
    settled = await jobs.settle_ended()
    assert sorted(settled) == sorted([ended.job_id, vanished.job_id])
    assert jobs.get(ended.job_id).status == "succeeded"
    assert [w.rc for w in jobs.get(ended.job_id).workers] == [0, 0]
    assert jobs.get(running.job_id).status == "running"
    lost = jobs.get(vanished.job_id)
    assert lost.status == "lost" and "vanished without an exit code" in lost.note
    await jobs.stop(running, node, grace_s=0.5)


async def test_a_followed_job_ends_when_its_rc_was_written_not_when_someone_looked(
    jobs: JobService,
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "true")
    rc = f".tpuconsole/jobs/{job.job_id}/rc"
    await _remote_text(jobs.remote, node, f"until [ -f {rc} ]; do sleep 0.05; done")
    await _remote_text(jobs.remote, node, f"touch -d '2026-01-02 03:04:05 UTC' {rc}")
    await jobs.follow(job, node, lambda w, t: None)
    ended = jobs.get(job.job_id).ended_at
    assert ended is not None and ended.isoformat() == "2026-01-02T03:04:05+00:00"


async def test_two_consoles_launching_at_once_never_share_a_job_number(
    jobs: JobService, tmp_path: Path
) -> None:
    """Each console numbers a launch from the history it reads; when another one recorded
    that number in between (its own process, same history.db), the launch takes the next."""
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    other = HistoryStore(tmp_path / "history.db")
    try:
        stale = jobs.history.next_seq
        first = await JobService(jobs.remote, other, tmp_path / "home").launch(node, "0", "true")
        calls = []

        def numbered() -> int:
            calls.append(1)
            return int(first.job_id.split("-")[0]) if len(calls) == 1 else stale()

        jobs.history.next_seq = numbered  # type: ignore[method-assign]
        second = await jobs.launch(node, "0", "true")
    finally:
        other.close()
    assert first.job_id.split("-")[0] != second.job_id.split("-")[0]
    assert jobs.get(second.job_id.split("-")[0]).job_id == second.job_id
    assert len(calls) == 2
