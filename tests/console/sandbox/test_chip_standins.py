"""The chips' metrics stand-in agrees with the probe on what runs on a sandbox worker."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from console.sandbox.chip_standins import DeviceHolders, WorkerMetricsStandIn

# Nothing execs after "held": a scan that reads the holder while it execs may see neither its
# old nor its new files and environ (`exec sleep` here missed it once under make test).
HOLD = "import sys; held = open(sys.argv[1]); print('held', flush=True); sys.stdin.read()"


def _holding(device: Path, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["python3", "-c", HOLD, str(device)],
        env={"PATH": os.environ["PATH"], **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


async def test_only_a_process_the_worker_started_holds_its_chips(tmp_path: Path) -> None:
    """A process no worker started is on no VM, whatever files it opens: the probe leaves it
    out (remote/probe.py's `elsewhere`), and so do the worker's metrics."""
    root = tmp_path / "workers" / "1" / "w0"
    device = root / "dev" / "accel0"
    device.parent.mkdir(parents=True)
    device.touch()
    standin = WorkerMetricsStandIn(
        (device,), "vm-0", DeviceHolders(tmp_path / "workers"), 32 << 30, root
    )
    stranger = _holding(device, {"TPUCONSOLE_SANDBOX": "1", "HOME": str(tmp_path)})
    try:
        assert await standin.chips() == []
        job = _holding(device, {"TPUCONSOLE_SANDBOX": "1", "HOME": str(root)})
        try:
            standin.holders._at = -1e9  # a fresh scan, not the last half second's
            (chip,) = await standin.chips()
            assert chip.chip == 0 and chip.pids == (job.pid,) and chip.hbm_used > 0
        finally:
            job.kill()
            job.wait()
    finally:
        stranger.kill()
        stranger.wait()
