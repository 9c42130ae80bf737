"""One asyncssh server per sandbox worker, running commands as real local processes.

Each worker has its own directory (its HOME), its own host key and stand-ins for the TPU lockfile
and chip devices, so probes, kills and jobs exercise real processes, files and locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sys
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh

from console.adapters.runtime_metrics_proto import DEFAULT_PORT as METRICS_PORT
from console.models import accelerator_shape
from console.sandbox.engine_env import engine_env
from console.sandbox.fleet_state import SandboxNode
from console.sandbox.local_process import LocalProcess

if TYPE_CHECKING:
    from console.sandbox.chip_standins import WorkerMetricsStandIn

# AES-GCM runs in hardware through `cryptography`; chacha20-poly1305 costs more CPU per packet.
FAST_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)

# The stand-in for libtpu holding the chips: a JAX plugin (jax_plugins/tpuconsole_libtpu_standin).
LIBTPU_STANDIN = Path(__file__).resolve().parent / "libtpu_standin"
# Variables of the operator's own shell that must not leak into a "remote" worker: a worker
# has its own HOME (and so its own Hugging Face cache) and picks its engine below.
_SCRUBBED_ENV = (
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "TPUCONSOLE_HOME",
    "OLDPWD",
    "PWD",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "TPUCONSOLE_ENGINE",
    "TPUCONSOLE_ENGINE_NOTE",
    "TPUCONSOLE_SGL_JAX_PYTHON",
    "TPUCONSOLE_REEXEC",
)


@dataclass(frozen=True)
class WorkerPlace:
    """Where a sandbox worker lives on this machine and what it pretends to have."""

    root: Path
    lockfile: Path
    devices_glob: str
    devices: tuple[Path, ...]
    worker: int = 0
    hosts: int = 1
    coordinator_port: int = 0

    @classmethod
    def for_worker(cls, workers_dir: Path, node: SandboxNode, worker: int) -> WorkerPlace:
        root = workers_dir / str(node.node_id) / f"w{worker}"
        shape = accelerator_shape(node.accelerator_type)
        if shape.device_kind == "vfio":
            devices = tuple(root / "dev" / "vfio" / str(i) for i in range(shape.chips_per_host))
            glob = str(root / "dev" / "vfio" / "*")
        else:
            devices = tuple(root / "dev" / f"accel{i}" for i in range(shape.chips_per_host))
            glob = str(root / "dev" / "accel*")
        # The hosts of one slice form one JAX runtime, as on a TPU pod; their coordinator's port
        # follows from the sandbox and the node, so every worker finds it without asking, and
        # two sandboxes on one machine (two homes) do not meet on one port.
        port = 20000 + zlib.crc32(f"{workers_dir}/{node.node_id}".encode()) % 20000
        return cls(root, root / "tmp" / "libtpu_lockfile", glob, devices, worker, shape.hosts, port)

    def materialise(self) -> None:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        for device in self.devices:
            device.parent.mkdir(parents=True, exist_ok=True)
            device.touch(exist_ok=True)
        self._link_short_tmp()
        self._link_tiny_llama()

    @property
    def tmpdir(self) -> Path:
        """The worker's TMPDIR: its tmp folder, under a name as short as a VM's /tmp.

        sgl-jax makes its ZeroMQ unix sockets in TMPDIR, and a socket's path may not exceed
        107 bytes, which the worker's folder under a deep TPUCONSOLE_HOME can.
        """
        workers_dir = self.root.parent.parent
        short = _SHORT_LINKS.get(workers_dir)
        if short is None:
            short = short_name(workers_dir)
            if not (short.is_symlink() and Path(os.readlink(short)) == workers_dir):
                return self.root / "tmp"
            # Checked once per sandbox, not per command: only a sandbox whose folder is gone
            # has its link removed (link_short_name), and then its workers are gone with it.
            _SHORT_LINKS[workers_dir] = short
        return short / self.root.relative_to(workers_dir) / "tmp"

    def _link_short_tmp(self) -> None:
        link_short_name(self.root.parent.parent)

    def _link_tiny_llama(self) -> None:
        """The tiny Llama in the worker's own Hugging Face cache, where a VM that had run the
        seeds' tiny-llama preset once would have it (no hub here: the runs are offline)."""
        repo = engine_env().tiny_llama_repo
        if not repo.is_dir():
            return
        link = self.root / ".cache" / "huggingface" / "hub" / repo.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and link.resolve() == repo.resolve():
            return
        if link.is_symlink():
            link.unlink()
        if not link.exists():
            link.symlink_to(repo, target_is_directory=True)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        # The "VM's" python is the console's own (it has jax and Tunix); its chips are virtual
        # CPU devices. sgl-jax needs Python 3.12: the multi-engine runner, started with this
        # python, runs itself under TPUCONSOLE_SGL_JAX_PYTHON, the checkout's .venv-engine, so
        # every other job keeps this python. Without that env the runner uses the reference
        # engine and its first line says why.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        engine = engine_env()
        if engine.ready():
            env["TPUCONSOLE_SGL_JAX_PYTHON"] = str(engine.python)
        else:
            env["TPUCONSOLE_ENGINE"] = "reference"
            env["TPUCONSOLE_ENGINE_NOTE"] = "the sandbox has no sgl-jax: " + engine.missing()
        env.update(
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=f"--xla_force_host_platform_device_count={len(self.devices)}",
            # No network here: Hugging Face libraries use what the worker's cache holds.
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            HOME=str(self.root),
            TMPDIR=str(self.tmpdir),
            TPUCONSOLE_LOCKFILE=str(self.lockfile),
            TPUCONSOLE_DEVICES=self.devices_glob,
            TPUCONSOLE_SANDBOX="1",
            # A JAX program opens the stand-in chips as libtpu opens a VM's (see the module).
            PYTHONPATH=str(LIBTPU_STANDIN),
        )
        if self.hosts > 1:
            env.update(
                TPUCONSOLE_COORDINATOR=f"127.0.0.1:{self.coordinator_port}",
                TPUCONSOLE_NUM_PROCESSES=str(self.hosts),
                TPUCONSOLE_PROCESS_ID=str(self.worker),
            )
        return env


_SHORT_PREFIX = "tpuconsole-"
_SHORT_LINKS: dict[Path, Path] = {}


def short_name(workers_dir: Path) -> Path:
    digest = hashlib.sha1(str(workers_dir).encode()).hexdigest()[:16]
    return Path("/tmp") / (_SHORT_PREFIX + digest)


def link_short_name(workers_dir: Path) -> None:
    """/tmp/tpuconsole-<digest> → the sandbox's workers folder; links of ours whose sandbox is
    gone (a test's, a reset's) are removed on the way. Without /tmp, the long names stay."""
    link = short_name(workers_dir)
    if link.is_symlink() and Path(os.readlink(link)) == workers_dir:
        return
    if not link.parent.is_dir():
        return
    for old in link.parent.glob(_SHORT_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if old.is_symlink() and old.lstat().st_uid == os.getuid() and not old.exists():
                old.unlink()
    with contextlib.suppress(OSError):  # taken by something not ours: keep the long names
        if link.is_symlink() and link.lstat().st_uid == os.getuid():
            link.unlink()
        link.symlink_to(workers_dir, target_is_directory=True)


def load_or_create_key(path: Path, algorithm: str = "ssh-ed25519") -> asyncssh.SSHKey:
    if path.exists():
        return asyncssh.read_private_key(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key(algorithm)
    key.write_private_key(str(path))
    key.write_public_key(str(path) + ".pub")
    os.chmod(path, 0o600)
    return key


async def _pump(reader: asyncio.StreamReader, writer: asyncssh.SSHWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()


async def _feed(reader: asyncssh.SSHReader, proc: LocalProcess) -> None:
    assert proc.stdin is not None
    try:
        while chunk := await reader.read(65536):
            proc.stdin.write(chunk)
            await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError, asyncssh.Error):
        pass
    finally:
        proc.stdin.close()


# Whether `user` may log in with the key whose base64 blob is given (the guest agent's and
# OS Login's decision, made by the sandbox from the node's metadata and profiles).
Authorize = Callable[[str, str], bool]
# What answers a direct-tcpip channel to the VM's own localhost:<port> (libtpu's metrics on
# 8431); None: nothing listens there.
LocalPort = Callable[[asyncssh.SSHServerConnection], Awaitable[asyncssh.SSHForwarder]]
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class _TrackedServer(asyncssh.SSHServer):
    """Remembers its connection so the worker can cut it, as a vanished VM would; asks the
    sandbox, for each offered key, whether the VM would accept it for that user."""

    def __init__(
        self,
        live: set[asyncssh.SSHServerConnection],
        authorize: Authorize,
        local_ports: dict[int, LocalPort] | None = None,
    ) -> None:
        self._live = live
        self._authorize = authorize
        self._local_ports = local_ports or {}
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._live.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        blob = key.export_public_key("openssh").decode().split()[1]
        return self._authorize(username, blob)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):
        """`ssh -L`/direct-tcpip to the VM's own loopback: what listens there, else refused
        as sshd refuses a port nobody listens on (the machine's own ports are never reached)."""
        serve = self._local_ports.get(dest_port)
        if dest_host.lower() not in _LOOPBACK_NAMES or serve is None or self._conn is None:
            from console.sandbox.chip_standins import refused

            raise refused()
        return serve(self._conn)


class _WorkerSftp(asyncssh.SFTPServer):
    """SFTP as OpenSSH's sftp-server serves it: relative paths from the user's HOME, absolute
    ones as they are, where the worker's shell (and so `tar -C /abs`) puts them too."""

    def __init__(self, chan: asyncssh.SSHServerChannel, home: Path) -> None:
        super().__init__(chan)
        self._home = str(home).encode()

    def map_path(self, path: bytes) -> bytes:
        return path if path.startswith(b"/") else os.path.join(self._home, path)


class WorkerServer:
    """A sandbox worker's sshd: public keys as its VM would accept them, `bash -c` per command."""

    def __init__(
        self,
        place: WorkerPlace,
        host_keys: list[asyncssh.SSHKey],
        authorize: Authorize,
        metrics: WorkerMetricsStandIn | None = None,
    ) -> None:
        self.place = place
        self.host_keys = host_keys
        self.authorize = authorize
        self.metrics = metrics  # libtpu's runtime metrics stand-in on localhost:8431
        self.port = 0
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._live: set[asyncssh.SSHServerConnection] = set()

    async def start(self, hosts: list[str], port: int) -> int:
        """Listen on the worker's own addresses; OSError if one is taken at that port."""
        self.place.materialise()
        self._acceptor = await asyncssh.create_server(
            lambda: _TrackedServer(self._live, self.authorize, self._local_ports()),
            hosts,
            port,
            server_host_keys=self.host_keys,
            process_factory=self._run,
            sftp_factory=self._sftp,
            encoding=None,
            keepalive_interval=0,
            encryption_algs=FAST_CIPHERS,
        )
        self.port = self._acceptor.sockets[0].getsockname()[1]
        return self.port

    def _local_ports(self) -> dict[int, LocalPort]:
        if self.metrics is None:
            return {}
        return {METRICS_PORT: self.metrics.open}

    def _sftp(self, chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
        return _WorkerSftp(chan, self.place.root)

    async def stop(self) -> None:
        """Drop the server and every open connection, as when a VM goes away."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for conn in list(self._live):
            conn.abort()
        self._live.clear()
        if self.metrics is not None:
            await self.metrics.stop()

    async def _run(self, process: asyncssh.SSHServerProcess) -> None:
        command = process.command or "exec bash"
        env = self.place.environment()
        user = process.get_extra_info("username") or ""
        env.update(USER=user, LOGNAME=user)  # as sshd sets them for the user who logged in
        proc = await LocalProcess.spawn(["bash", "-c", command], cwd=self.place.root, env=env)
        feeder = asyncio.create_task(_feed(process.stdin, proc))
        try:
            assert proc.stdout is not None and proc.stderr is not None
            await asyncio.gather(
                _pump(proc.stdout, process.stdout), _pump(proc.stderr, process.stderr)
            )
            rc = await proc.wait()
        except (asyncssh.Error, ConnectionError, BrokenPipeError):
            # The client went away: like sshd, close the pipes and let the command find out.
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.feed_eof()
            feeder.cancel()
            return
        feeder.cancel()
        if rc < 0:
            process.exit_with_signal(signal.Signals(-rc).name.removeprefix("SIG"))
        else:
            process.exit(rc)
