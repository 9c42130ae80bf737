"""The fleet screen driven by key presses, headless, against the running sandbox."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
from rich.console import Console
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from console.models import FleetError
from console.sandbox.runtime import Sandbox
from console.services.fleet import FleetService
from console.services.session import Services
from console.ui.app import TpuConsoleApp
from console.ui.confirm_screen import ConfirmScreen
from console.ui.help_screen import HelpScreen
from console.ui.node_detail import NodeDetailScreen
from tests.conftest import DEFAULT_NODES, cursor_to, services_on, until

SIZE = (160, 40)


async def settled(pilot: Pilot) -> None:
    """Wait for the refresh and probe workers to finish and the table to lay out their result.

    A DataTable sizes its columns on its next idle, and a refresh may start probes as it
    ends, so one pause is not enough on a loaded machine: wait until nothing is pending.
    """
    table = pilot.app.screen.query_one("#fleet", DataTable)
    for _ in range(500):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        busy = any(w.is_running for w in pilot.app.workers)
        pending = table._require_update_dimensions or table._updated_cells or table._new_rows
        if not busy and not pending:
            await pilot.pause()  # the repaint after the last layout
            return
    raise AssertionError("the fleet screen never settled")


def row_keys(app: TpuConsoleApp) -> list[str]:
    """The node rows, top to bottom (a queued resource's own row left out)."""
    rows = app.screen.query_one("#fleet", DataTable).ordered_rows
    return [row.key.value for row in rows if not row.key.value.startswith("queued:")]


def cell(app: TpuConsoleApp, key: str, column: str) -> str:
    return str(app.screen.query_one("#fleet", DataTable).get_cell(key, column))


def text_of(static: Static) -> str:
    """What the user reads in a Static, whether it holds plain text, Text or a Rich table."""
    console = Console(width=200, record=True, file=io.StringIO())
    content = static.content
    console.print(Text(content) if isinstance(content, str) else content)
    return console.export_text()


def banner(app: TpuConsoleApp) -> Static:
    return app.screen.query_one("#banner", Static)


async def test_table_shows_every_sandbox_node_with_its_state(
    sandbox: Sandbox, services: Services
) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        assert row_keys(app) == list(DEFAULT_NODES)
        assert cell(app, "us-central2-b/demo-spot-v4-8", "state") == "PREEMPTED"
        assert cell(app, "us-central2-b/demo-spot-v4-8", "provisioning") == "spot"
        assert cell(app, "us-central2-b/demo-v4-16", "workers") == "2"
        assert "SANDBOX" in text_of(app.screen.query_one("#status", Static))


async def test_slash_filters_rows_and_escape_brings_them_back(
    sandbox: Sandbox, services: Services
) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        await pilot.press("slash", *"v4-16 team=rl")
        assert row_keys(app) == ["us-central2-b/demo-v4-16"]
        await pilot.press("enter")  # keeps the filter, back to the table
        assert row_keys(app) == ["us-central2-b/demo-v4-16"]
        await pilot.press("escape")
        assert len(row_keys(app)) == len(DEFAULT_NODES)


async def test_r_refreshes_and_the_cursor_stays_on_its_node(
    sandbox: Sandbox, services: Services
) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        await cursor_to(pilot, "us-central2-b/demo-v4-16")
        # A node that sorts above the cursor appears, another one leaves.
        sandbox.fleet.create("europe-west4-a", "aaa-new", "v5litepod-8", "v2-alpha-tpuv5-lite")
        sandbox.fleet.delete("us-central2-b", "demo-v3-8")
        await pilot.press("r")
        await settled(pilot)
        assert "europe-west4-a/aaa-new" in row_keys(app)
        assert cell(app, "europe-west4-a/aaa-new", "state") == "CREATING"
        assert cell(app, "us-central2-b/demo-v3-8", "state") == "DELETING"
        assert app.screen.cursor_node_key() == "us-central2-b/demo-v4-16"


async def test_sort_keys_order_by_column_and_reverse(sandbox: Sandbox, services: Services) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        ages = {n.key: n.age_seconds(app.now()) for n in app.screen.snapshot.nodes}
        await pilot.press("A")  # by age, youngest first
        assert row_keys(app)[0] == min(ages, key=ages.__getitem__)
        await pilot.press("A")
        assert row_keys(app)[0] == "us-central2-b/demo-v3-8"  # three days old, the oldest
        await pilot.press("N")
        assert [k.split("/")[1] for k in row_keys(app)] == sorted(
            k.split("/")[1] for k in DEFAULT_NODES
        )


async def test_enter_opens_the_node_detail_and_escape_returns(
    sandbox: Sandbox, services: Services
) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        await cursor_to(pilot, "us-central2-b/demo-v4-16")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, NodeDetailScreen)
        workers = app.screen.query_one("#workers", DataTable)
        assert workers.row_count == 2
        summary = text_of(app.screen.query_one("#summary", Static))
        assert "demo-v4-16" in summary and "team=rl" in summary and "2 hosts" in summary
        await pilot.press("escape")
        assert not isinstance(app.screen, NodeDetailScreen)
        assert app.screen.cursor_node_key() == "us-central2-b/demo-v4-16"


async def test_detail_of_a_preempted_node_explains_what_to_do(
    sandbox: Sandbox, services: Services
) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        await cursor_to(pilot, "us-central2-b/demo-spot-v4-8")
        await pilot.press("enter")
        summary = text_of(app.screen.query_one("#summary", Static))
        assert "preempted by the Compute Engine scheduler" in summary
        assert "delete it and create again" in summary


async def test_unreachable_zone_shows_a_banner_and_keeps_its_last_rows(
    sandbox: Sandbox,
    services: Services,
) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        sandbox.faults.inject(
            "ListNodes",
            grpc.StatusCode.UNAVAILABLE,
            zone="europe-west4-a",
            times=None,
            message="zone is down",
        )
        await pilot.press("r")
        await settled(pilot)
        text = text_of(banner(app))
        assert "europe-west4-a unreachable" in text and "zone is down" in text
        assert "last known" in text
        assert banner(app).has_class("shown")
        assert "europe-west4-a/demo-v5e-8" in row_keys(app)
        sandbox.faults.clear()
        await pilot.press("r")
        await settled(pilot)
        assert not banner(app).has_class("shown")


async def test_missing_credentials_show_the_remedy_and_the_app_keeps_running(
    services: Services,
) -> None:
    def no_credentials():
        raise FleetError(
            "No Google Cloud credentials found.", "Run `gcloud auth application-default login`."
        )

    fleet = FleetService(no_credentials, ("us-central2-b",))
    app = TpuConsoleApp(replace(services, fleet=fleet), mode="project p", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        text = text_of(banner(app))
        assert "No Google Cloud credentials" in text
        assert "gcloud auth application-default login" in text
        await pilot.press("r", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.is_running


async def test_question_mark_lists_every_key_including_sort_keys(
    sandbox: Sandbox, services: Services
) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = "".join(text_of(s) for s in app.screen.query(Static))
        for words in ("Refresh", "Filter", "Sort by age", "Sort by name", "Quit", "Jump to a node"):
            assert words in text
        await pilot.press("question_mark")
        assert not isinstance(app.screen, HelpScreen)


async def test_q_quits(sandbox: Sandbox, services: Services) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


FIXED = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def test_fleet_screen_snapshot(snap_compare, tmp_path: Path) -> None:
    sandbox = Sandbox.start(tmp_path / "snap-home", now=FIXED.timestamp())
    try:
        with services_on(sandbox, tmp_path) as services:
            app = TpuConsoleApp(
                services, mode="SANDBOX", clock=lambda: FIXED, probe_interval_s=None
            )

            async def loaded(pilot: Pilot) -> None:
                await settled(pilot)

            assert snap_compare(app, terminal_size=(160, 24), run_before=loaded)
    finally:
        sandbox.stop()


async def test_the_table_and_detail_show_reserved_timeout_and_a_state_newer_than_the_client(
    sandbox: Sandbox,
    services: Services,
) -> None:
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        assert cell(app, "us-central2-b/demo-reserved-v4-8", "provisioning") == "reserved"
        assert cell(app, "us-central1-a/demo-v5e-timeout", "health") == "TIMEOUT"
        assert cell(app, "europe-west4-a/demo-v6e-next", "state") == "17"
        status = text_of(app.screen.query_one("#status", Static))
        assert "zones: discovered · TPU access in 4 of 5 zones" in status
        assert not banner(app).has_class("shown")  # asia-east1-c's refusal is no failure
        await cursor_to(pilot, "us-central1-a/demo-v5e-timeout")
        await pilot.press("enter")
        summary = text_of(app.screen.query_one("#summary", Static))
        assert "health check of this VM timed out" in summary
        assert "default, subnet default, external IPs" in summary
        assert "-compute@developer.gserviceaccount.com" in summary
        assert "api version  V2" in summary
        await pilot.press("escape")
        await cursor_to(pilot, "europe-west4-a/demo-v6e-next")
        await pilot.press("enter")
        summary = text_of(app.screen.query_one("#summary", Static))
        assert "a state newer than this console's API client" in summary


def test_stop_confirmation_snapshot(snap_compare, tmp_path: Path) -> None:
    """The dialog base of console.tcss: a warning frame over the fleet, centred."""
    sandbox = Sandbox.start(tmp_path / "snap-home", now=FIXED.timestamp())
    try:
        with services_on(sandbox, tmp_path) as services:
            app = TpuConsoleApp(
                services, mode="SANDBOX", clock=lambda: FIXED, probe_interval_s=None
            )

            async def asked(pilot: Pilot) -> None:
                await settled(pilot)
                await cursor_to(pilot, "us-central2-b/demo-v4-8")
                await pilot.press("s")
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                await pilot.pause()

            assert snap_compare(app, terminal_size=(160, 24), run_before=asked)
    finally:
        sandbox.stop()
