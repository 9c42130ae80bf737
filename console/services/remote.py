"""Commands on one, some or all workers of a node, at once, as `gcloud … ssh --worker=` does.

Each worker's failure is its own: the others finish, and the result says who failed and why.
"""

from __future__ import annotations

import asyncio
import shlex
import signal as signals
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from console.adapters.os_login import OsLoginApi
from console.adapters.ssh_pool import SshOptions, SshPool, SshTarget
from console.adapters.tpu_api import WorkerAttributes
from console.models import FleetError, Node, SshError, parse_worker_selection
from console.services.fanout_progress import FanoutProgress, ProgressSink
from console.services.fleet import FleetService
from console.services.lines import LineSplitter, decode
from console.services.ssh_access import SshAccess

SSH_FAILURE_STATUS = 255  # what ssh itself exits with when it cannot run the command


@dataclass(frozen=True)
class WorkerLine:
    worker: int
    stream: str  # "out" or "err"
    text: str


@dataclass(frozen=True)
class WorkerOutcome:
    worker: int
    exit_status: int | None = None
    exit_signal: str | None = None
    error: SshError | None = None

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def status(self) -> int:
        """A shell-style status: the exit code, 128+signal, or 255 for ssh failures."""
        if self.error is not None:
            return SSH_FAILURE_STATUS
        if self.exit_signal is not None:
            try:
                return 128 + signals.Signals[f"SIG{self.exit_signal}"].value
            except KeyError:
                return SSH_FAILURE_STATUS
        return self.exit_status or 0

    def brief(self) -> str:
        """A word or two for a list of many workers: "refused", "exit 1", "SIGKILL"."""
        if self.error is not None:
            return self.error.kind or "ssh failed"
        if self.exit_signal is not None:
            return f"SIG{self.exit_signal}"
        return f"exit {self.exit_status}"

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.error.kind}: {self.error}"
        if self.exit_signal is not None:
            return f"killed by SIG{self.exit_signal}"
        return f"exit {self.exit_status}"


@dataclass(frozen=True)
class FanoutResult:
    node: str
    outcomes: tuple[WorkerOutcome, ...]
    closing: str = ""  # "k/N ok in 3.1 s; slowest: …; failed: …" (FanoutProgress.closing)

    @property
    def worst_status(self) -> int:
        return max((o.status for o in self.outcomes), default=0)

    @property
    def failed(self) -> tuple[WorkerOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)

    def summary(self) -> str:
        ok = len(self.outcomes) - len(self.failed)
        parts = [f"{self.node}: {ok}/{len(self.outcomes)} workers ok"]
        parts += [f"w{o.worker} {o.describe()}" for o in self.failed]
        return "; ".join(parts)


LineSink = Callable[[WorkerLine], None]


class SharedInput:
    """One local input (a pipe into `tpuconsole exec`) given whole to every worker's command.

    A thread reads it (a pipe or a terminal may block for ever, and must not block the loop
    or the exit: the thread is a daemon); each worker's stream takes every chunk in order,
    a few chunks ahead at most, so a slow reader slows the reading rather than filling memory.
    """

    def __init__(self, read: Callable[[], bytes]) -> None:
        self._read = read
        self._queues: list[asyncio.Queue] = []

    def stream(self) -> _InputStream:
        queue: asyncio.Queue = asyncio.Queue(maxsize=8)
        self._queues.append(queue)
        return _InputStream(self, queue)

    def _leave(self, queue: asyncio.Queue) -> None:
        if queue in self._queues:
            self._queues.remove(queue)
        while not queue.empty():  # a put waiting for room goes through
            queue.get_nowait()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, args=(loop,), name="exec-stdin", daemon=True).start()

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                chunk = self._read()
            except OSError:
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(self._give(chunk or None), loop).result()
            except RuntimeError:  # the loop is gone: nobody wants the rest
                return
            if not chunk:
                return

    async def _give(self, chunk: bytes | None) -> None:
        for queue in list(self._queues):
            if queue in self._queues:
                await queue.put(chunk)


class _InputStream:
    """One worker's view of a SharedInput; closing it (the command ended, or never started)
    lets the others go on without it."""

    def __init__(self, shared: SharedInput, queue: asyncio.Queue) -> None:
        self._shared = shared
        self._queue = queue

    def __aiter__(self) -> _InputStream:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._queue.get()
        if chunk is None:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._shared._leave(self._queue)


def command_from_argv(argv: Sequence[str]) -> str:
    """One argument is shell text (as ssh takes it); several are quoted word by word."""
    if len(argv) == 1:
        return argv[0]
    return shlex.join(argv)


IAP_HELP = (
    "IAP needs each worker's `hostname` guest attribute: check that the "
    "compute.disableGuestAttributesAccess policy is not enforced, that the node is READY and "
    "HEALTHY, and that your firewall lets IAP (35.235.240.0/20) reach port 22."
)


def iap_command(hostname: str, port: int, zone: str, project: str) -> tuple[str, ...]:
    """gcloud's IAP tunnel for one worker, by its instance name, as `--tunnel-through-iap`."""
    return (
        "gcloud",
        "compute",
        "start-iap-tunnel",
        hostname,
        str(port),
        "--listen-on-stdin",
        "--zone",
        zone,
        "--project",
        project,
    )


class RemoteService:
    """Commands on workers, reached as `gcloud compute tpus tpu-vm ssh` reaches them."""

    def __init__(
        self,
        fleet: FleetService,
        options: SshOptions,
        *,
        internal_ip: bool = False,
        iap: bool = False,
        proxy_command: str = "",
        os_login: str = "auto",
        oslogin_api: Callable[[], OsLoginApi] | None = None,
        account: str | Callable[[], str] = "",
        relink: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.fleet = fleet
        self.pool = SshPool(options)
        self._relink = relink
        self.internal_ip = internal_ip
        self.iap = iap
        self.proxy_command = tuple(shlex.split(proxy_command))
        self.access = SshAccess(
            fleet,
            self.pool,
            options.user,
            os_login=os_login,
            oslogin_api=oslogin_api,
            account=account,
        )

    @property
    def notices(self) -> list[Callable[[str], None]]:
        """Where "adding your ssh key to NODE's metadata" and the like are told (UI, CLI)."""
        return self.access.notices

    async def close(self) -> None:
        await self.pool.close()
        await self.access.close()

    async def relink(self) -> bool:
        """Before re-resolving a node after a lost link: follow the API (and the workers' ssh
        port) to wherever they are served now; True if they moved. A no-op on Google Cloud."""
        return self._relink is not None and await self._relink()

    async def use_port(self, port: int) -> None:
        """Dial the workers at this port from now on (the sandbox served again elsewhere)."""
        if port != self.pool.options.port:
            self.pool.options = replace(self.pool.options, port=port)
            await self.pool.close()  # connections to the old server are dead anyway
        await self.access.close()  # its OS Login client too: it follows the API on next use

    async def targets(self, node: Node, selection: str = "all") -> list[SshTarget]:
        if node.state != "READY":
            remedy = (
                "Preempted spot VMs do not come back: delete it and create it again."
                if node.state == "PREEMPTED"
                else "Wait for READY, or start the node."
            )
            raise FleetError(f"{node.name} is {node.state}; ssh needs a READY node.", remedy)
        chosen = parse_worker_selection(selection, len(node.workers))
        user = await self.access.user_for(node)
        try:
            published = await self.fleet.api.worker_attributes(node.zone, node.name)
        except FleetError:
            if self.iap:
                raise FleetError(
                    f"{node.name}: its guest attributes cannot be read.", IAP_HELP
                ) from None
            published = []  # no guest attributes: trust on first use, then pin
        port = self.pool.options.port
        targets = []
        for w in chosen:
            worker = node.workers[w]
            attrs = published[w] if w < len(published) else WorkerAttributes()
            proxy = self.proxy_command
            if self.iap:
                if not attrs.hostname:
                    raise FleetError(f"{node.name} w{w} publishes no hostname.", IAP_HELP)
                proxy = iap_command(attrs.hostname, port, node.zone, node.project)
            targets.append(
                SshTarget(
                    alias=f"tpu.{node.node_id}-{w}",
                    host=worker.address(self.internal_ip),
                    port=port,
                    worker=w,
                    label=f"{node.name} w{w}",
                    host_keys=tuple(f"{kind} {blob}" for kind, blob in attrs.host_keys),
                    user=user,
                    proxy_command=proxy,
                    node=node.key,
                )
            )
        return targets

    async def run_on_targets(
        self,
        node_name: str,
        targets: Sequence[SshTarget],
        command: str | Callable[[SshTarget], str],
        on_line: LineSink | None = None,
        stdin: SharedInput | None = None,
        on_progress: ProgressSink | None = None,
    ) -> FanoutResult:
        """`command` is the same text for every worker, or made for each (its worker index).

        `on_progress` hears the fan-out's FanoutProgress as it starts and as each worker ends
        (keep it to tick a display of the slowest worker in between)."""
        inputs = {t.worker: stdin.stream() for t in targets} if stdin is not None else {}
        progress = FanoutProgress(len(targets))

        async def one(target: SshTarget) -> WorkerOutcome:
            progress.start(target.worker)
            outcome = await attempt(target)
            progress.finish(target.worker, "" if outcome.ok else outcome.brief())
            if on_progress is not None:
                on_progress(progress)
            return outcome

        async def attempt(target: SshTarget) -> WorkerOutcome:
            splitters = {"out": LineSplitter(), "err": LineSplitter()}

            def sink(stream: str) -> Callable[[bytes], None]:
                def take(chunk: bytes) -> None:
                    for line in splitters[stream].feed(chunk):
                        if on_line is not None:
                            on_line(WorkerLine(target.worker, stream, decode(line)))

                return take

            try:
                result = await self.pool.run(
                    target,
                    command(target) if callable(command) else command,
                    on_stdout=sink("out"),
                    on_stderr=sink("err"),
                    stdin=inputs.get(target.worker),
                )
            except SshError as exc:
                return WorkerOutcome(target.worker, error=exc)
            finally:
                if target.worker in inputs:
                    await inputs[target.worker].aclose()
            for stream, splitter in splitters.items():
                tail = splitter.flush()
                if tail is not None and on_line is not None:
                    on_line(WorkerLine(target.worker, stream, decode(tail)))
            return WorkerOutcome(target.worker, result.exit_status, result.exit_signal)

        if stdin is not None:
            stdin.start()
        if on_progress is not None:
            on_progress(progress)
        outcomes = await asyncio.gather(*(one(t) for t in targets))
        return FanoutResult(node_name, tuple(outcomes), progress.closing())

    async def run(
        self,
        node: Node,
        selection: str,
        command: str,
        on_line: LineSink | None = None,
        stdin: SharedInput | None = None,
        on_progress: ProgressSink | None = None,
    ) -> FanoutResult:
        return await self.run_on_targets(
            node.name, await self.targets(node, selection), command, on_line, stdin, on_progress
        )
