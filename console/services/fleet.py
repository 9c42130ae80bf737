"""The fleet across zones: every zone listed at once, a failing zone reported, never hidden.

The UI and the headless `ls` both read the fleet through `FleetService.list_nodes`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from console.adapters.tpu_api import TpuApi
from console.models import FleetError, FleetSnapshot, Node, ZoneFailure

# Enough to overlap every zone of a large project without a burst the API would throttle.
MAX_ZONES_IN_FLIGHT = 32
# What a gone server looks like from here: worth asking where the API is served now.
LINK_CODES = frozenset({"UNAVAILABLE", "RETRY", "DEADLINE_EXCEEDED"})


class FleetService:
    """Built from a factory so the gRPC channel is opened inside the loop that uses it."""

    def __init__(
        self, api_factory: Callable[[], TpuApi], zones: Sequence[str] = (), *, label: str = ""
    ) -> None:
        self._api_factory = api_factory
        self._api: TpuApi | None = None
        self._configured_zones = tuple(zones)
        self._zones: tuple[str, ...] = tuple(zones)
        self.label = label
        # Where the API is served now, when that can move (a sandbox served again elsewhere):
        # True if it moved, and the channel must be opened anew.
        self.relink: Callable[[], Awaitable[bool]] | None = None

    @property
    def api(self) -> TpuApi:
        if self._api is None:
            self._api = self._api_factory()
        return self._api

    @property
    def project(self) -> str:
        return self.api.project

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def reconnect(self) -> None:
        """Drop the channel; the next call opens one to wherever the factory says now."""
        await self.close()

    async def _moved(self) -> bool:
        return self.relink is not None and await self.relink()

    async def zones(self) -> tuple[str, ...]:
        """The configured zones, or every location the project can see (asked once)."""
        if not self._zones:
            self._zones = tuple(await self.api.list_zones())
        return self._zones

    async def list_nodes(self, zones: Sequence[str] | None = None) -> FleetSnapshot:
        """All nodes in every zone, concurrently; zones that fail come back as unreachable."""
        await self._moved()  # a look at where the API is served costs a file read, not a call
        wanted = tuple(zones) if zones else await self.zones()
        gate = asyncio.Semaphore(MAX_ZONES_IN_FLIGHT)

        async def every_zone() -> list[list[Node] | ZoneFailure]:
            api = self.api  # missing credentials fail the whole listing, not each zone

            async def one(zone: str) -> list[Node] | ZoneFailure:
                async with gate:
                    try:
                        return await api.list_nodes(zone)
                    except FleetError as exc:
                        return ZoneFailure(zone, exc.reason, exc.remedy)

            return await asyncio.gather(*(one(z) for z in wanted))

        results = await every_zone()
        if all(isinstance(r, ZoneFailure) for r in results) and await self._moved():
            results = await every_zone()  # the API is served elsewhere now: ask it there
        nodes: list[Node] = []
        failures: list[ZoneFailure] = []
        for result in results:
            if isinstance(result, ZoneFailure):
                failures.append(result)
            else:
                nodes.extend(result)
        nodes.sort(key=lambda n: (n.zone, n.name))
        return FleetSnapshot(tuple(nodes), tuple(failures), wanted, datetime.now(UTC))

    async def list_nodes_zone_by_zone(self, zones: Sequence[str]) -> FleetSnapshot:
        """The baseline the benchmark compares against: one zone after another."""
        nodes: list[Node] = []
        failures: list[ZoneFailure] = []
        for zone in zones:
            try:
                nodes.extend(await self.api.list_nodes(zone))
            except FleetError as exc:
                failures.append(ZoneFailure(zone, exc.reason, exc.remedy))
        return FleetSnapshot(tuple(nodes), tuple(failures), tuple(zones), datetime.now(UTC))

    async def get_node(self, zone: str, name: str) -> Node:
        try:
            return await self.api.get_node(zone, name)
        except FleetError as exc:
            if exc.code not in LINK_CODES or not await self._moved():
                raise
        return await self.api.get_node(zone, name)

    async def find_node(self, name: str, zone: str = "") -> Node:
        """A node by name alone, as users type it; ambiguous or missing names say so."""
        if zone:
            return await self.get_node(zone, name)
        snapshot = await self.list_nodes()
        found = [n for n in snapshot.nodes if n.name == name]
        if len(found) == 1:
            return found[0]
        if found:
            zones = ", ".join(n.zone for n in found)
            raise FleetError(
                f"Node {name} exists in several zones ({zones}).", "Say which with --zone."
            )
        unreachable = ", ".join(f.zone for f in snapshot.unreachable)
        raise FleetError(
            f"No node named {name} in {len(snapshot.zones)} zones"
            + (f" (unreachable: {unreachable})" if unreachable else "")
            + ".",
            "`tpuconsole ls` lists the nodes.",
            code="NOT_FOUND",
        )
