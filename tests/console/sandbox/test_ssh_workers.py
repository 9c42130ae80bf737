"""Sandbox workers are real ssh servers running real processes in their own directories."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from console.adapters.tpu_api import TpuApi
from console.sandbox.engine_env import engine_env
from console.sandbox.runtime import Sandbox
from tests.conftest import grant_key

ZONE = "us-central2-b"


async def _connect(
    sandbox: Sandbox, api: TpuApi, zone: str, name: str, worker: int, key: str | None = None
) -> asyncssh.SSHClientConnection:
    """Straight asyncssh to the worker's published address at the sandbox's port, its
    published host keys pinned, as an earlier gcloud ssh (which put the key in) left it."""
    if key is None:
        await grant_key(sandbox, api, zone, name, "tester")
    node = await api.get_node(zone, name)
    attrs = (await api.worker_attributes(zone, name))[worker]
    host = node.workers[worker].external_ip
    known = asyncssh.import_known_hosts(
        "".join(f"tpu.{node.node_id}-{worker} {kind} {blob}\n" for kind, blob in attrs.host_keys)
    )
    return await asyncssh.connect(
        host,
        sandbox.ssh_port,
        known_hosts=known,
        host_key_alias=f"tpu.{node.node_id}-{worker}",
        username="tester",
        client_keys=[key or str(sandbox.user_key_path)],
    )


async def test_each_worker_runs_commands_in_its_own_home_with_lock_and_devices(
    sandbox: Sandbox, api: TpuApi
) -> None:
    homes = []
    for worker in (0, 1):
        async with await _connect(sandbox, api, ZONE, "demo-v4-16", worker) as conn:
            result = await conn.run(
                'pwd; echo "$HOME"; echo "$TPUCONSOLE_LOCKFILE"; ls $TPUCONSOLE_DEVICES', check=True
            )
            pwd, home, lockfile, *devices = result.stdout.split()
            assert pwd == home
            assert lockfile == f"{home}/tmp/libtpu_lockfile"
            assert [Path(d).name for d in devices] == ["accel0", "accel1", "accel2", "accel3"]
            homes.append(home)
    assert homes[0] != homes[1]


async def test_the_workers_of_a_multi_host_node_form_one_jax_runtime(
    sandbox: Sandbox, api: TpuApi
) -> None:
    """As on a v4-16: two processes, each with its own 4 chips, 8 devices in all."""
    pytest.importorskip("jax")
    probe = (
        "python -c 'from remote.grpo import start_jax; jax = start_jax(); "
        "print(jax.process_index(), jax.process_count(), jax.device_count())'"
    )

    async def run(worker: int) -> str:
        async with await _connect(sandbox, api, ZONE, "demo-v4-16", worker) as conn:
            return (await conn.run(probe, check=True)).stdout.strip()

    assert await asyncio.gather(run(0), run(1)) == ["0 2 8", "1 2 8"]


async def test_v5e_worker_has_eight_vfio_devices(sandbox: Sandbox, api: TpuApi) -> None:
    async with await _connect(sandbox, api, "europe-west4-a", "demo-v5e-8", 0) as conn:
        result = await conn.run("ls $TPUCONSOLE_DEVICES", check=True)
    assert [Path(p).parent.name for p in result.stdout.split()] == ["vfio"] * 8


async def test_exit_codes_stderr_and_stdin_pass_through(sandbox: Sandbox, api: TpuApi) -> None:
    async with await _connect(sandbox, api, ZONE, "demo-v4-8", 0) as conn:
        failed = await conn.run("echo out; echo err >&2; exit 3")
        assert (failed.exit_status, failed.stdout, failed.stderr) == (3, "out\n", "err\n")
        echoed = await conn.run("tr a-z A-Z", input="hello\n")
        assert echoed.stdout == "HELLO\n"
        killed = await conn.run("kill -TERM $$")
        assert killed.exit_signal is not None and killed.exit_signal[0] == "TERM"


async def test_a_key_the_sandbox_does_not_know_is_refused(
    sandbox: Sandbox, api: TpuApi, tmp_path: Path
) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    stranger.write_private_key(str(tmp_path / "stranger"))
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(sandbox, api, ZONE, "demo-v4-8", 0, key=str(tmp_path / "stranger"))


async def test_a_stopped_node_no_longer_answers_ssh(sandbox: Sandbox, api: TpuApi) -> None:
    host = (await api.get_node(ZONE, "demo-v4-8")).workers[0].external_ip
    await api.wait_operation(await api.stop_node(ZONE, "demo-v4-8"), poll_s=0.05)
    node = await api.get_node(ZONE, "demo-v4-8")
    assert node.state == "STOPPED" and node.workers[0].external_ip == ""
    sandbox.call(sandbox._reconcile())  # the servers follow the state on the next tick at latest
    with pytest.raises(OSError):
        await asyncssh.connect(
            host,
            sandbox.ssh_port,
            known_hosts=None,
            client_keys=[str(sandbox.user_key_path)],
            connect_timeout=2,
        )


def test_state_persists_across_restarts_and_reset_restores_defaults(tmp_path: Path) -> None:
    from console.sandbox.fleet_state import SandboxFleet
    from console.sandbox.runtime import reset_sandbox

    home = tmp_path / "h"
    with Sandbox.start(home) as first:
        first.fleet.preempt("us-central2-b", "demo-spot-v4-8")
        first.fleet.create("us-central1-a", "kept", "v3-8", "tpu-ubuntu2204-base")
    with Sandbox.start(home) as second:
        assert "us-central1-a/kept" in second.fleet.nodes
    reset_sandbox(home)
    with Sandbox.start(home) as third:
        assert "us-central1-a/kept" not in third.fleet.nodes
        assert set(third.fleet.nodes) == set(SandboxFleet.default(None).nodes)


def test_a_second_process_joins_the_served_sandbox_instead_of_starting_one(
    tmp_path: Path,
) -> None:
    from console.sandbox.runtime import SandboxBusy, read_served_endpoint

    home = tmp_path / "h"
    with Sandbox.start(home, ssh=False) as served:
        endpoint = read_served_endpoint(home)
        assert endpoint is not None and endpoint.api_address == served.api_address
        with pytest.raises(SandboxBusy):
            Sandbox.start(home)
    assert read_served_endpoint(home) is None


async def test_a_worker_runs_the_real_engine_from_the_engine_env_offline_with_a_short_tmpdir(
    sandbox: Sandbox, api: TpuApi
) -> None:
    engine = engine_env()
    if not engine.ready():
        pytest.skip(engine.missing())
    async with await _connect(sandbox, api, ZONE, "demo-v4-8", 0) as conn:
        result = await conn.run(
            'echo "$TPUCONSOLE_SGL_JAX_PYTHON|$TPUCONSOLE_ENGINE|$HF_HUB_OFFLINE|$TMPDIR"; '
            "ls ~/.cache/huggingface/hub/models--hf-internal-testing--tiny-random-LlamaForCausalLM"
            "/snapshots/*/config.json; python -c 'import sys; print(sys.version_info[:2])'",
            check=True,
        )
    python, chosen, offline, tmpdir = result.stdout.splitlines()[0].split("|")
    assert (python, chosen, offline) == (str(engine.python), "", "1")
    assert len(tmpdir) < 60 and Path(tmpdir).resolve().name == "tmp"  # room for unix sockets
    assert result.stdout.splitlines()[1].endswith("config.json")  # the tiny Llama, in its cache
    assert result.stdout.splitlines()[2] == "(3, 11)"  # every other job keeps the console's


async def test_without_the_engine_env_the_runner_says_it_runs_the_reference_engine(
    sandbox: Sandbox, api: TpuApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("jax")
    monkeypatch.setenv("TPUCONSOLE_ENGINE_ENV", str(tmp_path / "no-engine-here"))
    async with await _connect(sandbox, api, ZONE, "demo-v4-8", 0) as conn:
        result = await conn.run("python -u -m remote.multi_engine --num-engines 5")
    assert result.exit_status == 1
    assert result.stdout.splitlines()[0] == (
        "engine: reference (the sandbox has no sgl-jax: no sgl-jax environment at "
        f"{tmp_path / 'no-engine-here'}; `make` builds it where Python 3.12 exists)"
    )
