"""The running sandbox: the TPU API emulator and the workers' ssh servers on their own thread.

A thread of its own keeps the "cloud" off the console's event loop, as a real API would be.
Only one process serves a given sandbox home at a time; others connect to it (serve.json).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import random
import socket
import threading
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from console.sandbox.fleet_state import (
    SANDBOX_ACCOUNT,
    SANDBOX_PROJECT,
    SandboxFleet,
    SandboxNode,
    SandboxTiming,
    loopback,
)
from console.sandbox.oslogin_emulator import SERVICE as OSLOGIN_SERVICE
from console.sandbox.oslogin_emulator import OsLoginEmulator
from console.sandbox.tpu_emulator import TpuEmulator

T = TypeVar("T")
TICK_S = 0.1  # how often states advance and ssh servers follow them
# The host key types each worker has and publishes, as a TPU VM's sshd does (less ssh-rsa,
# whose key generation would slow every fresh sandbox down).
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256")
# Marks this sandbox's ssh port as taken, for other sandboxes on the machine: no worker
# address is ever 127.0.0.x (node ids start above 255).
PORT_RESERVATION_ADDRESS = "127.0.0.254"


@dataclass(frozen=True)
class SandboxEndpoint:
    """What a client needs to use a sandbox: the API address, the project, the ssh key, the
    one port its workers' sshds listen on (each on its own address) and your account."""

    api_address: str
    project: str
    user_key: str
    home: str
    pid: int
    ssh_port: int = 22
    account: str = SANDBOX_ACCOUNT


class SandboxBusy(Exception):
    """Another process serves this sandbox home; use its endpoint instead."""

    def __init__(self, endpoint: SandboxEndpoint) -> None:
        super().__init__(f"sandbox already served by pid {endpoint.pid} at {endpoint.api_address}")
        self.endpoint = endpoint


def sandbox_dir(home: Path) -> Path:
    return home / "sandbox"


def read_served_endpoint(home: Path) -> SandboxEndpoint | None:
    """The endpoint of a sandbox another live process serves for this home, if any."""
    lock_path = sandbox_dir(home) / "serve.lock"
    info = sandbox_dir(home) / "serve.json"
    if not lock_path.exists() or not info.exists():
        return None
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return SandboxEndpoint(**json.loads(info.read_text()))
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def reset_sandbox(home: Path) -> None:
    """Start afresh: the default fleet, new worker directories; keys are kept."""
    if read_served_endpoint(home) is not None:
        raise SandboxBusy(read_served_endpoint(home))  # type: ignore[arg-type]
    base = sandbox_dir(home)
    for name in ("state.json",):
        with contextlib.suppress(FileNotFoundError):
            (base / name).unlink()
    workers = base / "workers"
    if workers.exists():
        import shutil

        shutil.rmtree(workers)


def _random_loopback(rng: random.Random) -> str:
    """An address in 127.128-254.x.y, where the id scheme never goes (sandbox ids stay small)."""
    return f"127.{rng.randrange(128, 255)}.{rng.randrange(256)}.{rng.randrange(2, 255)}"


class Sandbox:
    """Start with `Sandbox.start(home)`; `stop()` shuts everything down and releases the home."""

    def __init__(
        self,
        home: Path,
        *,
        ssh: bool = True,
        timing: SandboxTiming | None = None,
        fleet: SandboxFleet | None = None,
        now: float | None = None,
    ) -> None:
        self.home = Path(home)
        self.dir = sandbox_dir(self.home)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.with_ssh = ssh
        if fleet is None:
            state = self.dir / "state.json"
            kw: dict[str, Any] = {"timing": timing} if timing else {}
            fleet = (
                SandboxFleet.default(state, now=now, **kw)
                if not state.exists()
                else SandboxFleet.load_or_default(state, **kw)
            )
        self.fleet = fleet
        self.emulator = TpuEmulator(
            fleet, worker_address=self._address_of, host_keys=self._host_keys_of
        )
        self.emulator.services[OSLOGIN_SERVICE] = OsLoginEmulator(fleet).methods()
        self.faults = self.emulator.faults
        self.user_key_path = self.dir / "keys" / "user_ed25519"
        self._servers: dict[tuple[int, int], Any] = {}
        self._addresses: dict[tuple[int, int], tuple[str, str]] = {}
        self._port_holder: socket.socket | None = None
        self.ssh_port = 0
        self._held_down: set[tuple[int, int]] = set()
        self._holders: Any = None  # who holds the workers' stand-in chips, shared by all
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._lock_fh: Any = None
        self._reconciling: asyncio.Lock | None = None
        self.api_address = ""

    # ----- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def start(cls, home: Path, **kw: Any) -> Sandbox:
        sandbox = cls(home, **kw)
        sandbox._claim_home()
        sandbox._reserve_port()
        sandbox._thread = threading.Thread(target=sandbox._main, name="sandbox", daemon=True)
        sandbox._thread.start()
        sandbox._ready.wait()
        if sandbox._error is not None:
            sandbox._release_home()
            raise sandbox._error
        sandbox._publish()
        return sandbox

    @property
    def project(self) -> str:
        return SANDBOX_PROJECT

    @property
    def endpoint(self) -> SandboxEndpoint:
        return SandboxEndpoint(
            self.api_address,
            SANDBOX_PROJECT,
            str(self.user_key_path),
            str(self.home),
            os.getpid(),
            self.ssh_port,
            SANDBOX_ACCOUNT,
        )

    def _reserve_port(self) -> None:
        """One ssh port for every worker of this sandbox, free of every other sandbox's.

        Several sandboxes run on one machine (tests in parallel) with the same node ids, so
        the same worker addresses; each holds its port bound on one address of its own, and
        the kernel never hands that port to another sandbox that asks the same way.
        """
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind((PORT_RESERVATION_ADDRESS, 0))
        self._port_holder = holder
        self.ssh_port = holder.getsockname()[1]

    def _claim_home(self) -> None:
        self._lock_fh = open(self.dir / "serve.lock", "a+")  # noqa: SIM115 - held while serving
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            endpoint = read_served_endpoint(self.home)
            if endpoint is None:
                raise RuntimeError("sandbox home is locked but publishes no endpoint") from None
            raise SandboxBusy(endpoint) from None

    def _publish(self) -> None:
        info = self.dir / "serve.json"
        info.write_text(json.dumps(asdict(self.endpoint)))

    def _release_home(self) -> None:
        if self._lock_fh is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "serve.json").unlink()
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None
        if self._port_holder is not None:
            self._port_holder.close()
            self._port_holder = None

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        self._thread = None
        self.fleet.save()
        self._release_home()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            self.api_address = await self.emulator.start()
            if self.with_ssh:
                from console.sandbox.ssh_workers import load_or_create_key

                load_or_create_key(self.user_key_path)  # the key the console brings here
                await self._reconcile()
        except BaseException as exc:  # reported to the thread that called start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), TICK_S)
            self.fleet.advance()
            if self.with_ssh:
                await self._reconcile()
        for server in list(self._servers.values()):
            await server.stop()
        self._servers.clear()
        await self.emulator.stop()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the sandbox's own loop from any other thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ----- ssh workers -------------------------------------------------------------------------
    def _worker_key(self, node: SandboxNode, worker: int) -> tuple[int, int]:
        return (node.node_id, worker)

    def _address_of(self, node: SandboxNode, worker: int) -> tuple[str, str]:
        """(external, internal): where the worker's sshd listens, as its endpoint says.

        Chosen the first time the worker is seen and kept, as a VM keeps its IPs: the scheme's
        own addresses, or others in 127/8 when something already listens there at our port.
        """
        key = self._worker_key(node, worker)
        placed = self._addresses.get(key)
        if placed is None:
            placed = loopback(node.node_id, worker, -1), loopback(node.node_id, worker, 0)
            rng = random.Random(f"{self.home}/{node.node_id}/{worker}")
            for _ in range(50):
                if all(self._free(address) for address in placed):
                    break
                placed = _random_loopback(rng), _random_loopback(rng)
            self._addresses[key] = placed
        return placed

    def _free(self, address: str) -> bool:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, self.ssh_port))
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def host_key_path(self, node: SandboxNode, worker: int, algorithm: str = "ssh-ed25519") -> Path:
        suffix = "" if algorithm == "ssh-ed25519" else f"-{algorithm}"
        return self.dir / "keys" / f"host-{node.node_id}-w{worker}{suffix}"

    def _host_keys_of(self, node: SandboxNode, worker: int) -> dict[str, str]:
        """{type: blob} as the guest agent publishes each `.pub` line, split on its spaces."""
        server = self._servers.get(self._worker_key(node, worker))
        if server is None:
            return {}
        out = {}
        for key in server.host_keys:
            kind, blob = key.export_public_key("openssh").decode().split()[:2]
            out[kind] = blob
        return out

    def worker_place(self, node: SandboxNode, worker: int):
        from console.sandbox.ssh_workers import WorkerPlace

        return WorkerPlace.for_worker(self.dir / "workers", node, worker)

    async def _reconcile(self) -> None:
        """Make the running ssh servers match the nodes that are READY now."""
        if self._reconciling is None:
            self._reconciling = asyncio.Lock()
        async with self._reconciling:
            await self._reconcile_unlocked()

    async def _reconcile_unlocked(self) -> None:
        wanted: dict[tuple[int, int], tuple[SandboxNode, int]] = {}
        with self.fleet._lock:
            for node in self.fleet.nodes.values():
                if node.state == "READY":
                    for w in range(node.hosts):
                        wanted[self._worker_key(node, w)] = (node, w)
        changed = False
        for key in list(self._servers):
            if key not in wanted or key in self._held_down:
                await self._servers.pop(key).stop()
                changed = True
        for key, (node, w) in wanted.items():
            if key in self._servers or key in self._held_down:
                continue
            self._servers[key] = await self._start_worker(node, w)
            changed = True
        if changed:
            self._publish_instances()

    async def _start_worker(self, node: SandboxNode, worker: int):
        """The worker's sshd on its own two addresses; elsewhere in 127/8 if one is taken."""
        from console.sandbox.ssh_workers import WorkerServer, load_or_create_key

        key = self._worker_key(node, worker)
        host_keys = [
            load_or_create_key(self.host_key_path(node, worker, kind), kind)
            for kind in HOST_KEY_TYPES
        ]
        zone, name = node.zone, node.name

        def authorize(user: str, blob: str) -> bool:
            return self.fleet.authorized(zone, name, user, blob)

        place = self.worker_place(node, worker)
        server = WorkerServer(place, host_keys, authorize, self._metrics_standin(node, worker))
        for _ in range(3):
            try:
                await server.start(list(self._address_of(node, worker)), self.ssh_port)
            except OSError:  # taken since it was chosen: choose again
                self._addresses.pop(key, None)
                continue
            return server
        raise OSError(f"no free loopback address for {node.name} w{worker} at {self.ssh_port}")

    def _metrics_standin(self, node: SandboxNode, worker: int):
        from console.models import accelerator_shape
        from console.sandbox.chip_standins import HBM_PER_CHIP, DeviceHolders, WorkerMetricsStandIn

        if self._holders is None:
            self._holders = DeviceHolders(self.dir / "workers")
        version = accelerator_shape(node.accelerator_type).version
        return WorkerMetricsStandIn(
            self.worker_place(node, worker).devices,
            node.hostname(worker),
            self._holders,
            HBM_PER_CHIP.get(version, HBM_PER_CHIP["v4"]),
        )

    def set_metrics_port_closed(self, zone: str, name: str, worker: int, closed: bool) -> None:
        """Let a worker's chips be held while nothing answers on its localhost:8431 (a libtpu
        without runtime metrics, or one told to serve them elsewhere): fault tests."""
        node = self.fleet.get(zone, name)
        server = self._servers.get(self._worker_key(node, worker))
        if server is None or server.metrics is None:
            raise KeyError(f"{name} w{worker} is not serving")
        server.metrics.closed = closed
        if closed:
            self.call(server.metrics.stop())

    def _publish_instances(self) -> None:
        """hostname -> [internal address, port]: what IAP would know, for a stand-in gcloud."""
        table = {}
        with self.fleet._lock:
            for node in self.fleet.nodes.values():
                for w in range(node.hosts):
                    if self._worker_key(node, w) in self._servers:
                        table[node.hostname(w)] = [self._address_of(node, w)[1], self.ssh_port]
        path = self.dir / "instances.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, path)

    def set_worker_down(self, zone: str, name: str, worker: int, down: bool) -> None:
        """Stop (or bring back) one worker's ssh server, cutting its connections (fault tests)."""
        node = self.fleet.get(zone, name)
        key = self._worker_key(node, worker)
        if down:
            self._held_down.add(key)
        else:
            self._held_down.discard(key)
        self.call(self._reconcile())

    def worker_address(self, zone: str, name: str, worker: int) -> tuple[str, int] | None:
        """(address, port) of a worker's sshd while it runs, else None."""
        node = self.fleet.get(zone, name)
        if self._worker_key(node, worker) not in self._servers:
            return None
        return self._address_of(node, worker)[0], self.ssh_port
