"""libtpu's runtime metrics (localhost:8431 on each worker), read over the pooled ssh connection.

gRPC needs a socket. Each worker's connection gets a UNIX socket of its own in a private (0700)
directory; every connection gRPC makes to it is carried as one direct-tcpip channel to the
worker's localhost:8431, as `ssh -L` would, over the connection the pool already holds. Nothing
is installed on the VM, and nothing listens on a TCP port here that another local user could
reach (a loopback port forward would be); gRPC keeps one HTTP/2 connection, so one channel, per
worker. The client speaks local credentials, as tpu-info does: libtpu serves local callers only,
and the forward arrives at the VM's loopback from its own sshd.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import asyncssh
import grpc

from console.adapters import runtime_metrics_proto as wire
from console.adapters.ssh_pool import SshPool, SshTarget
from console.models import FleetError, SshError

TOTAL_REFRESH_S = 30.0  # HBM per chip does not change while a program runs: asked now and then
# Reconnect at once when asked again: the caller's poll is the retry policy, not gRPC's backoff.
_CHANNEL_OPTIONS = (
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.http2.bdp_probe", 0),
)


class MetricsError(FleetError):
    """Why a worker's runtime metrics could not be read.

    kinds: refused (nothing listens on the worker's localhost:8431: no TPU program, or one
    whose libtpu serves no metrics there), prohibited (its sshd forbids port forwarding),
    unreachable (no ssh connection), timeout, closed (the server went away mid-read), rpc.
    """

    def __init__(self, reason: str, remedy: str = "", *, kind: str) -> None:
        super().__init__(reason, remedy, code=kind)
        self.kind = kind


@dataclass(frozen=True)
class WorkerReading:
    """One worker's answer: per device id, HBM used and total (bytes) and duty cycle (%)."""

    worker: int
    hbm_used: dict[int, int]
    hbm_total: dict[int, int]
    duty_pct: dict[int, float]
    at: float  # time.time() of the answer
    round_trip_s: float

    @property
    def chips(self) -> tuple[int, ...]:
        return tuple(sorted({*self.hbm_used, *self.duty_pct}))


class _SshSide(asyncssh.SSHTCPSession):
    """The worker's end of one forwarded connection: its bytes go to the local socket."""

    def __init__(self, local: _LocalSide) -> None:
        self._local = local

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self._local.transport is not None:
            self._local.transport.write(data)

    def eof_received(self) -> bool:
        if self._local.transport is not None and self._local.transport.can_write_eof():
            self._local.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._local.transport is not None:
            self._local.transport.close()


class _LocalSide(asyncio.Protocol):
    """gRPC's end of one forwarded connection: read only once the ssh channel is open."""

    def __init__(self, tunnel: _Tunnel) -> None:
        self._tunnel = tunnel
        self.transport: asyncio.Transport | None = None
        self._chan: asyncssh.SSHTCPChannel | None = None
        self._opening: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if time.monotonic() < self._tunnel.quiet_until:
            # The worker just said nothing listens there (no TPU program). gRPC reconnects by
            # itself every few hundred ms; each try was a channel asked of the worker, and on
            # a pod slice those piled up by the thousand. gRPC sees a closed connection and the
            # reading keeps the worker's own answer as its reason.
            transport.close()
            self.transport = None
            return
        transport.pause_reading()  # type: ignore[attr-defined]
        self._opening = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        tunnel = self._tunnel
        try:
            chan, _ = await asyncio.wait_for(
                tunnel.conn.create_connection(
                    lambda: _SshSide(self), tunnel.dest_host, tunnel.dest_port
                ),
                tunnel.open_timeout_s,
            )
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            tunnel.last_error = tunnel.explain(exc)
            if tunnel.last_error.kind in _QUIET_AFTER:
                tunnel.quiet_until = time.monotonic() + QUIET_AFTER_REFUSAL_S
            if self.transport is not None:
                self.transport.close()
            return
        tunnel.last_error = None
        self._chan = chan
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        else:
            chan.close()

    def data_received(self, data: bytes) -> None:
        if self._chan is not None:
            self._chan.write(data)

    def eof_received(self) -> bool:
        if self._chan is not None:
            self._chan.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._chan is not None:
            self._chan.close()
        elif self._opening is not None:
            self._opening.cancel()
        self.transport = None


class _Tunnel:
    """One worker connection's local socket, forwarding to the worker's localhost:8431."""

    def __init__(
        self,
        target: SshTarget,
        conn: asyncssh.SSHClientConnection,
        path: str,
        dest_port: int,
        open_timeout_s: float,
    ) -> None:
        self.target = target
        self.conn = conn
        self.path = path
        self.dest_host = "localhost"
        self.dest_port = dest_port
        self.open_timeout_s = open_timeout_s
        self.last_error: MetricsError | None = None
        self.quiet_until = 0.0  # after a refusal: gRPC's own reconnects are not passed on
        self._server: asyncio.AbstractServer | None = None
        self.channel: grpc.aio.Channel | None = None
        self._calls: dict[str, Any] = {}
        self.totals: dict[int, int] = {}
        self.totals_at = -1e9

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _LocalSide(self), self.path)
        os.chmod(self.path, 0o600)

    def call(self, method: str) -> Any:
        """The gRPC callable for a method, on a channel opened when first needed."""
        if self.channel is None:
            self.channel = grpc.aio.secure_channel(
                f"unix:{self.path}",
                grpc.local_channel_credentials(grpc.LocalConnectionType.UDS),
                options=_CHANNEL_OPTIONS,
            )
            self._calls = {}
        if method not in self._calls:
            request, response = wire.METHODS[method]
            self._calls[method] = self.channel.unary_unary(
                method,
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )
        return self._calls[method]

    async def reset_channel(self) -> None:
        """A fresh connection next time, tried at once (the next poll is the retry)."""
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        await self.reset_channel()
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def explain(self, exc: BaseException) -> MetricsError:
        """Why the channel to localhost:8431 did not open, as the worker's sshd said it."""
        label = self.target.label
        where = f"{self.dest_host}:{self.dest_port}"
        if isinstance(exc, TimeoutError):
            return MetricsError(
                f"{label}: the channel to {where} did not open within {self.open_timeout_s:.0f} s.",
                "The VM may be overloaded or the link slow; it is tried again next poll.",
                kind="timeout",
            )
        if isinstance(exc, asyncssh.ChannelOpenError) and not self.conn.is_closed():
            if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
                return MetricsError(
                    f"{label}: its sshd refuses port forwarding ({exc.reason}).",
                    "Allow it in the VM's /etc/ssh/sshd_config (AllowTcpForwarding yes, the "
                    "default), or read the metrics with tpu-info on the VM.",
                    kind="prohibited",
                )
            return MetricsError(
                f"{label}: nothing answers on {where} ({exc.reason}).",
                "libtpu serves it only while a TPU program runs.",
                kind="refused",
            )
        return MetricsError(
            f"{label}: the ssh connection is gone ({exc}).",
            "Check the VM's state; the console reconnects on the next poll.",
            kind="unreachable",
        )


_RESET_ON = frozenset({"closed", "unreachable"})
# Answers that stand until the VM's state changes (no TPU program, forwarding refused): for about
# a poll, gRPC's reconnects are refused here instead of asking the worker again. A timeout is
# not one of them: a one-off reading asks again at once.
_QUIET_AFTER = frozenset({"refused", "prohibited"})
QUIET_AFTER_REFUSAL_S = 1.0


class RuntimeMetricsReader:
    """Reads every worker's RuntimeMetricService through one tunnel per pooled connection."""

    def __init__(
        self, pool: SshPool, *, port: int = wire.DEFAULT_PORT, timeout_s: float = 2.0
    ) -> None:
        self.pool = pool
        self.port = port
        self.timeout_s = timeout_s
        self._tunnels: dict[str, _Tunnel] = {}
        self._dir: str | None = None
        self._names = itertools.count()
        self._opening: dict[str, asyncio.Lock] = {}

    async def _tunnel(self, target: SshTarget) -> _Tunnel:
        try:
            pooled = await self.pool.connection(target)
        except SshError as exc:
            raise MetricsError(exc.reason, exc.remedy, kind="unreachable") from None
        lock = self._opening.setdefault(target.alias, asyncio.Lock())
        async with lock:
            tunnel = self._tunnels.get(target.alias)
            if tunnel is not None and tunnel.conn is pooled.conn:
                return tunnel
            if tunnel is not None:  # the pool reconnected: the old socket led to a dead link
                await tunnel.close()
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="tpuconsole-metrics-")  # 0700
            path = os.path.join(self._dir, f"{next(self._names)}.sock")
            tunnel = _Tunnel(target, pooled.conn, path, self.port, self.timeout_s)
            await tunnel.start()
            self._tunnels[target.alias] = tunnel
            return tunnel

    async def _ask(self, tunnel: _Tunnel, method: str, request: Any) -> Any:
        try:
            return await tunnel.call(method)(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise self._failure(tunnel, exc) from None

    async def _asking(self, tunnel: _Tunnel, calls: list[Any]) -> list[Any]:
        """Several calls at once; on a failure the channel is reset once all have ended (a
        channel closed under a call in flight cancels it)."""
        results = await asyncio.gather(*calls, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            # A lost connection is made afresh; a slow answer is not a broken one: resetting
            # on timeouts made a loaded VM (or sandbox) take a new connection per worker per
            # poll, and piled them up faster than it closed them (bench/metrics.py).
            if any(isinstance(f, MetricsError) and f.kind in _RESET_ON for f in failures):
                await tunnel.reset_channel()
            raise failures[0]
        return results

    def _failure(self, tunnel: _Tunnel, exc: grpc.aio.AioRpcError) -> MetricsError:
        code = exc.code()
        label = tunnel.target.label
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            if tunnel.last_error is not None:
                return tunnel.last_error
            if tunnel.conn.is_closed():
                self.pool.drop(tunnel.target)
                return tunnel.explain(ConnectionError("connection lost"))
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return MetricsError(
                f"{label}: no answer from the metrics server within {self.timeout_s:.0f} s.",
                "The VM may be overloaded; it is tried again next poll.",
                kind="timeout",
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            return MetricsError(
                f"{label}: the metrics server closed the connection ({exc.details()}).",
                "The TPU program may have just ended; it is tried again next poll.",
                kind="closed",
            )
        return MetricsError(
            f"{label}: the metrics server answered {code.name}: {exc.details()}.", kind="rpc"
        )

    async def read(self, target: SshTarget) -> WorkerReading:
        """HBM used and total and duty cycle of every chip the worker's libtpu reports."""
        tunnel = await self._tunnel(target)
        started = time.perf_counter()

        async def metric(name: str) -> dict[int, float]:
            request = wire.MetricRequest(metric_name=name)
            return wire.device_values(await self._ask(tunnel, wire.GET_RUNTIME_METRIC, request))

        fresh_total = time.monotonic() - tunnel.totals_at > TOTAL_REFRESH_S
        names = [wire.HBM_USAGE, wire.DUTY_CYCLE] + ([wire.HBM_TOTAL] if fresh_total else [])
        results = await self._asking(tunnel, [metric(n) for n in names])
        used, duty = results[0], results[1]
        if fresh_total or set(used) - set(tunnel.totals):
            totals = results[2] if fresh_total else (await self._asking(
                tunnel, [metric(wire.HBM_TOTAL)]
            ))[0]  # fmt: skip
            tunnel.totals = {d: int(v) for d, v in totals.items()}
            tunnel.totals_at = time.monotonic()
        return WorkerReading(
            target.worker,
            {d: int(v) for d, v in used.items()},
            dict(tunnel.totals),
            dict(duty),
            time.time(),
            time.perf_counter() - started,
        )

    async def supported(self, target: SshTarget, pattern: str = "") -> list[str]:
        """ListSupportedMetrics: the metric names the worker's libtpu offers."""
        tunnel = await self._tunnel(target)
        request = wire.ListSupportedMetricsRequest(filter=pattern)
        (response,) = await self._asking(
            tunnel, [self._ask(tunnel, wire.LIST_SUPPORTED_METRICS, request)]
        )
        return [m.metric_name for m in response.supported_metric]

    async def runtime_status(self, target: SshTarget) -> Any:
        """GetTpuRuntimeStatus: the host name and each core's state, as the wire message."""
        tunnel = await self._tunnel(target)
        request = wire.GetTpuRuntimeStatusRequest(include_hlo_info=False)
        (response,) = await self._asking(
            tunnel, [self._ask(tunnel, wire.GET_TPU_RUNTIME_STATUS, request)]
        )
        return response

    async def forget(self, target: SshTarget) -> None:
        tunnel = self._tunnels.pop(target.alias, None)
        if tunnel is not None:
            await tunnel.close()

    async def close(self) -> None:
        tunnels, self._tunnels = list(self._tunnels.values()), {}
        for tunnel in tunnels:
            await tunnel.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
