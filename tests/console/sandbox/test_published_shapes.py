"""The sandbox publishes what Google publishes; these fail if its shapes ever drift.

Sources: every real node's endpoints carry `"port": 8470` (the TPU runtime's; public TPU
fixtures such as PerfKitBenchmarker's); the guest agent writes `hostkeys/<type>` = the bare
base64 blob of each host key (GoogleCloudPlatform/guest-agent, instance_setup.go:
`writeGuestAttributes("hostkeys/"+vals[0], vals[1])`); gcloud reads `hostname` by key
(tpu_vm/ssh.py GetFromGuestAttributes) and counts workers per network config.
"""

from __future__ import annotations

import base64
import re
import socket
import struct

import asyncssh
from google.cloud import tpu_v2

from console.adapters.tpu_api import TpuApi, worker_attributes
from console.models import FleetError
from console.sandbox.fleet_state import SANDBOX_PROJECT, loopback
from console.sandbox.runtime import Sandbox
from console.services.remote import RemoteService
from tests.conftest import grant_key, sshd_up

ZONE = "us-central2-b"


def _wire_type(blob: str) -> str:
    """The key type an OpenSSH public key blob names first (RFC 4253 string)."""
    raw = base64.b64decode(blob, validate=True)
    (length,) = struct.unpack(">I", raw[:4])
    return raw[4 : 4 + length].decode()


async def test_every_endpoint_says_8470_and_exec_still_works(
    api: TpuApi, remote: RemoteService
) -> None:
    for zone in await api.list_zones():
        try:
            nodes = await api.list_nodes(zone)
        except FleetError as exc:  # asia-east1-c: listed, but no TPU access there
            assert exc.code == "PERMISSION_DENIED"
            continue
        for node in nodes:
            raw = await api.client.get_node(
                name=f"projects/{SANDBOX_PROJECT}/locations/{zone}/nodes/{node.name}"
            )
            assert raw.network_endpoints and {ep.port for ep in raw.network_endpoints} == {8470}
            if node.state == "READY" and not node.metadata.get("enable-oslogin"):
                result = await remote.run(node, "all", "true")
                assert result.worst_status == 0, result.summary()


async def test_guest_attributes_are_shaped_as_the_guest_agent_writes_them(api: TpuApi) -> None:
    name = f"projects/{SANDBOX_PROJECT}/locations/{ZONE}/nodes/demo-v4-16"
    response = await api.client.get_guest_attributes(
        request=tpu_v2.GetGuestAttributesRequest(name=name)
    )
    assert len(response.guest_attributes) == 2  # one per worker
    for worker, attributes in enumerate(response.guest_attributes):
        items = {(e.namespace, e.key): e.value for e in attributes.query_value.items}
        hostkeys = {k: v for (ns, k), v in items.items() if ns == "hostkeys"}
        assert set(hostkeys) == {"ssh-ed25519", "ecdsa-sha2-nistp256"}
        for kind, value in hostkeys.items():
            assert not re.search(r"\s", value)  # a bare blob, never a whole `type blob` line
            assert _wire_type(value) == kind
        hostnames = [v for (_, k), v in items.items() if k == "hostname"]
        assert len(hostnames) == 1 and re.fullmatch(
            rf"t1v-n-[0-9a-f]{{8}}-w-{worker}", hostnames[0]
        )
    only_keys = await api.guest_attributes(ZONE, "demo-v4-16", "hostkeys/")
    assert all(ns == "hostkeys" for worker in only_keys for ns, _ in worker)
    one = await api.guest_attributes(ZONE, "demo-v4-16", "hostkeys/ssh-ed25519")
    assert [list(worker) for worker in one] == [[("hostkeys", "ssh-ed25519")]] * 2


async def test_published_blobs_are_the_keys_the_workers_present(
    sandbox: Sandbox, api: TpuApi
) -> None:
    await grant_key(sandbox, api, ZONE, "demo-v4-16", "tester")
    node = await api.get_node(ZONE, "demo-v4-16")
    published = await api.worker_attributes(ZONE, "demo-v4-16")
    for worker, attrs in zip(node.workers, published, strict=True):
        alias = f"tpu.{node.node_id}-{worker.index}"
        for kind, blob in attrs.host_keys:  # each published key alone must verify the host
            known = asyncssh.import_known_hosts(f"{alias} {kind} {blob}\n")
            async with asyncssh.connect(
                worker.external_ip,
                sandbox.ssh_port,
                known_hosts=known,
                host_key_alias=alias,
                server_host_key_algs=[kind],
                username="tester",
                client_keys=[str(sandbox.user_key_path)],
            ) as conn:
                assert (await conn.run("echo ok", check=True)).stdout == "ok\n"


def test_the_console_reads_only_bare_blobs_of_ssh_key_types() -> None:
    blob = "AAAAC3NzaC1lZDI1NTE5AAAAIPABVWckc2BvcWQwkPOCSZm7q8yjuF+Z3mBeSkAi3AMM"
    attrs = worker_attributes(
        {
            ("hostkeys", "ssh-ed25519"): blob + "\n",  # a .pub without comment: newline kept
            ("hostkeys", "ssh-rsa"): f"ssh-rsa {blob}",  # a whole line is not a blob
            ("hostkeys", "x509-cert"): blob,  # not an ssh key type
            ("tpu", "hostname"): "t1v-n-d86a1b40-w-0",  # any namespace, as gcloud reads it
        }
    )
    assert attrs.host_keys == (("ssh-ed25519", blob),)
    assert attrs.hostname == "t1v-n-d86a1b40-w-0"


async def test_a_worker_whose_address_is_taken_moves_and_is_still_reached(
    sandbox: Sandbox, api: TpuApi, remote: RemoteService
) -> None:
    """Several sandboxes share this machine; a clash on one address must not lose a worker."""
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind((loopback(sandbox.fleet.next_id, 0, -1), sandbox.ssh_port))
    squatter.listen()
    try:
        await api.wait_operation(
            await api.create_node("us-central1-a", "clash", "v3-8", "tpu-ubuntu2204-base"),
            poll_s=0.05,
        )
        node = await api.get_node("us-central1-a", "clash")
        assert node.workers[0].external_ip != squatter.getsockname()[0]
        await sshd_up(sandbox, "us-central1-a", "clash")  # its sshd follows READY
        assert sandbox.worker_address("us-central1-a", "clash", 0) == (
            node.workers[0].external_ip,
            sandbox.ssh_port,
        )
        assert (await remote.run(node, "all", "true")).worst_status == 0
    finally:
        squatter.close()
