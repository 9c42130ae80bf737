"""A sandbox with a fleet of the benchmark's shape, served by a separate process.

A process of its own keeps the ssh servers' CPU off the measured client's interpreter, as real
VMs would be.
"""

from __future__ import annotations

import getpass
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from console.adapters.ssh_pool import SshOptions  # noqa: E402
from console.adapters.tpu_api import TpuApi  # noqa: E402
from console.sandbox.fleet_state import SandboxFleet, SandboxNode  # noqa: E402
from console.sandbox.runtime import SandboxEndpoint, read_served_endpoint  # noqa: E402
from console.sandbox.ssh_workers import load_or_create_key  # noqa: E402
from console.services.fleet import FleetService  # noqa: E402
from console.services.remote import RemoteService  # noqa: E402

ZONE = "us-central2-b"


def write_fleet(home: Path, nodes: int, accelerator_type: str) -> None:
    """Nodes with your key already in their metadata, as an earlier gcloud ssh leaves them:
    what is measured is connecting and running, not the key's first propagation."""
    key = load_or_create_key(home / "sandbox" / "keys" / "user_ed25519")
    public = " ".join(key.export_public_key("openssh").decode().split()[:2])
    user = getpass.getuser()
    metadata = {"ssh-keys": f"{user}:{public} {user}"}
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
                metadata=dict(metadata),
                guest_metadata=dict(metadata),
            )
        )
    fleet.save()


@contextmanager
def served_sandbox(
    home: Path, nodes: int, accelerator_type: str, *, nice: int = 0, env: dict | None = None
):
    """`nice` lowers the sandbox and its jobs: on real VMs they do not share the console's CPU.
    `env` runs it from another source tree (PYTHONPATH), for a before/after comparison."""
    write_fleet(home, nodes, accelerator_type)
    prefix = ["nice", "-n", str(nice)] if nice else []
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "console.cli", "--home", str(home), "sandbox", "serve"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=home,
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


def client_fleet(endpoint: SandboxEndpoint) -> FleetService:
    """The console's fleet service on the served sandbox, over the real TPU client."""
    return FleetService(lambda: TpuApi.for_sandbox(endpoint.api_address, endpoint.project), [ZONE])


def client_remote(fleet: FleetService, endpoint: SandboxEndpoint, home: Path) -> RemoteService:
    """A fresh ssh pool to the served sandbox's workers, as the benchmarked user."""
    options = SshOptions(
        user=getpass.getuser(),
        key_path=endpoint.user_key,
        known_hosts_path=home / "known_hosts",
        port=endpoint.ssh_port,
    )
    return RemoteService(fleet, options)
