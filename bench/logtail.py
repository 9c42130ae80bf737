"""Log ingest: N workers writing lines as fast as they can for 10 s, into the real log view.

Measures the lines per second the log view indexes, the longest event-loop stall and the
memory it takes while it runs, live and catching up on the finished logs, against N parallel
`ssh … cat` of the same files (OpenSSH), at 16, 64 and 256 workers (one v4-128, v4-512 and
v4-2048 node). Goals: issue 3 at 16, catch-up at least half the `ssh cat` rate and no stall over
100 ms; issue 20 at 256, catch-up at least 0.9x and no stall over 50 ms, memory bounded.
`python bench/logtail.py [16] [64] [256]` runs only the scales named.
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

from bench.results_file import load_line, machine_line, write_section  # noqa: E402
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
STUCK_S = 180  # no new line and no worker ended for this long: the run failed


def producer(duration_s: int) -> str:
    return PRODUCER.replace("DURATION", str(duration_s))


PRODUCER = (
    "python3 -c 'import sys, time\n"
    'try: open("/proc/self/autogroup", "w").write("19")\n'
    "except OSError: pass\n"
    "end = time.time() + DURATION; w = sys.stdout.write; i = 0\n"
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


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def index_bytes(index) -> int:
    """What the index keeps per line: its arrays (no text: the copies on disk are the store)."""
    return index.memory_bytes()


async def view_ingest(app: TpuConsoleApp, job, total: int | None) -> tuple:
    """Open the log view on the job; return (lines indexed, seconds until all, worst stall,
    the process's RSS growth in bytes, the index's own bytes)."""
    monitor = StallMonitor()
    rss_before = rss_kib()
    async with app.run_test(size=(160, 48)) as pilot:
        start = time.perf_counter()
        screen = LogScreen(job)
        await app.push_screen(screen)
        await pilot.pause()
        monitor.start()  # from the first line on; opening the screen is not ingest
        progress, moved = None, time.perf_counter()
        while True:
            await pilot.pause(0.05)
            done = all(state for state in screen.ended.values())
            if done and not screen.index.behind and (total is None or len(screen.index) >= total):
                break
            now = (len(screen.index), sum(bool(s) for s in screen.ended.values()))
            if now != progress:
                progress, moved = now, time.perf_counter()
            elif time.perf_counter() - moved > STUCK_S:  # a run that hangs says so and ends
                banner = screen.query_one("#log-banner").render()
                raise RuntimeError(
                    f"no progress for {STUCK_S} s: {now[0]:,} lines, {now[1]} workers ended, "
                    f"follower running: {bool(app.workers)}, banner: {banner!s:.200}"
                )
        elapsed = time.perf_counter() - start
        stall = monitor.stop()
        grown = (rss_kib() - rss_before) * 1024
        return len(screen.index), elapsed, stall, grown, index_bytes(screen.index)


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


async def measure(endpoint, home: Path, duration_s: int = DURATION_S) -> dict:
    fleet = client_fleet(endpoint)
    remote = client_remote(fleet, endpoint, home)
    history = HistoryStore(home / "history.db")
    jobs = JobService(remote, history, home)
    try:
        node = (await fleet.list_nodes()).nodes[0]
        targets = await remote.targets(node, "all")
        job = await jobs.launch(node, "all", producer(duration_s))
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


PROFILE_NOTE = (
    "What the profiles at 256 showed (asyncio's slow-callback log and cProfile on the console "
    "during a run; issue 20), and what changed: (1) when the job ended, each of the 256 "
    "followers wrote its worker's offset and rc to the history on the loop, two autocommits "
    "(two WAL fsyncs) each: 512 commits in a row froze the view 2.5 s; each worker's end is now "
    "one write on a thread. (2) An indexing slice's budget is for all copies together, turning "
    "through them. (3) The ssh pool's bare channel sessions (see fanout) carry the log bytes. "
    "(4) Each follower's close waited on one of asyncio's pool threads for the copy's writer: "
    "256 ending together held the pool for seconds and the index's reads queued behind them "
    "(catch-up indexed nothing until every fetch was over); the writer now settles a future, "
    "and the index reads on a thread of its own. (5) The index cut lines on the loop and kept "
    "30 bytes a line in five arrays; it now cuts them on its thread (bytes.split once) and "
    "keeps each line's offset (8 bytes) with the arrival order as runs of one worker's lines; "
    "the loop appends offsets (its share of indexing went from ~3 s to ~0.15 s of a catch-up "
    "at 256). (6) The diagnosis and results matchers scanned every byte for 22 literals on the "
    "loop (4.5 ms a MB, the largest cost left); the index's thread now hands them only the "
    "lines holding an anchor, and a chunk lacking an anchor's rarest byte (memchr) is not "
    "searched for it (0.17 ms a MB on this log). (7) The status row listed 256 worker states, "
    "wrapped and rendered on every redraw; beyond 8 workers it counts them by state. (8) The "
    "log view's duty sparklines kept polling all 256 workers' chips after the job ended; each "
    "refused tunnel left tasks and tracebacks behind: at the end of a run 28,000 tasks and "
    "13,000 ssh channel opens were in flight, and full garbage collections took 4.5 s of the "
    "run (worst 0.5 s). The view now stops polling when every worker has ended: "
    "collections 0.9 s in all, worst 0.1 s. What is left (a "
    "watchdog thread sampling the loop's stack during each stall over 40 ms): no one cause; "
    "the stalls fall where one turn of the loop handles every connection that has data "
    "(256 at once: decrypting and dispatching their packets), in the full collections that "
    "remain (~50-100k objects, 40-100 ms of CPU each). Tried and not kept: the sandbox and its "
    "jobs in a cpu cgroup of the lowest share, to rule out the shared cores: the producers "
    "then wrote ten times the lines (44 M at 256) and the worst stall stayed at 265 ms, so "
    "what is left to cut is the console's own work in one turn of the loop (next: serving a "
    "bounded number of connections' packets per turn)."
)
SCALES = {16: "v4-128", 64: "v4-512", 256: "v4-2048"}  # one node of that many hosts
RUNS = {16: 3, 64: 3, 256: 2}
# At 256 the producers write for less time: the same lines a second, many more of them to
# follow and to catch up on; the benchmark stays minutes long.
DURATION = {16: DURATION_S, 64: DURATION_S, 256: 5}


def one_run(size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        with served_sandbox(home, 1, SCALES[size], nice=SANDBOX_NICE) as endpoint:
            got = asyncio.run(measure(endpoint, home, DURATION[size]))
            cat_lines, cat_s = ssh_cat(endpoint, got["targets"], got["job"].job_id)
    live_lines, live_s, live_stall, live_rss, live_index = got["live"]
    cu_lines, cu_s, cu_stall, cu_rss, cu_index = got["catch_up"]
    assert cu_lines == live_lines == cat_lines, (live_lines, cu_lines, cat_lines)
    run = {
        "lines": live_lines,
        "live_rate": live_lines / live_s,
        "live_stall": live_stall,
        "cu_rate": cu_lines / cu_s,
        "cu_stall": cu_stall,
        "cat_rate": cat_lines / cat_s,
        "ratio": (cu_lines / cu_s) / (cat_lines / cat_s),
        "per_line": live_index / live_lines,
        "per_worker": max(0, live_rss - live_index) / size,
        "rss": live_rss,
    }
    print(
        f"{live_lines:,} lines from {size} workers. live: {run['live_rate']:,.0f} lines/s "
        f"(stall {live_stall * 1000:.0f} ms, RSS +{live_rss / 1e6:.1f} MB, index "
        f"{run['per_line']:.1f} B/line); catch-up: {run['cu_rate']:,.0f} lines/s "
        f"(stall {cu_stall * 1000:.0f} ms); ssh cat: {run['cat_rate']:,.0f} lines/s "
        f"({run['ratio']:.2f})",
        flush=True,
    )
    return run


def section(size: int, runs: list[dict]) -> list[str]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def each(key: str, scale: float = 1.0, fmt: str = "{:,.0f}") -> str:
        return ", ".join(fmt.format(r[key] * scale) for r in runs)

    stall_goal, ratio_goal = (0.05, 0.9) if size == 256 else (0.1, 0.5)
    live_stall, cu_stall, ratio = med("live_stall"), med("cu_stall"), med("ratio")
    ok_live = "✅" if live_stall <= stall_goal else "❌"
    ok_cu = "✅" if ratio >= ratio_goal and cu_stall <= stall_goal else "❌"
    return [
        f"### {size} workers (one {SCALES[size]} node)",
        "",
        "| phase | lines/s | worst event-loop stall | goal |",
        "|---|---|---|---|",
        f"| live, while producing | {med('live_rate'):,.0f} ({each('live_rate')}) | "
        f"{live_stall * 1000:.0f} ms ({each('live_stall', 1000)}) | stall ≤ "
        f"{stall_goal * 1000:.0f} ms {ok_live} |",
        f"| catch-up, finished logs | {med('cu_rate'):,.0f} ({each('cu_rate')}) | "
        f"{cu_stall * 1000:.0f} ms ({each('cu_stall', 1000)}) | ≥ {ratio_goal} × ssh cat: "
        f"{ratio:.2f} ({each('ratio', fmt='{:.2f}')}) {ok_cu} |",
        f"| OpenSSH `ssh … cat`, {size} parallel | {med('cat_rate'):,.0f} ({each('cat_rate')}) | "
        "| baseline |",
        "",
        f"Lines per run: {each('lines')}. Memory while following: the index keeps "
        f"{med('per_line'):.1f} bytes a line (offsets only; the text stays in the local "
        "copies on disk); the process's RSS growth less the index is "
        f"{med('per_worker') / 1024:,.0f} KiB a worker ({each('per_worker', 1 / 1024)}) "
        f"(RSS grew {each('rss', 1e-6, '{:.0f}')} MB in all).",
        "",
    ]


def main() -> None:
    wanted = [int(a) for a in sys.argv[1:]] or sorted(SCALES)
    started = load_line()
    results = {size: [one_run(size) for _ in range(RUNS[size])] for size in wanted}
    lines = [
        "## logtail (issues 3 and 20)",
        "",
        f"`python bench/logtail.py` — {machine_line()}, {started}. N sandbox workers "
        f"(one node, servers in a separate process at nice {SANDBOX_NICE}, standing for "
        f"remote VMs) each print lines as fast as they can for {DURATION_S} s (5 s at 256); "
        "the real log "
        "view (LogScreen, headless) follows the job; then, with the local copies deleted, "
        "catches up on the finished logs (same pool); then N parallel OpenSSH `ssh … cat` "
        "read the same files. Medians of 3 runs (2 at 256; each run's figures in brackets).",
        "",
    ]
    for size, runs in results.items():
        lines += section(size, runs)
    lines += [
        "Live lines/s is bounded by what the niced producers write on this machine's cores, "
        "shared with the sandbox and the console.",
        "",
        "Two things made the live stall (issue 3): the diagnosis scan (an alternation of "
        "regular expressions costs Python's engine ~137 ns a byte; it now runs only on lines "
        "holding one of the signatures' literal anchors, found with bytes.find: ~2 ns a byte), "
        "and the benchmark itself: each job runs in its own session, and with the kernel's "
        "autogroup scheduling each session is a group of nice 0, so the producers took the "
        "CPU from the console as equals despite the sandbox's nice 19; they now set their "
        "group's nice too, as remote VMs would not compete at all.",
        "",
        PROFILE_NOTE,
    ]
    write_section("logtail", "\n".join(lines))


if __name__ == "__main__":
    main()
