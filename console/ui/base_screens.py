"""The screens' bases: `self.app` typed as the console's app, and `self.services` the typed
bundle of services it holds, so the type checker sees every call a screen makes."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from textual.screen import ModalScreen, Screen

from console.models import ConsoleError
from console.present.errors import error_sentence

if TYPE_CHECKING:
    from textual import getters

    from console.services.session import Services
    from console.ui.app import TpuConsoleApp

ResultT = TypeVar("ResultT")


class ConsoleScreen(Screen[ResultT]):
    if TYPE_CHECKING:  # at run time Textual's own property, which returns the same app
        app = getters.app(TpuConsoleApp)

    @property
    def services(self) -> Services:
        return self.app.services

    def show_error(self, what: str, exc: ConsoleError, timeout: float = 30) -> None:
        """The one way a screen says an action failed: what was tried, then the sentence the
        CLI would print (reason, remedy, the API's code), kept long enough to read."""
        show_error(self, what, exc, timeout)


class ConsoleModal(ModalScreen[ResultT]):
    """A dialog: console.tcss frames every one the same way (its VerticalScroll)."""

    if TYPE_CHECKING:
        app = getters.app(TpuConsoleApp)

    @property
    def services(self) -> Services:
        return self.app.services

    def show_error(self, what: str, exc: ConsoleError, timeout: float = 30) -> None:
        show_error(self, what, exc, timeout)


def show_error(screen: Screen, what: str, exc: ConsoleError, timeout: float) -> None:
    screen.notify(f"{what}: {error_sentence(exc)}", severity="error", timeout=timeout)
