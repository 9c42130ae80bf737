"""`:` and ctrl+p: the command palette jumps to a node or a screen and lists the actions."""

from __future__ import annotations

from textual.command import CommandList, CommandPalette
from textual.widgets import Input

from console.services.session import Services
from console.ui.app import TpuConsoleApp
from console.ui.fleet_screen import FleetScreen
from console.ui.jobs_screen import JobsScreen
from console.ui.node_detail import NodeDetailScreen
from tests.conftest import fleet_loaded, until

SIZE = (160, 40)


def listed(app: TpuConsoleApp) -> list[str]:
    """The palette's entries as the user reads them (the name of each, in order); none while
    the palette is not the screen shown."""
    if not isinstance(app.screen, CommandPalette):
        return []
    return [str(option.hit.text) for option in app.screen.query_one(CommandList).options]


async def ask(pilot, words: str) -> None:
    """`:`, the words, and wait for the palette to offer them first."""
    await pilot.press("colon")
    await until(pilot, lambda: isinstance(pilot.app.screen, CommandPalette))
    await pilot.press(*words)
    await until(pilot, lambda: listed(pilot.app)[:1] == [words])


async def test_colon_jumps_to_a_node_from_another_screen(services: Services) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_loaded(app))
        await pilot.press("enter")  # into the first node's detail
        await until(pilot, lambda: isinstance(app.screen, NodeDetailScreen))
        await ask(pilot, "demo-v4-16")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen))
        await until(pilot, lambda: app.screen.cursor_node_key() == "us-central2-b/demo-v4-16")
        assert len(app.screen_stack) == 2  # the detail closed, nothing left behind


async def test_colon_jump_to_a_filtered_out_node_clears_the_filter(services: Services) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_loaded(app))
        fleet = app.screen
        assert isinstance(fleet, FleetScreen)
        await pilot.press("slash", *"v5e", "enter")
        await until(pilot, lambda: "us-central2-b/demo-v4-8" not in fleet.table.rows)
        await ask(pilot, "demo-v4-8")
        await pilot.press("enter")
        await until(pilot, lambda: fleet.cursor_node_key() == "us-central2-b/demo-v4-8")
        assert fleet.filter_text == "" and fleet.query_one("#filter", Input).value == ""


async def test_colon_jobs_opens_the_job_history(services: Services) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_loaded(app))
        await ask(pilot, "jobs")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobsScreen))
        await pilot.press("colon", *"fleet")  # and back, the same way
        await until(pilot, lambda: listed(app)[:1] == ["fleet"])
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen))


async def test_the_palette_lists_the_screens_the_nodes_and_the_actions(
    services: Services,
) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_loaded(app))
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await until(pilot, lambda: "Refresh" in listed(app))
        names = listed(app)
        for screen in ("fleet", "jobs", "health"):
            assert screen in names
        assert "demo-v4-16" in names and "demo-spot-v4-8" in names
        for action in ("Refresh", "Filter", "Launch", "Create", "Stop", "Kill stale", "Help"):
            assert action in names
        # Typing narrows it; choosing an action runs it on the screen underneath.
        fleet = app.screen_stack[-2]
        assert isinstance(fleet, FleetScreen) and fleet.sort_column == "zone"
        await pilot.press(*"sort")
        await until(pilot, lambda: listed(app)[:1] == ["Sort"])
        await pilot.press("enter")
        await until(pilot, lambda: fleet.sort_column != "zone")  # `o`: the next sort column


async def test_a_colon_typed_into_the_filter_stays_in_the_filter(services: Services) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_loaded(app))
        await pilot.press("slash", *"team:rl")
        assert not isinstance(app.screen, CommandPalette)
        assert app.screen.query_one("#filter", Input).value == "team:rl"
