"""The console's wiring: which fleet it talks to, and every service opened and closed together.

Which fleet: the sandbox (served here or joined) or Google Cloud. The one place that may start
the sandbox; everything after it sees only a FleetService. A process on the sandbox registers
itself as one of its users, and follows it when it is served again elsewhere (a new API address,
ssh port, or a background server started just now).

Every service: `open_services()` is the one async context manager the CLI's commands run in
(and `Wiring.build` what the TUI is handed): the fleet, the ssh fan-out, the job history
(opened on first use, so `ls` never fails on a damaged history), jobs, probes, lifecycle and
launches; leaving it closes each once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from console.adapters.history_db import HistoryDamaged, HistoryStore
from console.adapters.os_login import OsLoginApi, adc_account
from console.adapters.ssh_pool import SshOptions
from console.adapters.tpu_api import TpuApi
from console.models import FleetError
from console.sandbox.runtime import Sandbox, SandboxBusy, SandboxEndpoint, wait_served_endpoint
from console.sandbox.serving import (
    SandboxClient,
    SandboxUser,
    ensure_served,
    this_process,
    users,
)
from console.services.chip_metrics import ChipMetricsService
from console.services.fleet import FleetService
from console.services.jobs import JobService
from console.services.launch import LaunchService
from console.services.lifecycle import LifecycleService
from console.services.managed import ManagedService
from console.services.notify import Notifier
from console.services.probe import ProbeService
from console.services.remote import RemoteService
from console.services.settings import Settings
from console.services.stacks import StacksService

DEFAULT_KEY = "~/.ssh/google_compute_engine"  # the key gcloud creates and installs


@dataclass(eq=False)
class FleetSource:
    fleet: FleetService
    label: str
    settings: Settings
    sandbox: Sandbox | None = None
    endpoint: SandboxEndpoint | None = None
    client: SandboxClient | None = None
    _remotes: weakref.WeakSet = field(default_factory=weakref.WeakSet)
    _relinking: asyncio.Lock = field(default_factory=asyncio.Lock)

    def remote(self, *, internal_ip: bool = False, iap: bool = False) -> RemoteService:
        """Commands on the workers, dialled as configured (internal IPs or IAP if asked)."""
        s = self.settings
        if self.endpoint is not None:

            def oslogin() -> OsLoginApi:
                assert self.endpoint is not None
                return OsLoginApi.for_sandbox(self.endpoint.api_address)

            account: str | Callable[[], str] = self.endpoint.account
        else:
            oslogin = OsLoginApi.for_google
            account = s.account or adc_account  # asked only when a node uses OS Login
        remote = RemoteService(
            self.fleet,
            self.ssh_options(),
            internal_ip=internal_ip or s.internal_ip,
            iap=iap or s.tunnel_through_iap,
            proxy_command=s.ssh_proxy_command,
            os_login=s.os_login,
            oslogin_api=oslogin,
            account=account,
            relink=self.relink if self.joined else None,
        )
        self._remotes.add(remote)
        return remote

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

    @property
    def joined(self) -> bool:
        """On a sandbox another process serves (which may go, and be served again)."""
        return self.endpoint is not None and self.sandbox is None

    def others_using(self) -> list[SandboxUser]:
        """The other processes that use the sandbox (what a serving console strands on quit)."""
        if self.endpoint is None:
            return []
        return users(self.settings.home, besides=self.client.pid if self.client else None)

    def stranded_by_quit(self) -> list[str]:
        """What quitting would strand: none unless this process serves the sandbox, else every
        other process using it, as `pid N: its command`."""
        if self.sandbox is None:
            return []
        return [f"pid {u.pid}: {u.what}" for u in self.others_using()]

    async def relink(self) -> bool:
        """After a lost link: where the sandbox is served now (again, by another process, or by
        a background server started here because nobody does); True if that moved.

        The API channel, the OS Login client and every ssh pool's port follow the move; the
        nodes' addresses and host keys are asked again by whoever re-resolves them.
        """
        if not self.joined:
            return False
        async with self._relinking:
            endpoint = await asyncio.to_thread(_served, self.settings.home)
            if endpoint == self.endpoint:
                return False
            before, self.endpoint = self.endpoint, endpoint
        await self.fleet.reconnect()
        port = self.ssh_options().port
        remotes = list(self._remotes)
        for remote in remotes:
            await remote.use_port(port)
        if remotes and before is not None:
            remotes[0].access.say(
                f"the sandbox's server (pid {before.pid}) went away; going on with the one "
                f"pid {endpoint.pid} serves (ssh port {endpoint.ssh_port})"
            )
        return True

    def close(self) -> None:
        """Stop a sandbox this process serves; a joined one belongs to its own process."""
        if self.sandbox is not None:
            self.sandbox.stop()
            self.sandbox = None
        if self.client is not None:
            self.client.close()
            self.client = None


def _served(home: Path) -> SandboxEndpoint:
    """The sandbox's endpoint (a background server started if none serves), or FleetError."""
    try:
        return ensure_served(home)
    except RuntimeError as exc:
        raise FleetError(
            f"The sandbox cannot be served: {exc}",
            f"See {home / 'sandbox' / 'serve.log'}; `tpuconsole sandbox serve` shows why.",
            code="UNAVAILABLE",
        ) from None


def _join_or_serve(settings: Settings) -> tuple[SandboxEndpoint, Sandbox | None]:
    """The console's own way: join whoever serves the sandbox, else serve it here."""
    endpoint = wait_served_endpoint(settings.home)
    if endpoint is not None:
        return endpoint, None
    try:
        sandbox = Sandbox.start(settings.home)
    except SandboxBusy as busy:  # another process won the race to serve it
        return busy.endpoint, None
    return sandbox.endpoint, sandbox


def open_fleet_source(settings: Settings, *, serve_here: bool = False) -> FleetSource:
    """The fleet to use. On the sandbox, a command joins its server (a background one started
    for it if none serves); the TUI (`serve_here`) serves it itself when nobody does."""
    if not settings.sandbox:
        fleet = FleetService(
            lambda: TpuApi.for_google(settings.project, endpoint=settings.api_endpoint),
            settings.zones,
            label=f"project {settings.project}",
            zones_source=settings.zones_source,
        )
        return FleetSource(fleet, f"project {settings.project}", settings)
    client = SandboxClient(settings.home, this_process())  # before any server looks for users
    try:
        if serve_here:
            endpoint, sandbox = _join_or_serve(settings)
        else:
            endpoint, sandbox = _served(settings.home), None
    except RuntimeError as exc:  # claimed by a process that never published: say so
        client.close()
        raise FleetError(f"The sandbox cannot be served: {exc}") from None
    except BaseException:
        client.close()
        raise
    holder: list[FleetSource] = []

    def api() -> TpuApi:
        current = holder[0].endpoint
        assert current is not None
        return TpuApi.for_sandbox(current.api_address, current.project)

    fleet = FleetService(api, settings.zones, label="SANDBOX", zones_source=settings.zones_source)
    source = FleetSource(fleet, "SANDBOX", settings, sandbox, endpoint, client)
    holder.append(source)
    if source.joined:
        fleet.relink = source.relink
    return source


@dataclass(frozen=True)
class Reach:
    """How ssh reaches the workers for one command (the flags beside the configuration)."""

    internal_ip: bool = False
    iap: bool = False


def open_history(
    settings: Settings, *, fresh: bool = False, say: Callable[[str], None]
) -> HistoryStore:
    """The job history; a damaged one is refused (a copy kept) unless `fresh` says go."""
    path = settings.home / "history.db"
    try:
        return HistoryStore(path)
    except HistoryDamaged as exc:
        if not fresh:
            raise
        HistoryStore.set_aside(path)
        say(f"started a fresh job history; the damaged one is kept at {exc.copy}")
        return HistoryStore(path)


@dataclass(eq=False)
class Wiring:
    """Every service of one console process, built on one FleetSource and opened on first
    use (not the screens' `services.session.Services`, which it fills for the TUI)."""

    source: FleetSource
    remote: RemoteService
    fresh_history: bool = False
    say: Callable[[str], None] = lambda _text: None

    @classmethod
    def build(
        cls,
        source: FleetSource,
        *,
        reach: Reach = Reach(),
        fresh_history: bool = False,
        say: Callable[[str], None] | None = None,
        history: HistoryStore | None = None,
    ) -> Wiring:
        """`say` hears what the fan-out does to reach the VMs (the CLI prints it on stderr;
        the TUI passes none, its screen being the terminal, and opens `history` itself)."""
        remote = source.remote(internal_ip=reach.internal_ip, iap=reach.iap)
        if say is not None:
            remote.notices.append(say)
        services = cls(source, remote, fresh_history, say or (lambda _text: None))
        if history is not None:
            services.__dict__["history"] = history  # the cached_property's slot
        return services

    @property
    def settings(self) -> Settings:
        return self.source.settings

    @property
    def fleet(self) -> FleetService:
        return self.source.fleet

    @cached_property
    def history(self) -> HistoryStore:
        return open_history(self.settings, fresh=self.fresh_history, say=self.say)

    @cached_property
    def jobs(self) -> JobService:
        return JobService(
            self.remote, self.history, self.settings.home, log_bucket=self.settings.log_bucket
        )

    @cached_property
    def prober(self) -> ProbeService:
        return ProbeService(self.remote)

    @cached_property
    def lifecycle(self) -> LifecycleService:
        return LifecycleService(self.fleet, self.history, self.remote, jobs=self.jobs)

    @cached_property
    def launcher(self) -> LaunchService:
        return LaunchService(self.jobs, self.prober)

    @cached_property
    def chips(self) -> ChipMetricsService:
        """Every chip's numbers over the pooled ssh connections (`top`)."""
        return ChipMetricsService.for_remote(
            self.remote, self.prober, standin=self.source.is_sandbox
        )

    @cached_property
    def stacks(self) -> StacksService:
        return StacksService(self.remote)

    @cached_property
    def notifier(self) -> Notifier:
        """The user's [notify] hooks; front ends add their own sinks (a toast, the bell)."""
        s = self.settings
        return Notifier(s.notify_command, s.notify_webhook, say=self.say)

    @cached_property
    def managed(self) -> ManagedService:
        return ManagedService(
            self.fleet,
            self.history,
            self.jobs,
            self.lifecycle,
            self.launcher,
            self.notifier,
            say=self.say,
            chips=self.chips,
            stuck_after_s=self.settings.stuck_after_s,
        )

    async def aclose(self) -> None:
        """Recoveries and hooks, polling, ssh (it may still ask the API), the API, the history."""
        try:
            if "managed" in self.__dict__:
                await self.managed.close()
            elif "notifier" in self.__dict__:
                await self.notifier.drain()
            if "chips" in self.__dict__:
                await self.chips.close()
            await self.remote.close()
            await self.fleet.close()
        finally:
            if "history" in self.__dict__:
                self.history.close()


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    reach: Reach = Reach(),
    fresh_history: bool = False,
    say: Callable[[str], None] | None = None,
) -> AsyncIterator[Wiring]:
    """Every service for one command, closed on the way out whatever happens."""
    source = open_fleet_source(settings)
    try:
        services = Wiring.build(source, reach=reach, fresh_history=fresh_history, say=say)
        try:
            yield services
        finally:
            await services.aclose()
    finally:
        source.close()
