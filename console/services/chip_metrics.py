"""Every chip of a node's workers, live: HBM, duty cycle and the process holding it.

While anyone watches a node, its workers' runtime metrics are read about once a second (all
workers at once, one read in flight per worker) and the chips' holders every few seconds from
the TPU probe; each poll becomes one `ChipMetrics` snapshot for whoever watches. Numbers that
cannot be read say why, and numbers kept from an earlier poll say how old they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from console.adapters.runtime_metrics import MetricsError, RuntimeMetricsReader, WorkerReading
from console.adapters.ssh_pool import SshTarget
from console.models import (
    ChipMetrics,
    ChipReading,
    FleetError,
    Node,
    TpuHolder,
    WorkerChips,
    WorkerProbe,
)

NO_PROGRAM = "Libtpu metrics unavailable: no program is using the TPU."
HISTORY_S = 900.0  # per-worker duty history kept for sparklines and hang verdicts
Probe = Callable[[Node], Awaitable[list[WorkerProbe]]]
SNAPSHOT_RETRIES = 3
GOLDEN = (5**0.5 - 1) / 2
_TRANSIENT = frozenset({"waiting", "closed", "timeout"})
Listener = Callable[[ChipMetrics], None]


@dataclass(frozen=True)
class PollSettings:
    interval_s: float = 1.0  # metrics: about once a second, as tpu-info's streaming mode
    holders_every_s: float = 10.0  # the probe: which pid holds which chip
    recheck_holders_s: float = 2.0  # sooner when the metrics and the last probe disagree
    targets_every_s: float = 30.0  # re-resolve the workers' addresses after a failure


def _chip_of(device: str) -> int:
    match = re.search(r"(\d+)$", device)
    return int(match.group(1)) if match else -1


@dataclass
class _Worker:
    """What is known of one worker between polls."""

    target: SshTarget
    holders: dict[int, TpuHolder]  # chip -> holder
    probed: bool = False
    probe_error: str = ""
    last_ok: WorkerChips | None = None
    last_ok_mono: float = 0.0
    reading: asyncio.Task | None = None
    shown: WorkerChips | None = None


class _NodePoller:
    """The loop behind one watched node; runs while it has listeners."""

    def __init__(self, service: ChipMetricsService, node: Node) -> None:
        self.service = service
        self.node = node
        self.listeners: list[Listener] = []
        self.latest: ChipMetrics | None = None
        self.history: dict[int, deque[tuple[float, float | None]]] = {}
        self.workers: dict[int, _Worker] = {}
        self._task: asyncio.Task | None = None
        self._probe_task: asyncio.Task | None = None
        self._probed_at = -1e9
        self._targets_at = -1e9
        self._target_error: FleetError | None = None

    @property
    def chips_per_host(self) -> int:
        return self.node.shape.chips_per_host

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._probe_task) if t is not None]
        tasks += [w.reading for w in self.workers.values() if w.reading is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for worker in self.workers.values():
            await self.service.reader.forget(worker.target)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        phase = self.service.next_phase()
        while True:
            await self.poll_once()
            await asyncio.sleep(max(0.0, self._next_due(loop.time(), phase) - loop.time()))

    def _next_due(self, now: float, phase: float) -> float:
        """The next time in this node's own slot of the interval, at least half of one away.

        Each watched node polls at its own phase of the second, so sixteen nodes' 128 calls
        come as sixteen small bursts, not one that holds the event loop up.
        """
        interval = self.service.settings.interval_s
        slot = phase * interval
        due = ((now - slot) // interval + 1) * interval + slot
        return due + interval if due - now < interval / 2 else due

    # ----- one poll ----------------------------------------------------------------------------
    async def poll_once(self, *, wait_for_probe: bool = False) -> ChipMetrics:
        await self._ensure_targets()
        now = time.monotonic()
        first = self._probe_task is None
        if now - self._probed_at >= self.service.settings.holders_every_s:
            self._probe_soon(now)
        if (wait_for_probe or first) and self._probe_task is not None:
            # Who holds the chips decides what a refused port means: known before the first.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._probe_task)
        for worker in self.workers.values():  # one read in flight per worker, never a pile
            if worker.reading is None or worker.reading.done():
                worker.reading = asyncio.ensure_future(self._read(worker))
        pending = [w.reading for w in self.workers.values() if w.reading is not None]
        if pending:
            # A slow worker shows its last numbers (stale) rather than holding up the rest.
            await asyncio.wait(pending, timeout=self.service.settings.interval_s * 0.9)
        snapshot = self._snapshot()
        self.latest = snapshot
        for listener in list(self.listeners):
            listener(snapshot)
        return snapshot

    async def _ensure_targets(self) -> None:
        """The workers' ssh targets: once, and again (not too often) while one is unreachable."""
        lost = any(w.shown is not None and w.shown.state == "unreachable"
                   for w in self.workers.values())  # fmt: skip
        if self.workers and not lost:
            return
        now = time.monotonic()
        if now - self._targets_at < self.service.settings.targets_every_s:
            return
        self._targets_at = now
        try:
            targets = await self.service.targets(self.node)
        except FleetError as exc:
            self._target_error = exc
            return
        self._target_error = None
        for target in targets:
            known = self.workers.get(target.worker)
            if known is None:
                self.workers[target.worker] = _Worker(target, {})
            elif known.target != target:
                await self.service.reader.forget(known.target)
                known.target = target

    def _probe_soon(self, now: float) -> None:
        if self._probe_task is not None and not self._probe_task.done():
            return
        self._probed_at = now
        self._probe_task = asyncio.ensure_future(self._probe())

    async def _probe(self) -> None:
        try:
            probes = await self.service.probe(self.node)
        except FleetError as exc:
            for worker in self.workers.values():
                worker.probe_error = str(exc)
            return
        for probe in probes:
            probed = self.workers.get(probe.worker)
            if probed is None:
                continue
            worker = probed
            worker.probed = probe.report is not None
            worker.probe_error = probe.error
            if probe.report is not None:
                worker.holders = {
                    _chip_of(d): h for h in probe.report.holders for d in h.devices if d
                }

    def _disagrees(self, worker: _Worker, held: bool) -> None:
        """Metrics say a program is there (or gone) and the last probe said otherwise."""
        if worker.probed and bool(worker.holders) != held:
            now = time.monotonic()
            if now - self._probed_at >= self.service.settings.recheck_holders_s:
                self._probe_soon(now)

    async def _read(self, worker: _Worker) -> None:
        try:
            reading = await self.service.reader.read(worker.target)
        except MetricsError as exc:
            worker.shown = self._failed(worker, exc)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one worker's surprise is its own
            worker.shown = self._failed(worker, MetricsError(str(exc), kind="error"))
            return
        self._disagrees(worker, True)
        worker.shown = self._from_reading(worker, reading)
        worker.last_ok, worker.last_ok_mono = worker.shown, time.monotonic()

    # ----- what a worker shows -----------------------------------------------------------------
    def _holder_fields(self, worker: _Worker, chip: int) -> dict:
        holder = worker.holders.get(chip)
        if holder is None:
            return {}
        return {"pid": holder.pid, "command": holder.cmdline, "user": holder.user}

    def _from_reading(self, worker: _Worker, reading: WorkerReading) -> WorkerChips:
        chips = []
        for chip in sorted({*range(self.chips_per_host), *reading.chips}):
            reported = chip in reading.hbm_used or chip in reading.duty_pct
            chips.append(
                ChipReading(
                    worker.target.worker,
                    chip,
                    hbm_used=reading.hbm_used.get(chip, 0),
                    hbm_total=reading.hbm_total.get(chip),
                    duty_pct=reading.duty_pct.get(chip, 0.0),
                    missing="" if reported else "not in use by the TPU program",
                    **self._holder_fields(worker, chip),
                )
            )
        return WorkerChips(
            worker.target.worker,
            "ok",
            tuple(chips),
            read_at=datetime.fromtimestamp(reading.at, UTC),
        )

    def _failed(self, worker: _Worker, exc: MetricsError) -> WorkerChips:
        w = worker.target.worker
        if exc.kind == "refused":
            self._disagrees(worker, False)
            if worker.probed and not worker.holders:
                zero = tuple(
                    ChipReading(w, c, hbm_used=0, duty_pct=0.0, missing="no TPU program")
                    for c in range(self.chips_per_host)
                )
                return WorkerChips(
                    w,
                    "no_program",
                    zero,
                    NO_PROGRAM,
                    "Start a job on the node; libtpu serves its metrics while one runs.",
                )
            if worker.probed:
                return self._port_closed(worker, exc)
            note = f" (who holds the chips is not known: {worker.probe_error})"
            return WorkerChips(
                w,
                "no_program",
                self._blank(worker, "no answer on localhost:8431"),
                "Libtpu metrics unavailable: nothing answers on localhost:8431, so no program "
                "is using the TPU, or its libtpu serves no metrics"
                + (note if worker.probe_error else "")
                + ".",  # fmt: skip
                exc.remedy,
            )
        state = {"prohibited": "forwarding_refused"}.get(exc.kind, exc.kind)
        if state not in {"unreachable", "timeout", "closed", "forwarding_refused"}:
            state = "error"
        last = worker.last_ok
        if last is not None and state in {"unreachable", "timeout", "closed"}:
            age = time.monotonic() - worker.last_ok_mono
            kept = tuple(replace(c, missing=exc.reason, stale_s=age) for c in last.chips)
            return replace(last, state=state, chips=kept, reason=exc.reason,
                           remedy=exc.remedy, stale=True)  # fmt: skip
        return WorkerChips(w, state, self._blank(worker, exc.reason), exc.reason, exc.remedy)

    def _port_closed(self, worker: _Worker, exc: MetricsError) -> WorkerChips:
        holders = sorted({h.pid: h for h in worker.holders.values()}.values(), key=lambda h: h.pid)
        who = ", ".join(f"pid {h.pid} ({_short(h.cmdline)})" for h in holders)
        return WorkerChips(
            worker.target.worker,
            "port_closed",
            self._blank(worker, "metrics port closed"),
            f"{worker.target.label}: {who} holds the chips, but nothing answers on localhost:8431.",
            "Its libtpu serves no runtime metrics there: a libtpu too old for them, "
            "TPU_RUNTIME_METRICS_PORTS set to other ports, or a process that is no TPU "
            "program (see the probe).",
        )

    def _blank(self, worker: _Worker, why: str) -> tuple[ChipReading, ...]:
        return tuple(
            ChipReading(worker.target.worker, c, missing=why, **self._holder_fields(worker, c))
            for c in range(self.chips_per_host)
        )

    def _aged(self, shown: WorkerChips, now: float) -> WorkerChips:
        """Live numbers whose next reading is overdue (a read still in flight) are stale."""
        if shown.state != "ok" or shown.stale or shown.read_at is None:
            return shown
        age = now - shown.read_at.timestamp()
        if age <= 3 * self.service.settings.interval_s:
            return shown
        reason = f"w{shown.worker}: no new reading for {age:.0f} s."
        kept = tuple(replace(c, missing=reason, stale_s=age) for c in shown.chips)
        return replace(shown, chips=kept, stale=True, reason=reason)

    def _snapshot(self) -> ChipMetrics:
        now = time.time()
        workers = []
        count = len(self.node.workers)
        for w in range(count):
            worker = self.workers.get(w)
            shown = worker.shown if worker is not None else None
            if shown is None:
                if self._target_error is not None:
                    shown = WorkerChips(w, "unreachable", (), self._target_error.reason,
                                        self._target_error.remedy)  # fmt: skip
                else:
                    shown = WorkerChips(w, "waiting", (), "The first reading is on its way.")
            shown = self._aged(shown, now)
            workers.append(shown)
            history = self.history.setdefault(w, deque())
            known = shown.state in ("ok", "no_program")
            history.append((now, shown.peak_duty_pct if known else None))
            while history and now - history[0][0] > HISTORY_S:
                history.popleft()
        return ChipMetrics(
            self.node.key,
            self.node.name,
            datetime.fromtimestamp(now, UTC),
            tuple(workers),
            standin=self.service.standin,
        )


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class MetricsWatch:
    """One watcher's hold on a node's polling; closing the last one stops it."""

    def __init__(self, service: ChipMetricsService, key: str, listener: Listener) -> None:
        self._service = service
        self._key = key
        self._listener = listener
        self.closed = False

    @property
    def latest(self) -> ChipMetrics | None:
        poller = self._service._pollers.get(self._key)
        return poller.latest if poller is not None else None

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self._service._leave(self._key, self._listener)

    async def __aenter__(self) -> MetricsWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ChipMetricsService:
    """Polls watched nodes' chips; `watch`/`updates` subscribe, `snapshot` reads once."""

    def __init__(
        self,
        reader: RuntimeMetricsReader,
        targets: Callable[[Node], Awaitable[list[SshTarget]]],
        probe: Probe,
        *,
        settings: PollSettings | None = None,
        standin: bool = False,
    ) -> None:
        self.reader = reader
        self.targets = targets
        self.probe = probe
        self.settings = settings or PollSettings()
        self.standin = standin
        self._pollers: dict[str, _NodePoller] = {}
        self._phases = itertools.count()

    def next_phase(self) -> float:
        """Where in each interval the next watched node polls: golden-ratio steps, so any
        number of nodes lie spread over it, however many come and go."""
        return (next(self._phases) * GOLDEN) % 1.0

    @classmethod
    def for_remote(cls, remote, prober, **kw) -> ChipMetricsService:
        """Over the console's RemoteService pool and its ProbeService."""
        reader = RuntimeMetricsReader(remote.pool)
        return cls(reader, lambda node: remote.targets(node, "all"), prober.probe, **kw)

    def watch(self, node: Node, listener: Listener) -> MetricsWatch:
        """Call `listener` with each poll's snapshot of `node` until the watch is closed."""
        poller = self._pollers.get(node.key)
        if poller is None:
            poller = self._pollers[node.key] = _NodePoller(self, node)
        poller.node = node
        poller.listeners.append(listener)
        poller.start()
        return MetricsWatch(self, node.key, listener)

    async def updates(self, node: Node) -> AsyncIterator[ChipMetrics]:
        """Each poll's snapshot, newest only when the consumer falls behind."""
        queue: asyncio.Queue[ChipMetrics] = asyncio.Queue(maxsize=1)

        def put(snapshot: ChipMetrics) -> None:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(snapshot)

        async with self.watch(node, put):
            while True:
                yield await queue.get()

    async def snapshot(self, node: Node) -> ChipMetrics:
        """One reading of every worker, holders probed first (`top --json`, a node on demand)."""
        poller = self._pollers.get(node.key)
        if poller is not None and poller.latest is not None:
            return poller.latest
        poller = _NodePoller(self, node)
        try:
            await poller._ensure_targets()
            snapshot = await poller.poll_once(wait_for_probe=True)
            for _ in range(SNAPSHOT_RETRIES):
                # A first read still under way, or lost while its tunnel was being made, is
                # asked once more before a one-off reading (`top --json`) reports it.
                if not any(w.state in _TRANSIENT for w in snapshot.workers):
                    break
                snapshot = await poller.poll_once()
            return snapshot
        finally:
            await poller.stop()

    def latest(self, node_key: str) -> ChipMetrics | None:
        poller = self._pollers.get(node_key)
        return poller.latest if poller is not None else None

    def duty_history(self, node_key: str, worker: int) -> tuple[tuple[float, float | None], ...]:
        """(time, the worker's highest chip duty or None when unknown), oldest first."""
        poller = self._pollers.get(node_key)
        if poller is None:
            return ()
        return tuple(poller.history.get(worker, ()))

    async def _leave(self, key: str, listener: Listener) -> None:
        poller = self._pollers.get(key)
        if poller is None:
            return
        if listener in poller.listeners:
            poller.listeners.remove(listener)
        if not poller.listeners:
            del self._pollers[key]
            await poller.stop()

    async def close(self) -> None:
        pollers, self._pollers = list(self._pollers.values()), {}
        for poller in pollers:
            await poller.stop()
        await self.reader.close()
