"""Whole-fleet probe: the TPU-lock probe and cleanup plan for every worker, on a warm pool,
at 64 workers (16 v4-32 nodes) and at 256 (one v4-2048 pod slice), with parallel OpenSSH
running the same probe (same command, same stdin) in the same run as a baseline.

Goals: issue 4, under 2 s for 64 workers once the connections are open; issue 20, under 3 s
for 256. `python bench/probe.py [64] [256]` runs only the scales named.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from console.services.probe import ProbeService, plan_for, probe_command, probe_source  # noqa: E402

SCALES = {64: (16, "v4-32", 2.0), 256: (1, "v4-2048", 3.0)}  # nodes, type, goal in s
RUNS = {64: 5, 256: 2}  # warm runs: at 256 each is minutes of the sandbox's CPU here


async def measure(endpoint, home: Path, runs: int) -> tuple[float, list[float], int, list, list]:
    fleet = client_fleet(endpoint)
    remote = client_remote(fleet, endpoint, home)
    prober = ProbeService(remote)
    try:
        nodes = (await fleet.list_nodes()).nodes
        targets = [t for n in nodes for t in await remote.targets(n, "all")]

        async def whole_fleet() -> int:
            probes = await asyncio.gather(*(prober.probe(n) for n in nodes))
            reports = [p.report for ps in probes for p in ps]
            assert all(r is not None for r in reports), [p.error for ps in probes for p in ps]
            plans = [plan_for(r) for r in reports if r is not None]
            return len(plans)

        start = time.perf_counter()
        workers = await whole_fleet()  # cold: connects too
        cold = time.perf_counter() - start
        warm, cpu = [], []
        for _ in range(runs):
            start, used = time.perf_counter(), time.process_time()
            assert await whole_fleet() == workers
            warm.append(time.perf_counter() - start)
            cpu.append(time.process_time() - used)
        return cold, warm, workers, targets, cpu
    finally:
        await remote.close()
        await fleet.close()


def openssh_once(endpoint, targets) -> float:
    """The same probe through N parallel `ssh` processes, each fed the probe on stdin."""
    ssh = shutil.which("ssh")
    assert ssh, "OpenSSH client needed for the baseline"
    source = probe_source()
    command = probe_command(["probe"])
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                ssh, "-q", "-i", endpoint.user_key, "-p", str(t.port),
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null",
                f"{getpass.getuser()}@{t.host}", command,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        for t in targets
    ]  # fmt: skip
    for proc in procs:
        assert proc.stdin is not None
        # A worker that keeps the probe compiled (console/services/probe.py) reads no stdin: its
        # ssh may be done before the source is written.
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(source)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    for proc in procs:
        assert proc.wait() == 0
    return time.perf_counter() - start


def one_scale(size: int) -> dict:
    nodes, kind, goal = SCALES[size]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        with served_sandbox(home, nodes, kind) as endpoint:
            cold, warm, workers, targets, cpu = asyncio.run(measure(endpoint, home, RUNS[size]))
            openssh = [openssh_once(endpoint, targets) for _ in range(min(3, RUNS[size]))]
    assert workers == size, workers
    median, o = statistics.median(warm), statistics.median(openssh)
    print(
        f"{workers} workers: probe + plan cold {cold:.3f} s, warm median {median:.3f} s; "
        f"parallel OpenSSH {o:.3f} s; console CPU {statistics.median(cpu):.3f} s",
        flush=True,
    )
    return {
        "size": size, "shape": f"{nodes} × {kind}", "goal": goal, "cold": cold,
        "warm": warm, "median": median, "openssh": openssh, "o": o, "cpu": cpu,
    }  # fmt: skip


def main() -> None:
    wanted = [int(a) for a in sys.argv[1:]] or sorted(SCALES)
    started = load_line()
    results = [one_scale(n) for n in wanted]
    lines = [
        "## probe (issues 4 and 20)",
        "",
        f"`python bench/probe.py` — {machine_line()}, {started}. remote/probe.py on every "
        "worker (servers in a separate process), each report parsed and its cleanup plan made; "
        "median of 5 runs on a warm pool (2 at 256); parallel OpenSSH (one `ssh` a worker, the "
        "same command and stdin) median of up to 3, in the same run. The console's CPU is "
        "its own process time during a warm run: its part of the wall time.",
        "",
        "| workers | cold (connects included) | warm, median | console CPU | parallel OpenSSH "
        "| ratio | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ok = "✅" if r["median"] < r["goal"] else "❌"
        lines.append(
            f"| {r['size']} ({r['shape']}) | {r['cold'] * 1000:.0f} ms | "
            f"{r['median'] * 1000:.0f} ms | {statistics.median(r['cpu']) * 1000:.0f} ms | "
            f"{r['o'] * 1000:.0f} ms | {r['median'] / r['o']:.2f} "
            f"| < {r['goal'] * 1000:.0f} ms {ok} |"
        )
    lines.append("")
    for r in results:
        lines.append(
            f"Warm runs at {r['size']}: {', '.join(f'{x * 1000:.0f}' for x in r['warm'])} ms; "
            f"OpenSSH {', '.join(f'{x * 1000:.0f}' for x in r['openssh'])} ms."
        )
    lines += [
        "",
        "Each probe is a fresh python3 on the worker reading /proc, every process's open files "
        "among them (who holds /dev/accel*). The sandbox's workers share this machine's two "
        "cores and one /proc: at 256 each of 256 probes walks every process of the machine, the "
        "other 255 probes included, O(N²) work on 2 cores, where each real VM walks its own "
        "few hundred processes on its own CPU. The console's CPU column is what the console "
        "spends on the whole fleet's probe (sessions, reports parsed, plans made).",
    ]
    write_section("probe", "\n".join(lines))


if __name__ == "__main__":
    main()
