"""Each sandbox worker's stand-in for libtpu's runtime metrics server on localhost:8431.

Served only while a process holds one of the worker's stand-in chip devices, as libtpu serves
only while a TPU program runs; reached through the worker's ssh server (direct-tcpip), as the
console reaches a real VM's. The numbers are stand-ins, named as such: HBM used is the memory
(RSS) of the processes holding a device, duty cycle the share of a core their CPU time amounts
to, each split over the devices a process holds.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import grpc

from console.adapters import runtime_metrics_proto as wire
from console.sandbox.worker_processes import runs_on

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 1 << 30
# HBM per chip by generation: tpu-info's device.TpuChip `hbm_gib` (per device) times its
# `devices_per_chip` (tpu_info/device.py, cloud-accelerator-diagnostics at fe85c12). Real v2/v3
# report per TensorCore; the sandbox has one stand-in device per chip and reports per chip.
HBM_PER_CHIP = {"v2": 16 * GIB, "v3": 32 * GIB, "v4": 32 * GIB, "v5e": 16 * GIB,
                "v5p": 95 * GIB, "v6e": 32 * GIB}  # fmt: skip
HOLDERS_TTL_S = 0.5  # one /proc scan serves every worker's requests for this long
DUTY_WINDOW_S = 1.0  # duty cycle over about the last second, as libtpu's gauge is sampled
# What OpenSSH's sshd answers a direct-tcpip open to a port nobody listens on: reason 2
# (SSH2_OPEN_CONNECT_FAILED) with strerror(ECONNREFUSED) (channels.c, channel_post_connecting).
REFUSED = "Connection refused"


def refused() -> asyncssh.ChannelOpenError:
    return asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, REFUSED)


def chip_index(path: str) -> int:
    match = re.search(r"(\d+)$", path)
    return int(match.group(1)) if match else -1


def _scan(prefix: str) -> dict[str, tuple[int, ...]]:
    """{device path: pids with it open}, for device files under `prefix`, from /proc/*/fd."""
    found: dict[str, set[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fd_dir = f"/proc/{name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith(prefix):
                found.setdefault(target, set()).add(int(name))
    return {path: tuple(sorted(pids)) for path, pids in found.items()}


def _on_worker(pids: tuple[int, ...], root: Path) -> tuple[int, ...]:
    return tuple(pid for pid in pids if runs_on(pid, root))


class DeviceHolders:
    """Who holds the sandbox's stand-in devices: one /proc scan, off the loop, shared by every
    worker's requests for HOLDERS_TTL_S (a scan reads every process's open files)."""

    def __init__(self, workers_dir: Path) -> None:
        self.prefix = str(Path(os.path.realpath(workers_dir))) + os.sep
        self._at = -1e9
        self._last: dict[str, tuple[int, ...]] = {}
        self._pending: asyncio.Future | None = None

    async def current(self) -> dict[str, tuple[int, ...]]:
        if time.monotonic() - self._at < HOLDERS_TTL_S:
            return self._last
        if self._pending is None:
            self._pending = asyncio.ensure_future(asyncio.to_thread(_scan, self.prefix))
        pending = self._pending
        try:
            result = await asyncio.shield(pending)
        finally:
            if self._pending is pending and pending.done():
                self._pending = None
        self._last, self._at = result, time.monotonic()
        return result


@dataclass(frozen=True)
class _Usage:
    rss: int
    cpu_share: float  # of one core, 0..n


class ProcessUsage:
    """RSS and CPU share of processes, from /proc/<pid>/stat; the share over about the last
    second (or since the process started, the first time it is asked)."""

    def __init__(self) -> None:
        self._samples: dict[int, deque[tuple[float, float, int]]] = {}

    def read(self, pid: int) -> _Usage | None:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                raw = fh.read()
            with open("/proc/uptime") as fh:
                uptime = float(fh.read().split()[0])
        except OSError:
            self._samples.pop(pid, None)
            return None
        fields = raw[raw.rfind(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        start, rss = int(fields[19]), int(fields[21]) * PAGE
        now = time.monotonic()
        history = self._samples.setdefault(pid, deque())
        if history and history[0][2] != start:  # another process under a reused pid
            history.clear()
        history.append((now, cpu, start))
        while len(history) > 2 and now - history[1][0] >= DUTY_WINDOW_S:
            history.popleft()
        then, cpu_then, _ = history[0]
        if now - then >= 0.2:
            share = (cpu - cpu_then) / (now - then)
        else:
            share = cpu / max(1e-3, uptime - start / CLK_TCK)
        return _Usage(rss, max(0.0, share))

    def forget_except(self, alive: set[int]) -> None:
        for pid in set(self._samples) - alive:
            del self._samples[pid]


@dataclass(frozen=True)
class StandInChip:
    """One chip's stand-in numbers, as the worker's metrics server reports them."""

    chip: int
    hbm_used: int
    hbm_total: int
    duty_pct: float
    pids: tuple[int, ...]


class WorkerMetricsStandIn:
    """One worker's metrics server: up while its chips are held, refused otherwise."""

    def __init__(
        self,
        devices: tuple[Path, ...],
        hostname: str,
        holders: DeviceHolders,
        hbm_total: int,
        root: Path | None = None,
    ) -> None:
        self.devices = {os.path.realpath(d): chip_index(str(d)) for d in devices}
        # The worker's folder: only the processes it started hold its chips, as the probe sees
        # them (a process no worker started is on no VM); None: whoever opens the files.
        self.root = root
        self.hostname = hostname
        self.holders = holders
        self.hbm_total = hbm_total
        self.closed = False  # a fault: the chips may be held, but nothing listens on 8431
        self.opens = 0  # channels asked for to localhost:8431, as the VM's sshd would log them
        self.usage = ProcessUsage()
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self._starting: asyncio.Lock | None = None

    async def chips(self) -> list[StandInChip]:
        """The held chips' numbers now; empty when no process holds any of them."""
        held = await self.holders.current()
        mine = {self.devices[p]: pids for p, pids in held.items() if p in self.devices}
        if self.root is not None:
            root = self.root
            mine = {c: kept for c, pids in mine.items() if (kept := _on_worker(pids, root))}
        if not mine:
            return []
        # A process's numbers are split over the chips of this worker it holds.
        share_of: dict[int, int] = {}
        for pids in mine.values():
            for pid in pids:
                share_of[pid] = share_of.get(pid, 0) + 1
        usage = {pid: self.usage.read(pid) for pid in share_of}
        self.usage.forget_except(set(share_of))
        out = []
        for chip, pids in sorted(mine.items()):
            live = [(u, share_of[p]) for p in pids if (u := usage.get(p)) is not None]
            used = sum(u.rss // n for u, n in live)
            duty = sum(u.cpu_share / n for u, n in live) * 100
            out.append(
                StandInChip(chip, min(used, self.hbm_total), self.hbm_total, min(duty, 100.0), pids)
            )
        return out

    async def open(self, conn: asyncssh.SSHServerConnection) -> asyncssh.SSHForwarder:
        """A direct-tcpip channel to localhost:8431: forwarded to this stand-in, or refused."""
        self.opens += 1
        if self.closed or not await self.chips():
            raise refused()
        port = await self._ensure_server()
        return await conn.forward_connection("127.0.0.1", port)

    async def _ensure_server(self) -> int:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._server is None:
                server = grpc.aio.server()
                server.add_generic_rpc_handlers((self._handler(),))
                # Local callers only, as libtpu serves (tpu-info dials it with
                # grpc.local_channel_credentials()): the ssh server's forward is local.
                self.port = server.add_secure_port(
                    "127.0.0.1:0",
                    grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP),
                )
                await server.start()
                self._server = server
            return self.port

    async def stop(self) -> None:
        """As when the TPU program exits: the server goes, and its connections with it."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0)

    def _handler(self) -> grpc.GenericRpcHandler:
        handlers = {}
        for path, (request, response) in wire.METHODS.items():
            handlers[path.rsplit("/", 1)[1]] = grpc.unary_unary_rpc_method_handler(
                self._method(path),
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(wire.SERVICE, handlers)

    def _method(self, path: str):
        async def handle(request, context: grpc.aio.ServicerContext):
            chips = await self.chips()
            if self.closed or not chips:  # the program is gone: so is its server
                asyncio.get_running_loop().create_task(self.stop())
                await context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
            if path == wire.GET_RUNTIME_METRIC:
                return await self._metric(request, context, chips)
            if path == wire.LIST_SUPPORTED_METRICS:
                return await self._supported(request, context)
            return self._status(chips)

        return handle

    async def _metric(self, request, context, chips: list[StandInChip]):
        name = request.metric_name
        values = {
            wire.HBM_USAGE: lambda c: wire.device_gauge(c.chip, as_int=c.hbm_used),
            wire.HBM_TOTAL: lambda c: wire.device_gauge(c.chip, as_int=c.hbm_total),
            wire.DUTY_CYCLE: lambda c: wire.device_gauge(c.chip, as_double=c.duty_pct),
        }.get(name)
        if values is None:
            # Listed, but nothing to report here (megascale.* outside a multi-slice run): tpu-info
            # (cli_helper.py) takes NOT_FOUND as "unavailable", and the stand-in has only these.
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Metric {name!r} is not available.")
            raise AssertionError("context.abort raises")
        metric = wire.TPUMetric(
            name=name,
            description="sandbox stand-in: " + _STANDIN_MEANING[name],
            metrics=[values(c) for c in chips],
        )
        return wire.MetricResponse(metric=metric)

    async def _supported(self, request, context):
        try:
            pattern = re.compile(request.filter) if request.filter else None
        except re.error as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Bad filter: {exc}")
        names = [n for n in wire.KNOWN_METRICS if pattern is None or pattern.fullmatch(n)]
        return wire.ListSupportedMetricsResponse(
            supported_metric=[wire.SupportedMetric(metric_name=n) for n in names]
        )

    def _status(self, chips: list[StandInChip]):
        response = wire.GetTpuRuntimeStatusResponse(host_name=self.hostname)
        for chip in chips:  # one TensorCore per stand-in chip
            state = response.core_states[chip.chip]
            state.core_id.global_core_id = chip.chip
            state.core_id.chip_id = chip.chip
            state.core_id.core_on_chip.type = wire.TENSOR_CORE
            state.core_id.core_on_chip.index = 0
        return response


_STANDIN_MEANING = {
    wire.HBM_USAGE: "RSS of the processes holding the chip's device file, split over the chips "
    "each holds",
    wire.HBM_TOTAL: "the generation's HBM per chip",
    wire.DUTY_CYCLE: "CPU time of the processes holding the chip over the last second, as a "
    "percentage of one core, split over the chips each holds",
}
