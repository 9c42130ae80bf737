"""Log ingest: 16 workers writing lines as fast as they can for 10 s, into the real log view.

Measures the lines per second the log view indexes and the longest event-loop stall while it
runs, live and catching up on the finished logs, against 16 parallel `ssh … cat` of the same
files (OpenSSH). Goals (issue 3): ingest at least half the `ssh cat` rate, no stall over 100 ms.
"""

from __future__ import annotations

import asyncio
import getpass
import shutil
import statistics
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
from console.services.session import Services  # noqa: E402
from console.ui.app import TpuConsoleApp  # noqa: E402
from console.ui.log_screen import LogScreen  # noqa: E402

DURATION_S = 10
# The 16 producers stand for 16 remote VMs; niced, they cannot starve the console of CPU the way
# they would not on real hardware. They still write as fast as the machine lets them. Each job
# runs in its own session, and with the kernel's autogroup scheduling a session is its own group
# with nice 0 whatever its processes' nice: so each producer also sets its group's nice.
SANDBOX_NICE = 19
PRODUCER = (
    "python3 -c 'import sys, time\n"
    'try: open("/proc/self/autogroup", "w").write("19")\n'
    "except OSError: pass\n"
    f"end = time.time() + {DURATION_S}; w = sys.stdout.write; i = 0\n"
    "while time.time() < end:\n"
    "    for _ in range(500):\n"
    '        i += 1; w("line %d %s\\n" % (i, "x" * 40))\n'
    'w("END %d\\n" % i)\''
)


class StallMonitor:
    """The longest time the event loop failed to wake a 10 ms sleeper on time."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.01)
            lag = loop.time() - start - 0.01
            if lag > self.worst:
                self.worst = lag

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
                str(t.port),  # the sandbox's one port; each worker has its own address
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                f"{getpass.getuser()}@{t.host}",
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
        app = TpuConsoleApp(Services.build(jobs), mode="SANDBOX", probe_interval_s=None)
        live = await view_ingest(app, job, None)
        shutil.rmtree(home / "logs" / job.job_id)
        app = TpuConsoleApp(Services.build(jobs), mode="SANDBOX", probe_interval_s=None)
        catch_up = await view_ingest(app, job, live[0])
        return {"job": job, "targets": targets, "live": live, "catch_up": catch_up}
    finally:
        await remote.close()
        await fleet.close()
        history.close()


RUNS = 3


def one_run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        with served_sandbox(home, 1, "v4-128", nice=SANDBOX_NICE) as endpoint:
            got = asyncio.run(measure(endpoint, home))
            cat_lines, cat_s = ssh_cat(endpoint, got["targets"], got["job"].job_id)
    live_lines, live_s, live_stall = got["live"]
    cu_lines, cu_s, cu_stall = got["catch_up"]
    assert cu_lines == live_lines == cat_lines, (live_lines, cu_lines, cat_lines)
    run = {
        "lines": live_lines,
        "live_rate": live_lines / live_s,
        "live_stall": live_stall,
        "cu_rate": cu_lines / cu_s,
        "cu_stall": cu_stall,
        "cat_rate": cat_lines / cat_s,
        "ratio": (cu_lines / cu_s) / (cat_lines / cat_s),
    }
    print(
        f"{live_lines:,} lines from 16 workers. live: {run['live_rate']:,.0f} lines/s "
        f"(stall {live_stall * 1000:.0f} ms); catch-up: {run['cu_rate']:,.0f} lines/s "
        f"(stall {cu_stall * 1000:.0f} ms); ssh cat: {run['cat_rate']:,.0f} lines/s",
        flush=True,
    )
    return run


def main() -> None:
    runs = [one_run() for _ in range(RUNS)]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def each(key: str, scale: float = 1.0, fmt: str = "{:,.0f}") -> str:
        return ", ".join(fmt.format(r[key] * scale) for r in runs)

    live_stall, cu_stall, ratio = med("live_stall"), med("cu_stall"), med("ratio")
    lines = [
        "## logtail (issue 3)",
        "",
        f"`python bench/logtail.py` — {machine_line()}. 16 sandbox workers (one v4-128 node, "
        f"servers in a separate process at nice {SANDBOX_NICE}, standing for remote VMs) each "
        f"print lines as fast as they can for {DURATION_S} s; "
        "the real log view (LogScreen, headless) follows the job; then, with the local copies "
        "deleted, catches up on the finished logs; then 16 parallel OpenSSH `ssh … cat` read "
        f"the same files. Medians of {RUNS} runs (each run's figures in brackets).",
        "",
        "| phase | lines/s | worst event-loop stall | goal |",
        "|---|---|---|---|",
        f"| live, while producing | {med('live_rate'):,.0f} ({each('live_rate')}) | "
        f"{live_stall * 1000:.0f} ms ({each('live_stall', 1000)}) | stall ≤ 100 ms "
        + ("✅" if live_stall <= 0.1 else "❌")
        + " |",
        f"| catch-up, finished logs | {med('cu_rate'):,.0f} ({each('cu_rate')}) | "
        f"{cu_stall * 1000:.0f} ms ({each('cu_stall', 1000)}) | ≥ 0.5 × ssh cat: "
        f"{ratio:.2f} ({each('ratio', fmt='{:.2f}')}) "
        + ("✅" if ratio >= 0.5 and cu_stall <= 0.1 else "❌")
        + " |",
        f"| OpenSSH `ssh … cat`, 16 parallel | {med('cat_rate'):,.0f} ({each('cat_rate')}) | "
        "| baseline |",
        "",
        f"Lines per run: {each('lines')}. Live lines/s is bounded by what 16 niced producers "
        "write on this machine's cores, shared with the sandbox and the console.",
        "",
        "Two things made the live stall: the diagnosis scan (an alternation of regular "
        "expressions costs Python's engine ~137 ns a byte; it now runs only on lines holding "
        "one of the signatures' literal anchors, found with bytes.find: ~2 ns a byte), and the "
        "benchmark itself: each job runs in its own session, and with the kernel's autogroup "
        "scheduling each session is a group of nice 0, so the 16 producers took the CPU from "
        "the console as equals despite the sandbox's nice 19; they now set their group's nice "
        "too, as remote VMs would not compete at all. (Left at nice 0, one run on 2026-11-23 "
        "wrote 12.5 M lines and stalled the view 338 ms: 17 equal groups on 2 cores leave the "
        "console an eighth of a core.)",
    ]
    write_section("logtail", "\n".join(lines))


if __name__ == "__main__":
    main()
