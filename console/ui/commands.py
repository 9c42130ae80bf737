"""The command palette (ctrl+p, or `:` as in k9s): jump to a screen or a node by name, or run
any action of the screen underneath by its description."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from rich.text import Text
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from console.ui.app import TpuConsoleApp

KEY_NAMES = {"slash": "/", "question_mark": "?", "enter": "⏎", "escape": "esc", "space": "space"}


@dataclass(frozen=True)
class Command:
    name: str  # what the user types: a screen, a node's name, an action's description
    run: Callable[[], Any]
    help: str


class ConsoleCommands(Provider):
    """Screens first, then every node of the last listing, then the actions of this screen."""

    def commands(self) -> list[Command]:
        app = cast("TpuConsoleApp", self.app)
        found = [
            Command("fleet", app.show_fleet, "screen · every TPU VM across zones"),
            Command("jobs", app.show_jobs, "screen · the job history, newest first (j)"),
            Command("health", app.show_health, "screen · stale locks and lingering processes (H)"),
        ]
        fleet = app.fleet_screen()
        if fleet is not None and fleet.snapshot is not None:
            found += [
                Command(
                    node.name,
                    partial(app.jump_to_node, node.key),
                    f"node · {node.zone} · {node.accelerator_type} · {node.state}",
                )
                for node in fleet.snapshot.nodes
            ]
        seen = {c.name for c in found}
        for binding in self.screen.BINDINGS:
            if not isinstance(binding, Binding) or not binding.description:
                continue
            if binding.description in seen or binding.action == "command_palette":
                continue
            seen.add(binding.description)
            key = ", ".join(KEY_NAMES.get(k, k) for k in binding.key.split(","))
            found.append(
                Command(
                    binding.description,
                    partial(self.screen.run_action, binding.action),
                    f"action · key {key}",
                )
            )
        return found

    async def discover(self) -> Hits:
        for command in self.commands():
            yield DiscoveryHit(Text(command.name), command.run, command.name, command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in self.commands():
            score = matcher.match(command.name)
            if score > 0:
                yield Hit(
                    score, matcher.highlight(command.name), command.run, command.name, command.help
                )
