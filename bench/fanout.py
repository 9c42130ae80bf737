"""Fan-out: one short command on 64 sandbox workers, tpuconsole's pool versus parallel OpenSSH.

tpuconsole cold (new pool: 64 connects, then the command) and warm (the pool already open),
against OpenSSH's `ssh` run 64-wide with `xargs -P 64`, same key, same servers. Median of 5.
Goals (issue 3): warm <= 1/5 of parallel OpenSSH, cold <= 1.5x.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_file import machine_line, write_section  # noqa: E402
from bench.sandbox_process import ZONE, client_fleet, client_remote, served_sandbox  # noqa: E402
from console.services.fleet import FleetService  # noqa: E402
from console.services.remote import RemoteService  # noqa: E402

RUNS = 5
NODES = 16  # v4-32: four workers each, 64 in all
COMMAND = "true"
WARM_PER_POOL = 3  # warm runs after each cold one; the warm median is over all of them


async def targets_of(fleet: FleetService, remote: RemoteService):
    snapshot = await fleet.list_nodes([ZONE])
    out = []
    for node in snapshot.nodes:
        out.extend(await remote.targets(node, "all"))
    return out


async def tpuconsole_runs(endpoint, home: Path) -> tuple[list[float], list[float], list]:
    fleet = client_fleet(endpoint)
    cold, warm = [], []
    targets = []
    for _ in range(RUNS):
        remote = client_remote(fleet, endpoint, home)
        targets = await targets_of(fleet, remote)
        start = time.perf_counter()
        result = await remote.run_on_targets("bench", targets, COMMAND)
        cold.append(time.perf_counter() - start)
        assert result.worst_status == 0 and len(result.outcomes) == 64, result.summary()
        for _ in range(WARM_PER_POOL):
            start = time.perf_counter()
            result = await remote.run_on_targets("bench", targets, COMMAND)
            warm.append(time.perf_counter() - start)
            assert result.worst_status == 0, result.summary()
        await remote.close()
    await fleet.close()
    return cold, warm, targets


def openssh_runs(endpoint, targets) -> list[float]:
    ssh = shutil.which("ssh")
    if ssh is None:
        return []
    hosts = "\n".join(t.host for t in targets) + "\n"
    cmd = (
        f"xargs -P 64 -I HOST {ssh} -q -i {endpoint.user_key} -p {endpoint.ssh_port} "
        "-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        f"{getpass.getuser()}@HOST {COMMAND}"
    )
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, shell=True, input=hosts, text=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        with served_sandbox(home, NODES, "v4-32") as endpoint:
            cold, warm, targets = asyncio.run(tpuconsole_runs(endpoint, home))
            openssh = openssh_runs(endpoint, targets)
    c, w = statistics.median(cold), statistics.median(warm)
    o = statistics.median(openssh) if openssh else float("nan")
    print(f"64 workers: tpuconsole cold {c:.3f} s, warm {w:.3f} s; parallel OpenSSH {o:.3f} s")
    lines = [
        "## fanout (issue 3)",
        "",
        f"`python bench/fanout.py` — {machine_line()}. `{COMMAND}` on 64 sandbox workers (16 "
        "v4-32 nodes; their asyncssh servers in a separate process), median of "
        f"{RUNS} cold runs (a new pool each), {RUNS * WARM_PER_POOL} warm runs and {RUNS} "
        "OpenSSH runs, all in the same run.",
        "",
        "| how | median | ratio to parallel OpenSSH | goal |",
        "|---|---|---|---|",
        f"| OpenSSH `ssh`, `xargs -P 64` | {o * 1000:.0f} ms | 1.00 | |",
        f"| tpuconsole, cold pool (connect + run) | {c * 1000:.0f} ms | {c / o:.2f} | ≤ 1.5 "
        + ("✅" if c / o <= 1.5 else "❌")
        + " |",
        f"| tpuconsole, warm pool | {w * 1000:.0f} ms | {w / o:.3f} | ≤ 0.20 "
        + ("✅" if w / o <= 0.2 else "❌")
        + " |",
        "",
        f"Runs: cold {', '.join(f'{x * 1000:.0f}' for x in cold)} ms; warm "
        f"{', '.join(f'{x * 1000:.0f}' for x in warm)} ms; OpenSSH "
        f"{', '.join(f'{x * 1000:.0f}' for x in openssh)} ms. {os.cpu_count()} cores serve "
        "client and all 64 servers.",
    ]
    write_section("fanout", "\n".join(lines))


if __name__ == "__main__":
    main()
