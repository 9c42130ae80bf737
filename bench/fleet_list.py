"""Fleet listing: 1000 sandbox nodes over 20 zones, all zones at once versus zone by zone.

Also times `tpuconsole ls --json` on the default sandbox as a user runs it. Writes its section of
bench/RESULTS.md. Goals (issue 2): concurrent <= 1/5 of zone-by-zone; `ls --json` < 1 s wall.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_file import machine_line, write_section  # noqa: E402
from console.adapters.tpu_api import TpuApi  # noqa: E402
from console.sandbox.fleet_state import SANDBOX_PROJECT, SandboxFleet, SandboxNode  # noqa: E402
from console.sandbox.runtime import Sandbox  # noqa: E402
from console.sandbox.serving import stop_background  # noqa: E402
from console.services.fleet import FleetService  # noqa: E402

RUNS = 5
ZONES = tuple(f"bench-zone-{i:02d}" for i in range(20))
NODES = 1000
# A real ListNodes round trip to the Cloud TPU API takes tens to hundreds of milliseconds; loopback
# takes well under one. The emulator adds this much per call so the comparison means something.
API_LATENCY_S = 0.08


def bench_fleet(home: Path) -> SandboxFleet:
    fleet = SandboxFleet(path=None, zones=ZONES)
    for i in range(NODES):
        zone = ZONES[i % len(ZONES)]
        fleet.add_node(
            SandboxNode(
                f"node-{i:04d}",
                zone,
                "v4-8",
                "tpu-ubuntu2204-base",
                "READY",
                10_000 + i,
                time.time() - i * 60,
            )
        )
    return fleet


async def time_listing(sandbox: Sandbox, concurrent: bool) -> float:
    fleet = FleetService(lambda: TpuApi.for_sandbox(sandbox.api_address, SANDBOX_PROJECT), ZONES)
    try:
        await fleet.api.list_zones()  # open the channel outside the timed part
        start = time.perf_counter()
        if concurrent:
            snap = await fleet.list_nodes()
        else:
            snap = await fleet.list_nodes_zone_by_zone(ZONES)
        elapsed = time.perf_counter() - start
    finally:
        await fleet.close()
    assert len(snap.nodes) == NODES and not snap.unreachable, snap.unreachable
    return elapsed


def listing_rows(latency: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        sandbox = Sandbox.start(home, ssh=False, fleet=bench_fleet(home))
        sandbox.faults.latency_s = latency
        try:
            conc, seq = [], []
            for _ in range(RUNS):  # interleaved, so drift hits both alike
                conc.append(asyncio.run(time_listing(sandbox, True)))
                seq.append(asyncio.run(time_listing(sandbox, False)))
        finally:
            sandbox.stop()
    return statistics.median(conc), statistics.median(seq)


def ls_json_wall() -> tuple[float, float]:
    exe = Path(sys.executable).with_name("tpuconsole")
    cmd = (
        [str(exe), "ls", "--json"]
        if exe.exists()
        else [sys.executable, "-m", "console.cli", "ls", "--json"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TPUCONSOLE_HOME=tmp)
        env.pop("CLOUDSDK_CORE_PROJECT", None)
        times = []
        for _ in range(RUNS + 1):
            start = time.perf_counter()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - start)
            default = SandboxFleet.default(None)  # one line a node, then one a request
            assert len(out.stdout.splitlines()) == len(default.nodes) + len(default.queued)
        stop_background(Path(tmp))  # the one the first run started, before its home goes
    return times[0], statistics.median(times[1:])


def main() -> None:
    rows = []
    for latency in (API_LATENCY_S, 0.0):
        conc, seq = listing_rows(latency)
        rows.append((latency, conc, seq))
        print(
            f"latency {latency * 1000:.0f} ms/call: concurrent {conc:.3f} s, "
            f"zone-by-zone {seq:.3f} s, ratio {conc / seq:.3f}"
        )
    first, warm = ls_json_wall()
    print(f"tpuconsole ls --json: first run {first:.3f} s, median of {RUNS} after {warm:.3f} s")
    lines = [
        "## fleet_list (issue 2)",
        "",
        f"`python bench/fleet_list.py` — {machine_line()}. {NODES} sandbox nodes over "
        f"{len(ZONES)} zones, median of {RUNS} runs each, both ways interleaved in the same run.",
        "",
        "| emulated API latency per call | all zones at once | zone by zone | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for latency, conc, seq in rows:
        goal = "≤ 0.20 " + ("✅" if conc / seq <= 0.2 else "❌") if latency else "(CPU only)"
        lines.append(
            f"| {latency * 1000:.0f} ms | {conc * 1000:.0f} ms | {seq * 1000:.0f} ms | "
            f"{conc / seq:.3f} | {goal} |"
        )
    lines += [
        "",
        "| `tpuconsole ls --json` on the default sandbox | wall time | goal |",
        "|---|---|---|",
        f"| first run (creates keys and state) | {first * 1000:.0f} ms | |",
        f"| median of {RUNS} later runs | {warm * 1000:.0f} ms | < 1000 ms "
        + ("✅" if warm < 1 else "❌")
        + " |",
        "",
        f"The emulator adds {API_LATENCY_S * 1000:.0f} ms to every call to stand in for the real "
        "API's round trip; the 0 ms row shows what is left when only CPU counts (client and "
        "emulator share this process's two cores, so zone-by-zone and concurrent converge).",
    ]
    write_section("fleet_list", "\n".join(lines))


if __name__ == "__main__":
    main()
