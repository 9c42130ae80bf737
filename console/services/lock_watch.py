"""The TPU LOCK column's source: the latest probe of each node's workers and when it ran.

Session-wide, so the fleet table, the health screen and a cleanup all read the same probes;
which READY nodes are due again is decided here, not in a screen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from console.models import FleetError, Node, WorkerProbe, node_status
from console.services.probe import ProbeService


class LockWatch:
    def __init__(self, prober: ProbeService, clock: Callable[[], float] = time.monotonic) -> None:
        self.prober = prober
        self.probes: dict[str, list[WorkerProbe]] = {}  # node key -> the latest, per worker
        self.probed_at: dict[str, float] = {}
        self._clock = clock

    def status(self, node: Node) -> str:
        """The cell: "-" for a node never probed."""
        probes = self.probes.get(node.key)
        return node_status(probes) if probes else "-"

    def due(self, nodes: Iterable[Node], interval_s: float) -> list[Node]:
        """READY nodes whose last probe is older than the interval (or that never had one)."""
        now = self._clock()
        return [
            n
            for n in nodes
            if n.state == "READY" and now - self.probed_at.get(n.key, -1e9) >= interval_s
        ]

    async def probe(self, nodes: list[Node]) -> list[tuple[Node, FleetError]]:
        """Probe these nodes at once; the ones that could not be probed, with why."""
        for node in nodes:
            self.probed_at[node.key] = self._clock()
        failed: list[tuple[Node, FleetError]] = []

        async def one(node: Node) -> None:
            try:
                self.probes[node.key] = await self.prober.probe(node)
            except FleetError as exc:
                failed.append((node, exc))

        await asyncio.gather(*(one(n) for n in nodes))
        return failed
