"""The screens' bases: `self.app` typed as the console's app, and `self.services` the typed
bundle of services it holds, so the type checker sees every call a screen makes."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from textual.screen import ModalScreen, Screen

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


class ConsoleModal(ModalScreen[ResultT]):
    """A dialog: console.tcss frames every one the same way (its VerticalScroll)."""

    if TYPE_CHECKING:
        app = getters.app(TpuConsoleApp)

    @property
    def services(self) -> Services:
        return self.app.services
