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
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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

if TYPE_CHECKING:  # imported where first used: it pulls in grpc's server side
    from console.sandbox.chip_standins import WorkerMetricsStandIn

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
    # Started by a command for itself and any other (console/sandbox/serving.py): it stops once
    # no process uses it, and gives way to `tpuconsole sandbox serve`.
    background: bool = False


class SandboxBusy(Exception):
    """Another process serves this sandbox home; use its endpoint instead."""

    def __init__(self, endpoint: SandboxEndpoint) -> None:
        super().__init__(f"sandbox already served by pid {endpoint.pid} at {endpoint.api_address}")
        self.endpoint = endpoint


def sandbox_dir(home: Path) -> Path:
    return home / "sandbox"


def home_claimed(home: Path) -> bool:
    """Whether a process holds the home's serve lock (probed shared, so probes never collide)."""
    lock_path = sandbox_dir(home) / "serve.lock"
    if not lock_path.exists():
        return False
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _published(home: Path) -> SandboxEndpoint | None:
    """serve.json, if a live process wrote it (a killed server leaves its file behind)."""
    try:
        endpoint = SandboxEndpoint(**json.loads((sandbox_dir(home) / "serve.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return endpoint if _alive(endpoint.pid) else None


def read_served_endpoint(home: Path) -> SandboxEndpoint | None:
    """The endpoint of a sandbox another live process serves for this home, if any."""
    return _published(home) if home_claimed(home) else None


def wait_served_endpoint(home: Path, timeout_s: float = 60.0) -> SandboxEndpoint | None:
    """The served endpoint, waiting while the home is claimed but not published yet (a server
    starting up, or a command changing the saved state); None once nobody holds the home."""
    deadline = time.monotonic() + timeout_s
    while home_claimed(home):
        endpoint = _published(home)
        if endpoint is not None:
            return endpoint
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"{sandbox_dir(home)} has been claimed for {timeout_s:.0f} s by a process that "
                "publishes no endpoint; `fuser -v` on its serve.lock names it."
            )
        time.sleep(0.05)
    return None


def reset_sandbox(home: Path) -> None:
    """Start afresh: the default fleet, new worker directories; keys are kept."""
    served = read_served_endpoint(home)
    if served is not None:
        raise SandboxBusy(served)
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
        publish: bool = True,
        background: bool = False,
    ) -> None:
        self.home = Path(home)
        self.publishes = publish  # False: a command that changes the saved state and leaves
        self.background = background
        self.replaced: SandboxEndpoint | None = None  # the background server that gave way
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
        self._running_workers: set[tuple[int, int]] | None = None  # READY at the last sweep
        self.api_address = ""

    # ----- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def start(cls, home: Path, **kw: Any) -> Sandbox:
        """Serve the home here. A background server that serves it gives way (its users follow
        to this one); any other server raises SandboxBusy."""
        sandbox = cls(home, **kw)
        if sandbox.background:
            sandbox._claim_home()
        else:
            from console.sandbox.serving import replacing_background

            with replacing_background(sandbox.home) as replaced:
                sandbox._claim_home()
            sandbox.replaced = replaced
        sandbox._reserve_port()
        sandbox._thread = threading.Thread(target=sandbox._main, name="sandbox", daemon=True)
        sandbox._thread.start()
        sandbox._ready.wait()
        if sandbox._error is not None:
            sandbox._release_home()
            raise sandbox._error
        if sandbox.publishes:
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
            self.background,
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

    def _claim_home(self, timeout_s: float = 60.0) -> None:
        """Hold the home's serve lock, or raise SandboxBusy with the endpoint of who does.

        A home claimed by a process that has not published yet (starting, or changing the
        saved state) is waited for, never mistaken for a broken one.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            fh = open(self.dir / "serve.lock", "a+")  # noqa: SIM115 - held while serving
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                endpoint = wait_served_endpoint(self.home, max(0.1, deadline - time.monotonic()))
                if endpoint is not None:
                    raise SandboxBusy(endpoint) from None
                continue  # released meanwhile, or only probed for an instant: claim again
            self._lock_fh = fh
            with contextlib.suppress(FileNotFoundError):  # a killed server's, now stale
                (self.dir / "serve.json").unlink()
            return

    def _publish(self) -> None:
        info = self.dir / "serve.json"
        tmp = info.with_name(f"serve.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self.endpoint)))
        os.replace(tmp, info)  # readers never see half a file

    def unpublish(self) -> None:
        """Still serving, but no new process joins: they wait until it publishes again or goes
        (a background server about to stop looks once more for a late user)."""
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "serve.json").unlink()

    def republish(self) -> None:
        self._publish()

    def _release_home(self) -> None:
        if self._lock_fh is not None:
            if self.publishes:
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
        if self.dir.is_dir():  # not when its home was deleted under it: nothing to keep
            self.fleet.save()
            self._end_gone_workers()  # a node preempted or deleted just now takes its processes
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
            await asyncio.to_thread(self._end_gone_workers)
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
            gone = self._take_gone_workers()
            if gone:
                await asyncio.to_thread(self._end_workers, gone)
            if self.with_ssh:
                await self._reconcile()
        for server in list(self._servers.values()):
            await server.stop()
        self._servers.clear()
        await self.emulator.stop()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the sandbox's own loop from any other thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ----- the processes of workers whose VM is gone ------------------------------------------
    def _ready_workers(self) -> set[tuple[int, int]]:
        with self.fleet._lock:
            return {
                (n.node_id, w)
                for n in self.fleet.nodes.values()
                if n.state == "READY"
                for w in range(n.hosts)
            }

    def _take_gone_workers(self) -> set[tuple[int, int]]:
        """Workers that ran when last looked (any on disk, the first time) whose VM does not
        run now; from now on, the ones that run are those of READY nodes."""
        if self._running_workers is None:
            self._running_workers = set()
            workers = self.dir / "workers"
            for node_dir in workers.iterdir() if workers.is_dir() else ():
                for worker_dir in node_dir.iterdir() if node_dir.name.isdigit() else ():
                    if worker_dir.name[:1] == "w" and worker_dir.name[1:].isdigit():
                        self._running_workers.add((int(node_dir.name), int(worker_dir.name[1:])))
        ready = self._ready_workers()
        gone, self._running_workers = self._running_workers - ready, ready
        return gone

    def _end_workers(self, gone: set[tuple[int, int]]) -> None:
        """Kill every process of workers whose node was deleted, preempted or stopped.

        A real VM takes its processes with it; here they would run on, holding this
        machine's CPU and what they hold (ports, files), while the console says the node is
        gone. Only processes the worker started are found (worker_processes.py).
        """
        from console.sandbox.worker_processes import kill_worker_processes

        if gone:
            workers = self.dir / "workers"
            kill_worker_processes(workers / str(node_id) / f"w{w}" for node_id, w in gone)

    def _end_gone_workers(self) -> None:
        self._end_workers(self._take_gone_workers())

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
        place = self.worker_place(node, worker)
        return WorkerMetricsStandIn(
            place.devices,
            node.hostname(worker),
            self._holders,
            HBM_PER_CHIP.get(version, HBM_PER_CHIP["v4"]),
            place.root,
        )

    def set_metrics_port_closed(self, zone: str, name: str, worker: int, closed: bool) -> None:
        """Let a worker's chips be held while nothing answers on its localhost:8431 (a libtpu
        without runtime metrics, or one told to serve them elsewhere): fault tests."""
        metrics = self._serving_metrics(zone, name, worker)
        metrics.closed = closed
        if closed:
            self.call(metrics.stop())

    def metrics_opens(self, zone: str, name: str, worker: int) -> int:
        """How many channels to its localhost:8431 a worker's sshd was asked for."""
        return self._serving_metrics(zone, name, worker).opens

    def _serving_metrics(self, zone: str, name: str, worker: int) -> WorkerMetricsStandIn:
        server = self._servers.get(self._worker_key(self.fleet.get(zone, name), worker))
        if server is None or server.metrics is None:
            raise KeyError(f"{name} w{worker} is not serving")
        return server.metrics

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
