"""Long lines (issue 15, item 12) and searching big logs (item 14), against the seeds' baseline.

1. Ingest: one 40 MB tqdm-style `\\r` line in 32 KiB chunks, as ssh delivers it, through the old
   follower's algorithm (`pending + chunk` and a scan of it per chunk, reproduced below) and the
   bounded LineSplitter: time and peak memory, in this process, in the same run.
2. `tpuconsole logs JOB -f` of a 40 MB and a 100 MB `\\r` line from a sandbox served by another
   process: wall time and the follower's peak RSS.
3. The log view on a job whose copy holds a 30 MB line: seconds until it is on screen, then per
   key press.
4. `/` on a 2,000,000-line log: seconds to the answer and the worst event-loop stall meanwhile.

Parts 2-4 also run on the code before the fix (BASELINE, taken with `git archive`; or any tree
with `--baseline-tree DIR`; `--no-baseline` skips it), so "before" and "after" are measured the
same way on this machine, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

TREE = Path(os.environ.get("BENCH_TREE") or Path(__file__).resolve().parent.parent)
HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TREE))

BASELINE = "5056e13"  # the last commit with the seeds' follower and index (before issue 15)
CHUNK = 32 << 10
RUNS = 3
STATE = b"\r%6d%%|%s|"  # 98 bytes with an 88-character bar


def bar_bytes(megabytes: int) -> bytes:
    states = megabytes * (1 << 20) // 98
    return b"".join(STATE % (i, b"#" * 88) for i in range(states)) + b"\n"


# ----- 1. the ingest algorithm, before and after -------------------------------------------------
def old_follower(data: bytes) -> int:
    """LogStream.follow's `take` before the fix, on the same chunks: pending + chunk each time."""
    pending, lines = b"", 0
    for at in range(0, len(data), CHUNK):
        joined = pending + data[at : at + CHUNK]
        end = joined.rfind(b"\n")
        if end < 0:
            pending = joined
            continue
        lines += joined[:end].count(b"\n") + 1
        pending = joined[end + 1 :]
    return lines


def new_follower(data: bytes) -> int:
    from console.services.lines import LineSplitter

    splitter, lines = LineSplitter(bounded=True), 0
    for at in range(0, len(data), CHUNK):
        lines += len(splitter.feed(data[at : at + CHUNK]))
    return lines


def ingest() -> dict:
    data = bar_bytes(40)
    out = {}
    for name, fn in (("old", old_follower), ("new", new_follower)):
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            assert fn(data) == 1
            times.append(time.perf_counter() - start)
        tracemalloc.start()
        fn(data)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[name] = {"s": statistics.median(times), "runs": times, "peak_mb": peak / 2**20}
    return out


# ----- 2. tpuconsole logs -f ----------------------------------------------------------------------
MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "done = subprocess.run([sys.executable, '-m', 'console.cli', *sys.argv[1:]],"
    " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(done.returncode, time.perf_counter() - t,"
    " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def _env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree), "BENCH_TREE": str(tree)}


def follow(tree: Path, megabytes: tuple[int, ...]) -> dict:
    """Per size: the median wall time and peak RSS of `logs -f` (fresh copy each run)."""
    from bench.sandbox_process import served_sandbox

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = _env(tree)
        with served_sandbox(home, 1, "v4-8", env=env):
            cli = [sys.executable, "-m", "console.cli", "--home", str(home)]
            for mb in megabytes:
                producer = (
                    'python3 -c "import sys\nw = sys.stdout.buffer.write\n'
                    f"for i in range({mb * (1 << 20) // 98}): "
                    "w(b'\\r%6d%%|%s|' % (i, b'#' * 88))\nw(b'\\n')\""
                )
                launched = subprocess.run(
                    [*cli, "launch", "bench-00", "--follow", "--", producer],
                    capture_output=True, text=True, env=env, cwd=tmp, check=True,
                )  # fmt: skip
                job = launched.stdout.split()[1]
                runs = []
                for _ in range(RUNS):
                    for copy in (home / "logs" / job).glob("*.log"):
                        copy.unlink()  # follow from the start: the whole line again
                    done = subprocess.run(
                        [sys.executable, "-c", MEASURE, "--home", str(home), "logs", job, "-f"],
                        capture_output=True, text=True, env=env, cwd=tmp, check=True,
                    )  # fmt: skip
                    rc, seconds, rss = done.stdout.split()
                    assert rc == "0", done.stdout
                    runs.append((float(seconds), int(rss) / 1024))
                out[str(mb)] = {
                    "s": statistics.median(s for s, _ in runs),
                    "rss_mb": statistics.median(r for _, r in runs),
                    "runs": runs,
                }
    return out


# ----- 3 and 4. the log view ---------------------------------------------------------------------
class StallMonitor:
    """The longest time the event loop failed to wake a 10 ms sleeper on time."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, loop.time() - start - 0.01)


async def view(kind: str) -> dict:
    """In this process, with the tree it was started on: the view on a big local copy."""
    from datetime import UTC, datetime

    from console.adapters.history_db import HistoryStore
    from console.adapters.ssh_pool import SshOptions
    from console.adapters.tpu_api import TpuApi
    from console.models import Job, JobWorker
    from console.sandbox.runtime import Sandbox
    from console.services.fleet import FleetService
    from console.services.jobs import JobService
    from console.services.remote import RemoteService
    from console.services.session import Services
    from console.ui.app import TpuConsoleApp
    from console.ui.log_screen import LogScreen

    with tempfile.TemporaryDirectory() as tmp, Sandbox.start(Path(tmp) / "sb", ssh=False) as sb:
        home = Path(tmp)
        fleet = FleetService(lambda: TpuApi.for_sandbox(sb.api_address, sb.project))
        remote = RemoteService(fleet, SshOptions("bench", "", home / "known_hosts"))
        history = HistoryStore(home / "history.db")
        jobs = JobService(remote, history, home)
        # A job on a real node whose worker never started: the view shows its local copy.
        job = Job(
            "1-b16b16", "demo-v4-8", "us-central2-b", "big", datetime.now(UTC),
            workers=(JobWorker(0),),
        )  # fmt: skip
        history.record_launch(job)
        copy = jobs.log_path(job.job_id, 0)
        copy.parent.mkdir(parents=True)
        if kind == "long":
            copy.write_bytes(b"before\n" + b"x" * (30 << 20) + b"\nafter\n")
        else:
            copy.write_bytes(b"".join(b"line %d of the run\n" % i for i in range(2_000_000)))
        app = TpuConsoleApp(Services.build(jobs), mode="BENCH", probe_interval_s=None)
        monitor = StallMonitor()
        async with app.run_test(size=(160, 48)) as pilot:
            start = time.perf_counter()
            screen = LogScreen(history.get(job.job_id) or job)
            await app.push_screen(screen)
            want = 3 if kind == "long" else 2_000_000
            while len(screen.index) < want or screen.index.lagging:
                await pilot.pause(0.01)
            await pilot.pause()
            opened = time.perf_counter() - start
            if kind == "long":
                keys = []
                for key in ("up", "down", "up", "down", "up"):
                    t = time.perf_counter()
                    await pilot.press(key)
                    await pilot.pause()
                    keys.append(time.perf_counter() - t)
                return {"open_s": opened, "key_s": statistics.median(keys)}
            watcher = asyncio.ensure_future(monitor.run())
            t = time.perf_counter()
            await pilot.press("slash", *"absent-needle", "enter")
            while getattr(screen, "running_query", None) is not None:
                await pilot.pause(0.01)
            searched = time.perf_counter() - t
            watcher.cancel()
            return {"open_s": opened, "search_s": searched, "stall_s": monitor.worst}


def view_in(tree: Path, kind: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--view", kind],
        capture_output=True, text=True, env=_env(tree), cwd=tempfile.gettempdir(), timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.splitlines()[-1])


def measure(tree: Path, sizes: tuple[int, ...]) -> dict:
    return {
        "follow": follow(tree, sizes),
        "long": view_in(tree, "long"),
        "search": view_in(tree, "search"),
    }


def _archive(commit: str, into: Path) -> Path | None:
    """The source tree at `commit`, from this checkout's git history (None if there is none)."""
    archive = subprocess.run(
        ["git", "-C", str(HERE), "archive", commit], capture_output=True, check=False
    )
    if archive.returncode != 0:
        print(f"no baseline: git archive {commit} failed", file=sys.stderr)
        return None
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline-tree", type=Path, help="source tree of the code before")
    parser.add_argument("--no-baseline", action="store_true", help="measure this tree only")
    parser.add_argument("--view", choices=["long", "search"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.view:
        print(json.dumps(asyncio.run(view(args.view))))
        return
    sys.path.insert(0, str(HERE))
    from bench.results_file import machine_line, write_section

    load = os.getloadavg()[0]
    algo = ingest()
    after = measure(TREE, (40, 100))
    with tempfile.TemporaryDirectory() as old:
        tree = None if args.no_baseline else args.baseline_tree or _archive(BASELINE, Path(old))
        before = measure(tree, (40,)) if tree else None
    print(json.dumps({"ingest": algo, "after": after, "before": before}, indent=1))

    def cell(result: dict | None, *path: str, fmt: str = "{:.2f}") -> str:
        for key in path:
            if result is None or key not in result:
                return "—"
            result = result[key]
        return fmt.format(result)

    ratio = algo["old"]["s"] / algo["new"]["s"]
    rows = [
        f"`python bench/long_lines.py` — {machine_line()}, load average {load:.1f} when it "
        "started"
        + (
            ": **the machine was shared with other work**, so read the ratios, not the seconds"
            if load > 1.0
            else ""
        )
        + ". Medians of 3 runs (single runs in the JSON the script prints).",
        "",
        "| ingest of one 40 MB `\\r` line in 32 KiB chunks | time | peak memory |",
        "|---|---|---|",
        f"| before: `pending + chunk` per chunk | {algo['old']['s']:.2f} s | "
        f"{algo['old']['peak_mb']:.0f} MB |",
        f"| after: bounded LineSplitter | {algo['new']['s']:.3f} s | "
        f"{algo['new']['peak_mb']:.2f} MB |",
        f"| ratio before/after | {ratio:,.0f}× | |",
        "",
        "| end to end | before | after | goal |",
        "|---|---|---|---|",
        f"| `logs -f`, 40 MB `\\r` line: wall | {cell(before, 'follow', '40', 's')} s | "
        f"{cell(after, 'follow', '40', 's')} s | linear in bytes |",
        f"| `logs -f`, 40 MB `\\r` line: follower's peak RSS | "
        f"{cell(before, 'follow', '40', 'rss_mb', fmt='{:.0f}')} MB | "
        f"{cell(after, 'follow', '40', 'rss_mb', fmt='{:.0f}')} MB | bounded |",
        f"| `logs -f`, 100 MB `\\r` line: wall, peak RSS | (not run: 49 s, 575 MB in the "
        f"report) | {cell(after, 'follow', '100', 's')} s, "
        f"{cell(after, 'follow', '100', 'rss_mb', fmt='{:.0f}')} MB | bounded |",
        f"| view: 30 MB line on screen | {cell(before, 'long', 'open_s')} s | "
        f"{cell(after, 'long', 'open_s')} s | promptly |",
        f"| view: per key afterwards | {cell(before, 'long', 'key_s', fmt='{:.3f}')} s | "
        f"{cell(after, 'long', 'key_s', fmt='{:.3f}')} s | little |",
        f"| `/` on 2,000,000 lines: answer | {cell(before, 'search', 'search_s')} s | "
        f"{cell(after, 'search', 'search_s')} s | |",
        f"| `/` on 2,000,000 lines: worst event-loop stall | "
        f"{cell(before, 'search', 'stall_s', fmt='{:.3f}')} s | "
        f"{cell(after, 'search', 'stall_s', fmt='{:.3f}')} s | off the loop |",
        "",
        f"Before = commit {BASELINE} (the seeds' follower and index, before issue 15), from "
        "`git archive`, measured in the same run and the same way; the 100 MB line is left out "
        "of it (tens of seconds, hundreds of MB).",
    ]
    write_section("long_lines", "## long_lines (issue 15, items 12 and 14)\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
