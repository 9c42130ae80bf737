"""Which fleet the console talks to: the sandbox (started here or joined) or Google Cloud.

The one place that may start the sandbox; everything after it sees only a FleetService.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from console.adapters.os_login import OsLoginApi, adc_account
from console.adapters.ssh_pool import SshOptions
from console.adapters.tpu_api import TpuApi
from console.sandbox.runtime import Sandbox, SandboxBusy, SandboxEndpoint, read_served_endpoint
from console.services.fleet import FleetService
from console.services.remote import RemoteService
from console.services.settings import Settings

DEFAULT_KEY = "~/.ssh/google_compute_engine"  # the key gcloud creates and installs


@dataclass
class FleetSource:
    fleet: FleetService
    label: str
    settings: Settings
    sandbox: Sandbox | None = None
    endpoint: SandboxEndpoint | None = None

    def remote(self, *, internal_ip: bool = False, iap: bool = False) -> RemoteService:
        """Commands on the workers, dialled as configured (internal IPs or IAP if asked)."""
        s = self.settings
        endpoint = self.endpoint
        if endpoint is not None:
            address = endpoint.api_address

            def oslogin() -> OsLoginApi:
                return OsLoginApi.for_sandbox(address)

            account: str | Callable[[], str] = endpoint.account
        else:
            oslogin = OsLoginApi.for_google
            account = s.account or adc_account  # asked only when a node uses OS Login
        return RemoteService(
            self.fleet,
            self.ssh_options(),
            internal_ip=internal_ip or s.internal_ip,
            iap=iap or s.tunnel_through_iap,
            proxy_command=s.ssh_proxy_command,
            os_login=s.os_login,
            oslogin_api=oslogin,
            account=account,
        )

    def ssh_options(self) -> SshOptions:
        """gcloud's choices (local login name, its key, port 22) unless configured.

        The sandbox brings its own key, and its own port: its workers' sshds listen on one
        port of their loopback addresses, which it sets here as a user sets `[ssh] port`.
        """
        s = self.settings
        key = s.ssh_key or (self.endpoint.user_key if self.endpoint else DEFAULT_KEY)
        port = s.ssh_port or (self.endpoint.ssh_port if self.endpoint else 0) or 22
        return SshOptions(
            user=s.ssh_user or getpass.getuser(),
            key_path=str(Path(key).expanduser()),
            known_hosts_path=s.home / "known_hosts",
            jump_host=s.ssh_jump_host,
            port=port,
        )

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
        return FleetSource(fleet, "SANDBOX", settings, sandbox, endpoint)
    fleet = FleetService(
        lambda: TpuApi.for_google(settings.project, endpoint=settings.api_endpoint),
        settings.zones,
        label=f"project {settings.project}",
    )
    return FleetSource(fleet, f"project {settings.project}", settings)
