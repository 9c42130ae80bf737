"""The Textual application: holds the session's services, opens on the fleet screen.

Screens reach them as `self.services` (console/ui/base_screens.py), typed; tests hand it the
services their fixture built.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from textual.app import App
from textual.binding import Binding
from textual.notifications import SeverityLevel

from console.models import FleetError
from console.services.managed import ManagedService
from console.services.notify import JobEvent
from console.services.session import Services
from console.ui.commands import ConsoleCommands
from console.ui.fleet_screen import FleetScreen
from console.ui.help_screen import HelpScreen

TERMINAL_CHECK_S = 2.0


class TpuConsoleApp(App[None]):
    TITLE = "tpuconsole"
    CSS_PATH = Path(__file__).with_name("console.tcss")
    COMMANDS: ClassVar = App.COMMANDS | {ConsoleCommands}
    BINDINGS = [
        Binding("ctrl+c", "quit", "Quit", show=False),
        Binding("colon", "jump", "Jump", show=False),
        Binding("ctrl+p", "command_palette", "Commands", show=False),
    ]

    def __init__(
        self,
        services: Services,
        *,
        probe_interval_s: float | None = 30.0,
        mode: str = "",
        refresh_s: float = 10.0,
        clock: Callable[[], datetime] | None = None,
        others_using: Callable[[], list[str]] | None = None,
        managed: ManagedService | None = None,
    ) -> None:
        """`probe_interval_s` None: the lock column is probed only when asked (`p`, `K`)."""
        super().__init__()
        self.services = services
        self.managed = managed  # recovers managed jobs while the console is open
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
        self.services.remote.notices.append(lambda text: self.notify(text, timeout=8))
        self.run_worker(self._reconcile_jobs(), group="reconcile")
        if self.managed is not None:
            self.managed.notifier.sinks.append(self._job_event)
            self.managed.notifier.desktop = not self.is_headless
            self.run_worker(self.managed.run_forever(), group="managed")

    def _job_event(self, event: JobEvent) -> None:
        """A managed job's news: a notification and the terminal's bell, wherever one looks."""
        if event.event.warns:
            self.notify(event.text, severity="warning", timeout=15)
        else:
            self.notify(event.text, timeout=15)
        self.bell()

    async def _reconcile_jobs(self) -> None:
        """Jobs launched before this start: follow the live ones, mark the vanished lost."""
        try:
            notes = await self.services.jobs.reconcile(self.services.fleet)
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
        await self.services.close()

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

    # ----- where the palette goes ---------------------------------------------------------------
    def fleet_screen(self) -> FleetScreen | None:
        return next((s for s in self.screen_stack if isinstance(s, FleetScreen)), None)

    def show_fleet(self) -> FleetScreen | None:
        """Back to the fleet table, closing whatever is above it."""
        fleet = self.fleet_screen()
        while fleet is not None and self.screen is not fleet:
            self.pop_screen()
        return fleet

    def show_jobs(self) -> None:
        from console.ui.jobs_screen import JobsScreen

        if not isinstance(self.screen, JobsScreen):
            self.show_fleet()
            self.push_screen(JobsScreen())

    def show_health(self) -> None:
        from console.ui.health_screen import HealthScreen

        if not isinstance(self.screen, HealthScreen):
            fleet = self.show_fleet()
            if fleet is not None:
                self.push_screen(HealthScreen(fleet))

    def jump_to_node(self, key: str) -> None:
        fleet = self.show_fleet()
        if fleet is None or not fleet.jump_to(key):
            self.notify(f"{key} is not in the fleet any more.", severity="warning")

    def action_jump(self) -> None:
        """`:` as in k9s: the palette, for a screen (`jobs`, `health`) or a node by name."""
        self.action_command_palette()

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
            return
        self.push_screen(HelpScreen(self.screen))
