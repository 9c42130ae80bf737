"""Reaching workers as gcloud does: your key into the node's metadata, OS Login, IAP, multi-NIC.

Everything goes through the real clients (google-cloud-tpu, google-cloud-os-login, asyncssh)
against the sandbox, whose sshds accept only what the metadata or OS Login grants.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import asyncssh
import grpc
from google.cloud import tpu_v2

from console.adapters.os_login import OsLoginApi
from console.adapters.tpu_api import TpuApi
from console.sandbox.fleet_state import SANDBOX_ACCOUNT, SANDBOX_PROJECT
from console.sandbox.runtime import Sandbox
from console.services.remote import RemoteService
from tests.conftest import fleet_for, ssh_options_for, sshd_up, worker_output

ZONE = "us-central2-b"
STAND_INS = Path(__file__).resolve().parents[2] / "stand_ins"


def service(sandbox: Sandbox, tmp_path: Path, options: dict | None = None, **kw) -> RemoteService:
    """The console's fan-out, wired as FleetSource wires it for the sandbox."""
    address = sandbox.api_address
    return RemoteService(
        fleet_for(sandbox),
        ssh_options_for(sandbox, tmp_path, **(options or {})),
        oslogin_api=lambda: OsLoginApi.for_sandbox(address),
        account=SANDBOX_ACCOUNT,
        **kw,
    )


async def closing(remote: RemoteService) -> None:
    await remote.close()
    await remote.fleet.close()


def public_key(sandbox: Sandbox) -> str:
    return " ".join(Path(f"{sandbox.user_key_path}.pub").read_text().split()[:2])


async def test_a_node_without_your_key_gets_it_in_metadata_and_then_answers(
    sandbox: Sandbox, api: TpuApi, tmp_path: Path
) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    before = {
        "startup-script": "echo hello",
        "ssh-keys": f"bob:{other} bob",
    }
    await api.wait_operation(await api.update_metadata(ZONE, "demo-v4-16", before), poll_s=0.05)
    remote = service(sandbox, tmp_path)
    told: list[str] = []
    remote.notices.append(told.append)
    try:
        node = await remote.fleet.find_node("demo-v4-16")
        updates = sandbox.emulator.calls.get("UpdateNode", 0)
        result = await remote.run(node, "all", 'echo "$USER"', None)
        assert result.worst_status == 0, result.summary()
        assert told == ["adding your ssh key to demo-v4-16's metadata"]
        assert sandbox.emulator.calls["UpdateNode"] - updates == 1  # once for both workers
        after = (await api.get_node(ZONE, "demo-v4-16")).metadata
        assert after["startup-script"] == "echo hello"
        assert after["ssh-keys"].splitlines() == [
            f"bob:{other} bob",
            f"tester:{public_key(sandbox)} tester",
        ]
        assert (await worker_output(remote, node, 'echo "$USER"', 1)) == (0, "tester")
        assert told == ["adding your ssh key to demo-v4-16's metadata"]  # not twice
    finally:
        await closing(remote)


async def test_a_node_refusing_metadata_updates_names_the_permission(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.faults.inject(
        "UpdateNode",
        grpc.StatusCode.PERMISSION_DENIED,
        times=None,
        message="Permission 'tpu.nodes.update' denied on 'projects/tpuconsole-sandbox/...'",
    )
    remote = service(sandbox, tmp_path)
    try:
        node = await remote.fleet.find_node("demo-v4-8")
        result = await remote.run(node, "all", "true")
    finally:
        await closing(remote)
    error = result.outcomes[0].error
    assert error is not None and error.kind == "auth"
    assert "tpu.nodes.update" in error.reason and "roles/tpu.admin" in error.remedy
    assert f"tester:{public_key(sandbox)} tester" in error.remedy  # what to add by hand


async def test_the_os_login_node_is_reached_as_the_os_login_user_after_the_key_import(
    sandbox: Sandbox, api: TpuApi, tmp_path: Path
) -> None:
    node = await api.get_node(ZONE, "demo-oslogin-v4-8")
    assert node.metadata["enable-oslogin"] == "TRUE"
    oslogin = OsLoginApi.for_sandbox(sandbox.api_address)
    try:
        assert (await oslogin.profile(SANDBOX_ACCOUNT, SANDBOX_PROJECT)).key_blobs == ()
        remote = service(sandbox, tmp_path)
        told: list[str] = []
        remote.notices.append(told.append)
        try:
            status, user = await worker_output(remote, node, 'echo "$USER"')
        finally:
            await closing(remote)
        assert (status, user) == (0, "alice_example_com")
        assert told == [f"importing your ssh key into the OS Login profile of {SANDBOX_ACCOUNT}"]
        profile = await oslogin.profile(SANDBOX_ACCOUNT, SANDBOX_PROJECT)
    finally:
        await oslogin.close()
    assert profile.posix_user == "alice_example_com"
    assert profile.key_blobs == (public_key(sandbox).split()[1],)
    # OS Login, not metadata: the node's ssh-keys were never touched.
    assert "ssh-keys" not in (await api.get_node(ZONE, "demo-oslogin-v4-8")).metadata


async def test_with_os_login_on_a_metadata_key_is_not_enough(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """As on a VM: with enable-oslogin the guest agent's metadata keys are not installed."""
    # A console told to ignore OS Login adds the key to the metadata, and waits in vain.
    remote = service(sandbox, tmp_path, {"key_wait_s": 1.0}, os_login="false")
    try:
        node = await remote.fleet.find_node("demo-oslogin-v4-8")
        result = await remote.run(node, "all", "true")
        metadata = (await remote.fleet.get_node(ZONE, "demo-oslogin-v4-8")).metadata
    finally:
        await closing(remote)
    error = result.outcomes[0].error
    assert error is not None and error.kind == "auth" and "Still refused" in error.reason
    assert "tester:" in metadata["ssh-keys"]


async def test_a_multi_nic_node_counts_one_worker_per_network_config(
    sandbox: Sandbox, api: TpuApi, tmp_path: Path
) -> None:
    parent = f"projects/{SANDBOX_PROJECT}/locations/{ZONE}"
    nets = [
        tpu_v2.NetworkConfig(network=f"projects/{SANDBOX_PROJECT}/global/networks/{n}")
        for n in ("default", "data-net")
    ]
    operation = await api.client.create_node(
        parent=parent,
        node_id="two-nic-v4-16",
        node=tpu_v2.Node(
            accelerator_type="v4-16", runtime_version="tpu-ubuntu2204-base", network_configs=nets
        ),
    )
    await api.wait_operation(operation, poll_s=0.05)
    raw = await api.client.get_node(name=f"{parent}/nodes/two-nic-v4-16")
    assert len(raw.network_configs) == 2 and len(raw.network_endpoints) == 4
    node = await api.get_node(ZONE, "two-nic-v4-16")
    assert [w.index for w in node.workers] == [0, 1]
    assert [w.internal_ip for w in node.workers] == [
        raw.network_endpoints[0].ip_address,
        raw.network_endpoints[2].ip_address,
    ]
    # READY comes before the VMs' sshd answers (as on Google Cloud); wait for both workers'.
    await sshd_up(sandbox, ZONE, "two-nic-v4-16", (0, 1))
    remote = service(sandbox, tmp_path)
    try:
        lines: list[str] = []
        result = await remote.run(node, "all", 'basename "$HOME"', lambda ln: lines.append(ln.text))
    finally:
        await closing(remote)
    assert result.worst_status == 0 and sorted(lines) == ["w0", "w1"]


async def test_iap_tunnels_to_each_workers_hostname_through_gcloud(
    sandbox: Sandbox, api: TpuApi, tmp_path: Path, monkeypatch
) -> None:
    log = tmp_path / "gcloud.log"
    monkeypatch.setenv("PATH", f"{STAND_INS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STAND_IN_LOG", str(log))
    monkeypatch.setenv("TPUCONSOLE_SANDBOX_INSTANCES", str(sandbox.dir / "instances.json"))
    remote = service(sandbox, tmp_path, iap=True)
    try:
        node = await remote.fleet.find_node("demo-v4-16")
        lines: list[str] = []
        result = await remote.run(node, "all", 'basename "$HOME"', lambda ln: lines.append(ln.text))
    finally:
        await closing(remote)
    assert result.worst_status == 0, result.summary()
    assert sorted(lines) == ["w0", "w1"]
    hostnames = [w.hostname for w in await api.worker_attributes(ZONE, "demo-v4-16")]
    # One tunnel per connection attempt: the first ones are refused until the key lands.
    asked = sorted({tuple(json.loads(line)) for line in log.read_text().splitlines()})
    port = str(sandbox.ssh_port)
    tail = ("--listen-on-stdin", "--zone", ZONE, "--project", SANDBOX_PROJECT)
    assert asked == sorted(("compute", "start-iap-tunnel", h, port, *tail) for h in hostnames)


async def test_iap_without_hostnames_says_what_to_check(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.faults.inject("GetGuestAttributes", grpc.StatusCode.PERMISSION_DENIED, times=None)
    remote = service(sandbox, tmp_path, iap=True)
    try:
        node = await remote.fleet.find_node("demo-v4-8")
        try:
            await remote.run(node, "all", "true")
        except Exception as exc:  # noqa: BLE001 - the FleetError the user reads
            error = exc
    finally:
        await closing(remote)
    assert "guest attributes" in str(error) and "disableGuestAttributesAccess" in str(error)


async def test_a_changed_published_host_key_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    remote = service(sandbox, tmp_path)
    try:
        node = await remote.fleet.find_node("demo-v4-8")
        assert (await remote.run(node, "all", "true")).worst_status == 0
        alias = f"tpu.{node.node_id}-0"
        recorded = sorted(line.split()[:2] for line in (tmp_path / "known_hosts").open())
        assert recorded == [[alias, "ecdsa-sha2-nistp256"], [alias, "ssh-ed25519"]]
        impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
        real = sandbox.emulator.host_keys
        sandbox.emulator.host_keys = lambda n, w: {"ssh-ed25519": impostor.split()[1]}
        try:
            remote.pool.drop((await remote.targets(node, "0"))[0])
            result = await remote.run(node, "all", "echo should-not-run")
        finally:
            sandbox.emulator.host_keys = real
    finally:
        await closing(remote)
    error = result.outcomes[0].error
    assert error is not None and error.kind == "host_key" and alias in error.reason


async def test_a_key_in_the_projects_metadata_needs_no_update_of_the_node(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The sandbox's stand-in for Compute Engine project metadata, read by every guest agent."""
    sandbox.fleet.set_project_metadata("ssh-keys", f"tester:{public_key(sandbox)} tester")
    blob = public_key(sandbox).split()[1]
    for _ in range(500):  # the guest agent installs project keys after its delay too
        if sandbox.fleet.authorized(ZONE, "demo-v4-8", "tester", blob):
            break
        await asyncio.sleep(0.02)
    remote = service(sandbox, tmp_path)
    told: list[str] = []
    remote.notices.append(told.append)
    try:
        node = await remote.fleet.find_node("demo-v4-8")
        result = await remote.run(node, "all", "true")
    finally:
        await closing(remote)
    assert result.worst_status == 0 and told == []
    assert sandbox.emulator.calls.get("UpdateNode", 0) == 0
    assert "ssh-keys" not in sandbox.fleet.get(ZONE, "demo-v4-8").metadata


async def test_project_wide_os_login_is_followed_when_configured(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The TPU API shows no project metadata; `[ssh] os_login = true` says what it holds."""
    sandbox.fleet.set_project_metadata("enable-oslogin", "TRUE")
    remote = service(sandbox, tmp_path, os_login="true")
    try:
        node = await remote.fleet.find_node("demo-v4-8")
        assert "enable-oslogin" not in node.metadata  # only the project says it
        for _ in range(500):  # the guest agents follow the project's metadata after a while
            if sandbox.fleet.get(ZONE, "demo-v4-8").guest_project.get("enable-oslogin"):
                break
            await asyncio.sleep(0.02)
        assert await worker_output(remote, node, 'echo "$USER"') == (0, "alice_example_com")
    finally:
        await closing(remote)


async def test_internal_ips_are_dialled_when_asked(sandbox: Sandbox, tmp_path: Path) -> None:
    """The sandbox's internal addresses are loopback too: nothing dialled leaves this machine."""
    remote = service(sandbox, tmp_path, internal_ip=True)
    try:
        node = await remote.fleet.find_node("demo-v4-16")
        targets = await remote.targets(node)
        assert [t.host for t in targets] == [w.internal_ip for w in node.workers]
        assert all(t.host.startswith("127.") for t in targets)
        assert (await remote.run(node, "all", "true")).worst_status == 0
    finally:
        await closing(remote)
