"""The fleet across zones: every zone listed at once, a failing zone reported, never hidden.

The UI and the headless `ls` both read the fleet through `FleetService.list_nodes`. Zones come
from the configuration or, with none configured, from ListLocations; a discovered zone that
answers PERMISSION_DENIED or NOT_FOUND is one where the project has no TPU access (TPU Research
Cloud projects have a few zones only): it is summarised quietly and re-checked rarely.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from console.adapters.tpu_api import TpuApi
from console.models import FleetError, FleetSnapshot, Node, QueuedResource, ZoneFailure

# Enough to overlap every zone of a large project without a burst the API would throttle.
MAX_ZONES_IN_FLIGHT = 32
# A zone without TPU access is asked again this rarely (access is granted by people, slowly).
NO_ACCESS_RECHECK_S = 1800.0
NO_ACCESS_CODES = frozenset({"PERMISSION_DENIED", "NOT_FOUND"})
DISCOVERED = "discovered"
# What a gone server looks like from here: worth asking where the API is served now.
LINK_CODES = frozenset({"UNAVAILABLE", "RETRY", "DEADLINE_EXCEEDED"})


class FleetService:
    """Built from a factory so the gRPC channel is opened inside the loop that uses it."""

    def __init__(
        self,
        api_factory: Callable[[], TpuApi],
        zones: Sequence[str] = (),
        *,
        label: str = "",
        zones_source: str = "",
        recheck_s: float = NO_ACCESS_RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api_factory = api_factory
        self._api: TpuApi | None = None
        self._configured_zones = tuple(zones)
        self._zones: tuple[str, ...] = tuple(zones)
        self._real_zones: set[str] = set()  # zones known to be the project's
        self.label = label
        self.zones_source = zones_source or ("configured" if zones else DISCOVERED)
        self.recheck_s = recheck_s
        self._clock = clock
        self._no_access: dict[str, float] = {}  # discovered zone -> when it last said so
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

    @property
    def discovering(self) -> bool:
        return not self._configured_zones

    async def reconnect(self) -> None:
        """Drop the channel; the next call opens one to wherever the factory says now."""
        await self.close()

    async def _moved(self) -> bool:
        return self.relink is not None and await self.relink()

    async def zones(self) -> tuple[str, ...]:
        """The configured zones, or every location the project can see (asked once)."""
        if not self._zones:
            self._zones = tuple(await self.api.list_zones())
            self._real_zones.update(self._zones)
        return self._zones

    def _due(self, zones: Sequence[str]) -> tuple[str, ...]:
        """The zones to ask now: all but those without access whose re-check is not due."""
        now = self._clock()
        return tuple(
            z for z in zones if now - self._no_access.get(z, -self.recheck_s) >= self.recheck_s
        )

    async def _check_unknown_zones(self, doubtful: Sequence[str]) -> None:
        """A zone that lists no node or refuses must be one of the project's to be shown so:
        `--zone nowhere-1` is a typo, not an empty or forbidden zone. ListLocations is asked
        only then, and once per zone."""
        unsure = [z for z in doubtful if z not in self._real_zones]
        if not unsure:
            return
        try:
            known = set(await self.api.list_zones())
        except FleetError:
            return  # the locations cannot be listed now: say nothing rather than guess
        self._real_zones.update(known)
        unknown = [z for z in unsure if z not in known]
        if unknown:
            raise FleetError(
                f"{', '.join(unknown)} {'is not a zone' if len(unknown) == 1 else 'are not zones'}"
                f" of project {self.project} ({len(known)} zones have TPUs: "
                f"{', '.join(sorted(known)[:6])}{', …' if len(known) > 6 else ''}).",
                "Check the spelling, or leave --zone out to list every zone.",
                code="INVALID_ARGUMENT",
            )

    async def list_nodes(self, zones: Sequence[str] | None = None) -> FleetSnapshot:
        """All nodes in every zone, concurrently; zones that fail come back as unreachable.

        Zones given here or configured are the user's: any failure there is a banner. Legacy
        v1 TPU Nodes are left out (their names in `legacy`), as `gcloud compute tpus tpu-vm
        list` leaves them out.
        """
        await self._moved()  # a look at where the API is served costs a file read, not a call
        _ = self.api  # missing credentials fail the whole listing, not each zone
        discovering = self.discovering and not zones
        known = tuple(zones) if zones else await self.zones()
        wanted = self._due(known) if discovering else known
        gate = asyncio.Semaphore(MAX_ZONES_IN_FLIGHT)

        queued: dict[str, list[QueuedResource] | ZoneFailure] = {}

        async def every_zone() -> dict[str, list[Node] | ZoneFailure]:
            api = self.api

            async def one(zone: str) -> list[Node] | ZoneFailure:
                """The zone's nodes and its queued resources, asked at once."""
                async with gate:
                    nodes, requests = await asyncio.gather(
                        api.list_nodes(zone),
                        api.list_queued_resources(zone),
                        return_exceptions=True,
                    )
                for answer in (nodes, requests):
                    if isinstance(answer, BaseException) and not isinstance(answer, FleetError):
                        raise answer
                if isinstance(requests, FleetError):
                    queued[zone] = ZoneFailure(
                        zone, requests.reason, requests.remedy, requests.code
                    )
                elif not isinstance(requests, BaseException):
                    queued[zone] = requests
                if isinstance(nodes, FleetError):
                    return ZoneFailure(zone, nodes.reason, nodes.remedy, nodes.code)
                assert not isinstance(nodes, BaseException)  # re-raised above
                return nodes

            answers = await asyncio.gather(*(one(z) for z in wanted))
            return dict(zip(wanted, answers, strict=True))

        results = await every_zone()
        failed = [r for r in results.values() if isinstance(r, ZoneFailure)]
        if results and len(failed) == len(results) and await self._moved():
            results = await every_zone()  # the API is served elsewhere now: ask it there
        if discovering:
            self._note_access(results)
        nodes: list[Node] = []
        failures: list[ZoneFailure] = []
        requests: list[QueuedResource] = []
        for zone, result in results.items():
            if isinstance(result, ZoneFailure):
                if zone not in self._no_access:
                    failures.append(result)
                continue
            nodes.extend(result)
            listed_requests = queued.get(zone, [])
            if isinstance(listed_requests, ZoneFailure):  # nodes listed, requests not: say so
                failures.append(listed_requests)
            else:
                requests.extend(listed_requests)
        answered = {n.zone for n in nodes} | {r.zone for r in requests} | {f.zone for f in failures}
        doubtful = [z for z in wanted if z not in answered and z not in self._no_access]
        if not discovering:  # a zone the user named that refuses may be a typo: Google says
            # "Location X is not found or access is unauthorized" for both
            doubtful += [f.zone for f in failures if f.code in NO_ACCESS_CODES]
        await self._check_unknown_zones(doubtful)
        legacy = tuple(sorted(n.key for n in nodes if n.legacy))
        shown = sorted((n for n in nodes if not n.legacy), key=lambda n: (n.zone, n.name))
        no_access = tuple(z for z in known if z in self._no_access) if discovering else ()
        listed = tuple(z for z in known if z not in no_access)
        return FleetSnapshot(
            tuple(shown),
            tuple(failures),
            listed,
            datetime.now(UTC),
            no_access=no_access,
            zones_source=self.zones_source,
            legacy=legacy,
            queued_resources=tuple(sorted(requests, key=lambda q: (q.zone, q.name))),
        )

    def _note_access(self, results: dict[str, list[Node] | ZoneFailure]) -> None:
        """Remember the discovered zones without TPU access; forget those that answer again.

        When not one zone answers, the fault is the project's (wrong project, API disabled),
        not the zones': then nothing is remembered and every zone shows as unreachable.
        """
        now = self._clock()
        denied = [
            z
            for z, r in results.items()
            if isinstance(r, ZoneFailure) and r.code in NO_ACCESS_CODES
        ]
        answered = [z for z, r in results.items() if not isinstance(r, ZoneFailure)]
        for zone in answered:
            self._no_access.pop(zone, None)
        if not answered:  # every zone asked refused: the project's fault, shown as such
            return
        for zone in denied:
            self._no_access[zone] = now

    async def list_nodes_zone_by_zone(self, zones: Sequence[str]) -> FleetSnapshot:
        """The baseline the benchmark compares against: one zone after another."""
        nodes: list[Node] = []
        failures: list[ZoneFailure] = []
        for zone in zones:
            try:
                nodes.extend(await self.api.list_nodes(zone))
            except FleetError as exc:
                failures.append(ZoneFailure(zone, exc.reason, exc.remedy, exc.code))
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
