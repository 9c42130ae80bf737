"""Fan-out over real ssh to sandbox workers: lines, exit codes, and each failure by name."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import grpc
import pytest

from console.models import FleetError, SshError
from console.sandbox.runtime import Sandbox
from console.services.remote import RemoteService, WorkerLine
from tests.conftest import fleet_for, ssh_options_for

ZONE = "us-central2-b"
# Each worker exits with its index + 3 and says who it is, on stdout and stderr.
WHO = 'w=$(basename "$HOME"); echo "out from $w"; echo "err from $w" >&2; exit $(( ${w#w} + 3 ))'


async def test_fan_out_tags_every_line_and_collects_each_exit_code(
    remote: RemoteService,
) -> None:
    node = await remote.fleet.find_node("demo-v4-16")
    lines: list[WorkerLine] = []
    result = await remote.run(node, "all", WHO, lines.append)
    assert sorted((ln.worker, ln.stream, ln.text) for ln in lines) == [
        (0, "err", "err from w0"),
        (0, "out", "out from w0"),
        (1, "err", "err from w1"),
        (1, "out", "out from w1"),
    ]
    assert [(o.worker, o.exit_status) for o in result.outcomes] == [(0, 3), (1, 4)]
    assert result.worst_status == 4
    assert result.summary() == "demo-v4-16: 0/2 workers ok; w0 exit 3; w1 exit 4"


async def test_a_worker_that_is_down_fails_alone(sandbox: Sandbox, remote: RemoteService) -> None:
    node = await remote.fleet.find_node("demo-v4-16")
    sandbox.set_worker_down(ZONE, "demo-v4-16", 1, True)
    lines: list[WorkerLine] = []
    result = await remote.run(node, "all", "echo alive", lines.append)
    assert [(ln.worker, ln.text) for ln in lines] == [(0, "alive")]
    w0, w1 = result.outcomes
    assert w0.ok and not w1.ok
    assert w1.error is not None and w1.error.kind == "refused"
    assert "w1" in result.summary() and "refused" in result.summary()
    assert result.worst_status == 255


async def test_worker_selection_runs_only_the_chosen_workers(remote: RemoteService) -> None:
    node = await remote.fleet.find_node("demo-v4-16")
    result = await remote.run(node, "1", "true")
    assert [o.worker for o in result.outcomes] == [1]
    with pytest.raises(FleetError, match="has 2 workers"):
        await remote.run(node, "0-3", "true")


async def test_a_preempted_node_is_refused_before_dialling(remote: RemoteService) -> None:
    node = await remote.fleet.find_node("demo-spot-v4-8")
    with pytest.raises(FleetError, match="PREEMPTED") as err:
        await remote.run(node, "all", "true")
    assert "create it again" in err.value.remedy


async def test_without_guest_attributes_the_first_key_is_pinned_and_a_change_refused(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.faults.inject(
        "GetGuestAttributes",
        grpc.StatusCode.FAILED_PRECONDITION,
        times=None,
        message="guest attributes disabled",
    )
    first = RemoteService(fleet_for(sandbox), ssh_options_for(sandbox, tmp_path))
    node = await first.fleet.find_node("demo-v4-8")
    try:
        assert (await first.run(node, "all", "true")).worst_status == 0
    finally:
        await first.close()
    alias = f"tpu.{node.node_id}-0"
    known = (tmp_path / "known_hosts").read_text()
    assert known.startswith(f"{alias} ssh-ed25519 ")
    # The worker's host key changes (same node id): the pinned key no longer matches.
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    (tmp_path / "known_hosts").write_text(f"{alias} {impostor}")
    second = RemoteService(fleet_for(sandbox), ssh_options_for(sandbox, tmp_path))
    try:
        result = await second.run(node, "all", "echo should-not-run")
    finally:
        await second.close()
        await first.fleet.close()
        await second.fleet.close()
    error = result.outcomes[0].error
    assert error is not None and error.kind == "host_key"
    assert alias in error.reason and "remove the lines" in error.remedy


async def test_a_missing_key_says_how_gcloud_creates_it(sandbox: Sandbox, tmp_path: Path) -> None:
    service = RemoteService(
        fleet_for(sandbox), ssh_options_for(sandbox, tmp_path, key_path=str(tmp_path / "none"))
    )
    try:
        node = await service.fleet.find_node("demo-v4-8")
        result = await service.run(node, "all", "true")
    finally:
        await service.close()
        await service.fleet.close()
    error = result.outcomes[0].error
    assert isinstance(error, SshError) and error.kind == "key"
    assert "gcloud compute tpus tpu-vm ssh" in error.remedy


async def test_one_pooled_connection_per_worker_serves_many_commands(
    remote: RemoteService,
) -> None:
    import asyncio

    node = await remote.fleet.find_node("demo-v4-16")
    results = await asyncio.gather(*(remote.run(node, "all", f"echo {i}") for i in range(20)))
    assert all(r.worst_status == 0 for r in results)
    assert remote.pool.connects == 2


async def test_the_pool_reconnects_after_a_worker_comes_back(
    sandbox: Sandbox, remote: RemoteService
) -> None:
    node = await remote.fleet.find_node("demo-v4-8")
    assert (await remote.run(node, "all", "true")).worst_status == 0
    sandbox.set_worker_down(ZONE, "demo-v4-8", 0, True)
    assert (await remote.run(node, "all", "true")).outcomes[0].error is not None
    sandbox.set_worker_down(ZONE, "demo-v4-8", 0, False)
    assert (await remote.run(node, "all", "true")).worst_status == 0
    assert remote.pool.connects == 2


async def test_shared_input_reaches_a_live_worker_whole_while_another_is_down(
    sandbox: Sandbox, remote: RemoteService
) -> None:
    import io

    from console.services.remote import SharedInput

    node = await remote.fleet.find_node("demo-v4-16")
    sandbox.set_worker_down(ZONE, "demo-v4-16", 1, True)
    data = b"".join(b"line %d\n" % i for i in range(50_000))  # far more than the queues hold
    source = io.BytesIO(data)
    lines: list[WorkerLine] = []
    result = await remote.run(
        node, "all", "wc -l", lines.append, stdin=SharedInput(lambda: source.read(4096))
    )
    assert [o.ok for o in result.outcomes] == [True, False]
    assert [(ln.worker, ln.text.strip()) for ln in lines if ln.stream == "out"] == [(0, "50000")]
