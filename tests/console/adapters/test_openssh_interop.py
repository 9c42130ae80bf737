"""Our ssh layer against OpenSSH's own sshd on loopback: exec, a detached job, and its tail.

sshd comes from Debian's openssh-server, installed by scripts/install-test-deps.sh (make test);
where it is missing the tests skip and say so.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from console.adapters.ssh_pool import SshOptions, SshPool, SshTarget
from console.services.jobs import job_script, launch_command
from console.services.log_stream import LogStream

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, str]]:
    if not os.path.exists(SSHD):
        pytest.skip("OpenSSH sshd is not installed (scripts/install-test-deps.sh could not)")
    base = tmp_path_factory.mktemp("sshd")
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(str(base / "host_key"))
    os.chmod(base / "host_key", 0o600)
    user_key = asyncssh.generate_private_key("ssh-ed25519")
    user_key.write_private_key(str(base / "user_key"))
    (base / "authorized_keys").write_bytes(user_key.export_public_key())
    port = _free_port()
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPidFile {base / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel ERROR\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(base / "sshd_config")], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    while True:  # ready when it accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.05)
    public = " ".join(host_key.export_public_key("openssh").decode().split()[:2])
    try:
        yield port, base, public
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def pool_and_target(sshd, tmp_path: Path):
    port, base, host_public = sshd
    import getpass

    pool = SshPool(
        SshOptions(
            user=getpass.getuser(),
            key_path=str(base / "user_key"),
            known_hosts_path=tmp_path / "known_hosts",
        )
    )
    target = SshTarget("tpu.openssh-0", "127.0.0.1", port, 0, "openssh w0", (host_public,))
    try:
        yield pool, target
    finally:
        await pool.close()


async def test_exec_over_openssh_streams_output_and_exit_status(pool_and_target) -> None:
    pool, target = pool_and_target
    out: list[bytes] = []
    result = await pool.run(target, "echo hello; echo oops >&2; exit 4", on_stdout=out.append)
    assert (result.exit_status, b"".join(out)) == (4, b"hello\n")


async def test_detached_job_and_resumable_tail_over_openssh(
    pool_and_target, tmp_path: Path
) -> None:
    pool, target = pool_and_target
    job_id = f"interop-{os.getpid()}-{time.monotonic_ns()}"
    pid_out: list[bytes] = []
    script = job_script("for i in $(seq 1 500); do echo line $i; done; sleep 0.3; echo end")
    launched = await pool.run(target, launch_command(job_id, script), on_stdout=pid_out.append)
    try:
        assert launched.exit_status == 0  # returns at once: the job runs on, detached
        pid = int(b"".join(pid_out))
        stream = LogStream(pool, target, job_id, pid, tmp_path / "w0.log")
        lines: list[str] = []
        rc = await asyncio.wait_for(stream.follow(lambda w, t: lines.append(t)), timeout=60)
        assert rc == 0
        assert lines == [f"line {i}" for i in range(1, 501)] + ["end"]
        assert (tmp_path / "w0.log").read_text().splitlines() == lines
    finally:
        await pool.run(target, f'rm -rf "$HOME/.tpuconsole/jobs/{job_id}"')


async def test_a_wrong_host_key_is_refused_by_alias(sshd, tmp_path: Path) -> None:
    import getpass

    port, base, _ = sshd
    other = " ".join(
        asyncssh.generate_private_key("ssh-ed25519")
        .export_public_key("openssh")
        .decode()
        .split()[:2]
    )
    pool = SshPool(
        SshOptions(
            user=getpass.getuser(),
            key_path=str(base / "user_key"),
            known_hosts_path=tmp_path / "kh",
        )
    )
    try:
        with pytest.raises(Exception, match="tpu.openssh-0") as err:
            await pool.run(
                SshTarget("tpu.openssh-0", "127.0.0.1", port, 0, "openssh w0", (other,)), "true"
            )
        assert getattr(err.value, "kind", "") == "host_key"
    finally:
        await pool.close()


async def test_a_closed_port_is_refused_alike_by_openssh_and_the_sandbox(
    pool_and_target, remote
) -> None:
    """What a direct-tcpip channel to a port nobody listens on gets from OpenSSH's sshd, the
    sandbox's workers answer for libtpu's port while no TPU program runs."""
    pool, target = pool_and_target
    openssh = await pool.connection(target)
    with pytest.raises(asyncssh.ChannelOpenError) as real:
        await openssh.conn.open_connection("127.0.0.1", _free_port())
    node = await remote.fleet.find_node("demo-v4-8")
    (worker,) = await remote.targets(node, "0")
    sandbox_conn = await remote.pool.connection(worker)
    with pytest.raises(asyncssh.ChannelOpenError) as standin:
        await sandbox_conn.conn.open_connection("localhost", 8431)
    assert (real.value.code, real.value.reason) == (
        asyncssh.OPEN_CONNECT_FAILED,
        "Connection refused",
    )
    assert (standin.value.code, standin.value.reason) == (real.value.code, real.value.reason)


async def test_runtime_metrics_are_read_through_openssh_with_local_credentials(
    pool_and_target, tmp_path: Path
) -> None:
    """The tunnel (a private UNIX socket, one direct-tcpip channel per gRPC connection) through
    a real sshd to a local-credentials gRPC server: the way to a VM's libtpu on localhost."""
    from console.adapters.runtime_metrics import MetricsError, RuntimeMetricsReader
    from console.sandbox.chip_standins import DeviceHolders, WorkerMetricsStandIn

    pool, target = pool_and_target
    device = tmp_path / "dev" / "accel0"
    device.parent.mkdir()
    device.touch()
    standin = WorkerMetricsStandIn((device,), "vm-0", DeviceHolders(tmp_path), 32 << 30)
    port = await standin._ensure_server()
    reader = RuntimeMetricsReader(pool, port=port)
    closed = RuntimeMetricsReader(pool, port=_free_port())
    try:
        with open(device, "rb"):  # this process holds the "chip"
            reading = await reader.read(target)
            assert reading.chips == (0,) and reading.hbm_used[0] > 0
            assert reading.hbm_total == {0: 32 << 30}
            assert "tpu.runtime.tensorcore.dutycycle.percent" in await reader.supported(target)
        with pytest.raises(MetricsError) as refused:
            await closed.read(target)
        assert refused.value.kind == "refused" and "Connection refused" in refused.value.reason
    finally:
        await reader.close()
        await closed.close()
        await standin.stop()
