"""The Textual application: holds the services, opens on the fleet screen.

Screens reach services through the app (`self.app.fleet`), so tests can hand it any fleet.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from datetime import UTC, datetime

from textual.app import App
from textual.binding import Binding
from textual.notifications import SeverityLevel

from console.services.fleet import FleetService
from console.services.jobs import JobService
from console.services.lifecycle import LifecycleService
from console.services.managed import ManagedService
from console.services.notify import JobEvent
from console.services.probe import ProbeService
from console.ui.fleet_screen import FleetScreen
from console.ui.help_screen import HelpScreen

TERMINAL_CHECK_S = 2.0


class TpuConsoleApp(App):
    TITLE = "tpuconsole"
    BINDINGS = [Binding("ctrl+c", "quit", "Quit", show=False)]

    def __init__(
        self,
        fleet: FleetService,
        *,
        jobs: JobService | None = None,
        prober: ProbeService | None = None,
        lifecycle: LifecycleService | None = None,
        probe_interval_s: float = 30.0,
        mode: str = "",
        refresh_s: float = 10.0,
        clock: Callable[[], datetime] | None = None,
        others_using: Callable[[], list[str]] | None = None,
        managed: ManagedService | None = None,
    ) -> None:
        super().__init__()
        self.managed = managed  # recovers managed jobs while the console is open
        self.fleet = fleet
        self.jobs = jobs
        self.prober = prober
        self.lifecycle = lifecycle
        self.probe_interval_s = probe_interval_s
        self.mode = mode
        self.refresh_s = refresh_s
        self._clock = clock or (lambda: datetime.now(UTC))
        self.sub_title = mode
        # The other processes on the sandbox this console serves, which quitting would strand
        # (None: it serves none).
        self.others_using = others_using

    def now(self) -> datetime:
        return self._clock()

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every notification is plain text: they carry node names, job output and errors.

        `markup` is ignored on purpose (see console/ui/plain.py): no caller can turn it on.
        """
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def on_mount(self) -> None:
        self.push_screen(FleetScreen())
        if not self.is_headless:
            self.set_interval(TERMINAL_CHECK_S, self._exit_if_terminal_gone)
        self.call_after_refresh(self._freeze_startup_objects)
        # "adding your ssh key to NODE's metadata" and the like, as they happen.
        services = (self.jobs, self.prober, self.lifecycle)
        remotes = {id(r): r for s in services if (r := getattr(s, "remote", None)) is not None}
        for remote in remotes.values():
            remote.notices.append(lambda text: self.notify(text, timeout=8))
        if self.jobs is not None:
            self.run_worker(self._reconcile_jobs(), group="reconcile")
        if self.managed is not None:
            self.managed.notifier.sinks.append(self._job_event)
            self.managed.notifier.desktop = not self.is_headless
            self.run_worker(self.managed.run_forever(), group="managed")

    def _job_event(self, event: JobEvent) -> None:
        """A managed job's news: a notification and the terminal's bell, wherever one looks."""
        bad = event.event in {"failed", "gave_up", "preempted", "retried"}
        self.notify(event.text, severity="warning" if bad else "information", timeout=15)
        self.bell()

    async def _reconcile_jobs(self) -> None:
        """Jobs launched before this start: follow the live ones, mark the vanished lost."""
        from console.models import FleetError

        try:
            notes = await self.jobs.reconcile(self.fleet)
        except FleetError:
            return
        lost = [n for n in notes if " lost" in n]
        if lost:
            self.notify("; ".join(lost), severity="warning", timeout=15)

    def _freeze_startup_objects(self) -> None:
        """Keep the objects of start-up (modules, widgets, styles) out of later full GCs.

        While logs stream, full collections walked every object the app ever made; measured
        pauses reached hundreds of milliseconds in bench/logtail.py.
        """
        gc.freeze()

    def _exit_if_terminal_gone(self) -> None:
        """Quit when the terminal hangs up (a dropped ssh session, a killed tmux).

        Textual's input thread reads EOF from a hung-up tty in a tight loop and the app would
        otherwise spin at full CPU, orphaned, holding its ssh connections open.
        """
        try:
            os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
        except OSError:
            self.exit(return_code=129)

    async def on_unmount(self) -> None:
        if self.jobs is not None:
            await self.jobs.remote.close()
        await self.fleet.close()

    async def action_quit(self) -> None:
        """Quit; first ask, naming them, when other processes use the sandbox served here."""
        others = self.others_using() if self.others_using is not None else []
        if not others:
            self.exit()
            return
        from console.ui.confirm_screen import ConfirmScreen

        if isinstance(self.screen, ConfirmScreen):
            return  # already asking
        count = "1 other process uses" if len(others) == 1 else f"{len(others)} other processes use"

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit()

        self.push_screen(
            ConfirmScreen(
                f"Quit? This console serves the sandbox, and {count} it:",
                [
                    *others,
                    "Quitting stops serving it here: what they run over ssh now is cut, and the "
                    "first of them to need it again serves it from the saved state (jobs run "
                    "on, `logs -f` resumes); the others follow.",
                ],
            ),
            answered,
        )

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
            return
        self.push_screen(HelpScreen(self.screen))
