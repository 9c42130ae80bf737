"""A sandbox with a fleet of the benchmark's shape, served by a separate process.

A process of its own keeps the ssh servers' CPU off the measured client's interpreter, as real
VMs would be.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from console.sandbox.fleet_state import SandboxFleet, SandboxNode  # noqa: E402
from console.sandbox.runtime import SandboxEndpoint, read_served_endpoint  # noqa: E402

ZONE = "us-central2-b"


def write_fleet(home: Path, nodes: int, accelerator_type: str) -> None:
    fleet = SandboxFleet(path=home / "sandbox" / "state.json")
    for i in range(nodes):
        fleet.add_node(
            SandboxNode(
                f"bench-{i:02d}",
                ZONE,
                accelerator_type,
                "tpu-ubuntu2204-base",
                "READY",
                5000 + i,
                time.time(),
            )
        )
    fleet.save()


@contextmanager
def served_sandbox(home: Path, nodes: int, accelerator_type: str, *, nice: int = 0):
    """`nice` lowers the sandbox and its jobs: on real VMs they do not share the console's CPU."""
    write_fleet(home, nodes, accelerator_type)
    prefix = ["nice", "-n", str(nice)] if nice else []
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "console.cli", "--home", str(home), "sandbox", "serve"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("serving"):
                break
        endpoint = read_served_endpoint(home)
        assert isinstance(endpoint, SandboxEndpoint), "sandbox did not start"
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)
