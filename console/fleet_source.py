"""Which fleet the console talks to: the sandbox (started here or joined) or Google Cloud.

The one place that may start the sandbox; everything after it sees only a FleetService.
"""

from __future__ import annotations

from dataclasses import dataclass

from console.adapters.tpu_api import TpuApi
from console.sandbox.runtime import Sandbox, SandboxBusy, SandboxEndpoint, read_served_endpoint
from console.services.fleet import FleetService
from console.services.settings import Settings


@dataclass
class FleetSource:
    fleet: FleetService
    label: str
    sandbox: Sandbox | None = None
    endpoint: SandboxEndpoint | None = None

    @property
    def is_sandbox(self) -> bool:
        return self.endpoint is not None

    def close(self) -> None:
        """Stop a sandbox this process started; a joined one belongs to its own process."""
        if self.sandbox is not None:
            self.sandbox.stop()
            self.sandbox = None


def _join_or_start(settings: Settings) -> tuple[SandboxEndpoint, Sandbox | None]:
    endpoint = read_served_endpoint(settings.home)
    if endpoint is not None:
        return endpoint, None
    try:
        sandbox = Sandbox.start(settings.home)
    except SandboxBusy as busy:  # another process won the race to serve it
        return busy.endpoint, None
    return sandbox.endpoint, sandbox


def open_fleet_source(settings: Settings) -> FleetSource:
    if settings.sandbox:
        endpoint, sandbox = _join_or_start(settings)
        fleet = FleetService(
            lambda: TpuApi.for_sandbox(endpoint.api_address, endpoint.project),
            settings.zones,
            label="SANDBOX",
        )
        return FleetSource(fleet, "SANDBOX", sandbox, endpoint)
    fleet = FleetService(
        lambda: TpuApi.for_google(settings.project, endpoint=settings.api_endpoint),
        settings.zones,
        label=f"project {settings.project}",
    )
    return FleetSource(fleet, f"project {settings.project}")
