"""Stale locks and lingering processes on sandbox workers, with real processes and locks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from console.models import KillStep, describe_kill, node_status
from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from console.services.probe import ProbeService, plan_for
from console.services.remote import RemoteService
from tests.conftest import worker_output

ZONE = "us-central2-b"
HOLDER = Path(__file__).resolve().parents[2] / "hold_tpu.py"


@pytest.fixture
def prober(remote: RemoteService) -> ProbeService:
    return ProbeService(remote)


@pytest.fixture
def worker_home(sandbox: Sandbox) -> Path:
    place = sandbox.worker_place(sandbox.fleet.get(ZONE, "demo-v4-8"), 0)
    place.materialise()
    shutil.copy(HOLDER, place.root / "hold_tpu.py")
    return place.root


async def _shell(remote: RemoteService, command: str) -> str:
    node = await remote.fleet.find_node("demo-v4-8")
    status, out = await worker_output(remote, node, command)
    assert status == 0, (command, out)
    return out


async def start_stray(remote: RemoteService, *args: str) -> int:
    """A TPU process that is no job of ours; returns once it holds what it was told to."""
    tag = "-".join(args)
    return int(
        await _shell(
            remote,
            (
                f"setsid nohup python3 hold_tpu.py {' '.join(args)} > stray-{tag}.out 2>&1 "
                f"< /dev/null & p=$!; until grep -q holding stray-{tag}.out; do sleep 0.02; done; "
                "echo $p"
            ),
        )
    )


async def start_job(jobs: JobService, *args: str):
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "0", f"python3 hold_tpu.py {' '.join(args)}")
    await _shell(
        jobs.remote, f"until grep -q holding .tpuconsole/jobs/{job.job_id}/log; do sleep 0.02; done"
    )
    return job


async def _alive(remote: RemoteService, pid: int) -> bool:
    """Running, not a zombie waiting for its reaper (init may take its time)."""
    state = await _shell(remote, f"grep '^State:' /proc/{pid}/status 2>/dev/null || echo gone")
    return state != "gone" and "zombie" not in state


async def test_our_running_job_holding_the_tpu_is_busy_and_left_alone(
    prober: ProbeService, tmp_path: Path, worker_home: Path
) -> None:
    from console.adapters.history_db import HistoryStore

    jobs = JobService(prober.remote, HistoryStore(tmp_path / "h.db"), tmp_path)
    job = await start_job(jobs, "lock", "chips")
    node = await prober.remote.fleet.find_node("demo-v4-8")
    (probe,) = await prober.probe(node)
    report = probe.report
    assert report is not None and report.lock_held and not report.stale_lock
    assert report.busy == (job.job_id,) and report.lingering == ()
    assert [len(h.devices) for h in report.holders] == [4]
    assert plan_for(report).empty
    assert node_status([probe]) == f"busy: job {job.job_id.split('-')[0]}"
    await jobs.stop(job, node, grace_s=0.5)  # the whole session, not only its leader


async def test_a_stray_holder_is_lingering_and_one_clean_frees_lock_and_chips(
    prober: ProbeService, worker_home: Path
) -> None:
    pid = await start_stray(prober.remote, "lock", "chips")
    node = await prober.remote.fleet.find_node("demo-v4-8")
    (probe,) = await prober.probe(node)
    assert probe.report is not None
    assert [x.pid for x in probe.report.lingering] == [pid]
    assert node_status([probe]) == "1 lingering"
    plan = plan_for(probe.report, grace_s=2)
    assert [k.pid for k in plan.kills] == [pid]
    assert [s.path for s in plan.locks] == [probe.report.lockfile]  # held only by the stray
    assert "SIGTERM pid" in describe_kill(plan.kills[0]) and "accel0" in describe_kill(
        plan.kills[0]
    )
    results, after = await prober.execute(node, [plan])
    assert [r.done for r in results] == [True, True], results
    assert not await _alive(prober.remote, pid)
    assert not (worker_home / "tmp" / "libtpu_lockfile").exists()
    assert node_status(after) == "clean"


async def test_a_dead_holders_leftover_lockfile_is_stale_and_removed(
    prober: ProbeService, worker_home: Path
) -> None:
    pid = await start_stray(prober.remote, "lock")
    await _shell(
        prober.remote, f"kill -9 {pid}; while kill -0 {pid} 2>/dev/null; do sleep 0.02; done"
    )
    lockfile = worker_home / "tmp" / "libtpu_lockfile"
    assert lockfile.exists()
    node = await prober.remote.fleet.find_node("demo-v4-8")
    (probe,) = await prober.probe(node)
    assert probe.report is not None and probe.report.stale_lock
    assert node_status([probe]) == "STALE LOCK"
    results, after = await prober.execute(node, [plan_for(probe.report)])
    assert [(r.done, r.result) for r in results] == [(True, "removed (no holder)")]
    assert not lockfile.exists() and node_status(after) == "clean"


async def test_a_process_left_holding_chips_after_its_job_ended_is_killed(
    prober: ProbeService, tmp_path: Path, worker_home: Path
) -> None:
    from console.adapters.history_db import HistoryStore

    jobs = JobService(prober.remote, HistoryStore(tmp_path / "h.db"), tmp_path)
    job = await start_job(jobs, "chips", "child")
    await _shell(
        prober.remote, f"until [ -f .tpuconsole/jobs/{job.job_id}/rc ]; do sleep 0.02; done"
    )
    node = await prober.remote.fleet.find_node("demo-v4-8")
    (probe,) = await prober.probe(node)
    assert probe.report is not None
    (entry,) = probe.report.lingering
    assert "after its job wrote rc=0" in entry.why and entry.job_id == job.job_id
    results, after = await prober.execute(node, [plan_for(probe.report, grace_s=2)])
    assert results[0].done and not await _alive(prober.remote, entry.pid)
    assert node_status(after) == "clean"


async def test_a_runner_lingering_after_done_and_ignoring_sigterm_is_killed_after_grace(
    prober: ProbeService, tmp_path: Path, worker_home: Path
) -> None:
    from console.adapters.history_db import HistoryStore

    jobs = JobService(prober.remote, HistoryStore(tmp_path / "h.db"), tmp_path)
    await start_job(jobs, "chips", "done", "ignore-term")
    node = await prober.remote.fleet.find_node("demo-v4-8")
    (probe,) = await prober.probe(node)
    assert probe.report is not None
    holder_pids = {h.pid for h in probe.report.holders}
    assert any("DONE" in x.why and x.pid in holder_pids for x in probe.report.lingering)
    plan = plan_for(probe.report, grace_s=0.3)
    results, after = await prober.execute(node, [plan])
    assert any("SIGKILL after" in r.result for r in results), results
    assert node_status(after) == "clean"


async def test_a_pid_reused_between_plan_and_execution_is_not_signalled(
    prober: ProbeService, worker_home: Path
) -> None:
    pid = await start_stray(prober.remote, "chips")
    node = await prober.remote.fleet.find_node("demo-v4-8")
    (probe,) = await prober.probe(node)
    assert probe.report is not None
    plan = plan_for(probe.report)
    (kill,) = plan.kills
    # Same pid, another process: what the worker would see had the pid been reused.
    reused = KillStep(
        kill.pid,
        kill.start_ticks + 1,
        kill.cmdline,
        kill.user,
        kill.elapsed_s,
        kill.devices,
        kill.why,
        0.1,
    )
    results, _ = await prober.execute(node, [type(plan)(plan.worker, (reused,), ())])
    assert [r.done for r in results] == [False]
    assert "is gone or is another process now" in results[0].result
    assert await _alive(prober.remote, pid)
    await _shell(prober.remote, f"kill -9 {pid}")
