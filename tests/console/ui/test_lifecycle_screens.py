"""Create, stop and delete-all from the fleet screen, by key presses, against the emulator."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Select, Static

from console.adapters.history_db import HistoryStore
from console.sandbox.fleet_state import SandboxTiming
from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from console.services.lifecycle import LifecycleService
from console.services.remote import RemoteService
from console.ui.app import TpuConsoleApp
from console.ui.confirm_screen import ConfirmScreen, TypedConfirmScreen
from console.ui.create_screen import CreateScreen
from tests.conftest import DEFAULT_NODES, cursor_to, fleet_for, ssh_options_for, until


def rows(app: TpuConsoleApp) -> dict[str, str]:
    table = app.screen.query_one("#fleet", DataTable)
    return {r.key.value: str(table.get_cell(r.key, "state")) for r in table.ordered_rows}


@pytest.fixture
async def app(sandbox: Sandbox, tmp_path: Path):
    fleet = fleet_for(sandbox)
    remote = RemoteService(fleet, ssh_options_for(sandbox, tmp_path))
    history = HistoryStore(tmp_path / "history.db")
    life = LifecycleService(fleet, history, remote, poll_s=0.05)
    yield TpuConsoleApp(fleet, lifecycle=life, mode="SANDBOX", refresh_s=0.5)
    await remote.close()
    history.close()


async def test_the_create_form_by_keys_makes_a_ready_node(app: TpuConsoleApp) -> None:
    async with app.run_test(size=(170, 50)) as pilot:
        await until(pilot, lambda: len(rows(app)) == len(DEFAULT_NODES))
        await pilot.press("c")
        form = app.screen
        assert isinstance(form, CreateScreen)
        await until(pilot, lambda: form.query_one("#type", Select).value == "v5litepod-4")
        # Zone: from europe-west4-a (the cursor's) to us-central1-a, by the keyboard.
        await pilot.press("enter", "down", "enter")
        await until(pilot, lambda: form.query_one("#type", Select).value == "v3-8")
        assert form.query_one("#zone", Select).value == "us-central1-a"
        await pilot.press("tab", "tab", "tab", "ctrl+u", *"Bad Name", "ctrl+s")
        assert "lowercase letters" in str(form.query_one("#create-errors", Static).content)
        await pilot.press("ctrl+u", *"form-made", "tab", *"team=rl", "ctrl+s")
        assert not isinstance(app.screen, CreateScreen)
        await until(pilot, lambda: rows(app).get("us-central1-a/form-made") == "READY")
        node = await app.fleet.get_node("us-central1-a", "form-made")
        assert node.labels == {"team": "rl"} and node.accelerator_type == "v3-8"
        history = app.lifecycle.history

        def kinds() -> list[str]:
            return [e.kind for e in history.events_for("us-central1-a", "form-made")]

        # READY shows as soon as a refresh sees it; the create flow then checks ssh.
        await until(pilot, lambda: "ssh" in kinds())
        assert kinds()[0] == "create"


async def test_stop_asks_first_and_then_stops(app: TpuConsoleApp) -> None:
    async with app.run_test(size=(170, 50)) as pilot:
        await until(pilot, lambda: len(rows(app)) == len(DEFAULT_NODES))
        await cursor_to(pilot, "us-central2-b/demo-v4-8")
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen)
        assert "stop demo-v4-8" in str(app.screen.query_one("#confirm", Static).content)
        await pilot.press("y")
        await until(pilot, lambda: rows(app).get("us-central2-b/demo-v4-8") == "STOPPED")


async def test_delete_all_in_a_zone_needs_the_zones_name_typed(
    app: TpuConsoleApp, sandbox: Sandbox
) -> None:
    async with app.run_test(size=(170, 50)) as pilot:
        await until(pilot, lambda: len(rows(app)) == len(DEFAULT_NODES))
        await pilot.press("D")  # the cursor is on demo-v5e-8, in europe-west4-a
        dialog = app.screen
        assert isinstance(dialog, TypedConfirmScreen)
        await pilot.press(*"europe", "enter")
        assert "nothing was deleted" in str(dialog.query_one("#typed-error", Static).content)
        assert "europe-west4-a/demo-v5e-8" in sandbox.fleet.nodes
        await pilot.press("ctrl+u", *"europe-west4-a", "enter")
        await until(pilot, lambda: "europe-west4-a/demo-v5e-8" not in rows(app))
        assert not any(k.startswith("europe-west4-a/") for k in sandbox.fleet.nodes)


FIXED = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def test_create_form_snapshot(snap_compare, tmp_path: Path) -> None:
    sandbox = Sandbox.start(tmp_path / "snap", now=FIXED.timestamp(), timing=SandboxTiming())
    try:
        app = TpuConsoleApp(
            fleet_for(sandbox),
            mode="SANDBOX",
            clock=lambda: FIXED,
            lifecycle=LifecycleService(fleet_for(sandbox), HistoryStore(tmp_path / "h.db")),
        )

        async def form_loaded(pilot: Pilot) -> None:
            await until(pilot, lambda: len(rows(app)) == len(DEFAULT_NODES))
            await pilot.press("c")
            await until(
                pilot,
                lambda: (
                    isinstance(app.screen, CreateScreen)
                    and app.screen.query_one("#type", Select).value == "v5litepod-4"
                ),
            )
            await pilot.pause()

        assert snap_compare(app, terminal_size=(120, 48), run_before=form_loaded)
    finally:
        sandbox.stop()


async def test_a_job_whose_vm_is_deleted_mid_run_is_shown_lost_with_the_reason(
    sandbox: Sandbox, jobs: JobService
) -> None:
    from console.ui.log_screen import LogScreen

    fleet, remote = jobs.remote.fleet, jobs.remote
    life = LifecycleService(fleet, jobs.history, remote, poll_s=0.05)
    node = await fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "echo started; sleep 60")
    app = TpuConsoleApp(fleet, jobs=jobs, lifecycle=life, mode="SANDBOX", refresh_s=0.5)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: rows(app).get("us-central2-b/demo-v4-8") == "READY")
        logs = LogScreen(job)
        await app.push_screen(logs)
        await until(pilot, lambda: len(logs.index) == 1)  # "started" arrived
        sandbox.fleet.delete("us-central2-b", "demo-v4-8")  # automation, not us
        await until(pilot, lambda: any(d.key == "node_left" for d in logs.diagnoser.found))
        panel = str(logs.query_one("#log-diagnosis", Static).content)
        assert "The VM left READY mid-run" in panel and "demo-v4-8 went DELETING" in panel
        await until(pilot, lambda: "LOST" in logs.query_one("#log-status").text)
        assert jobs.get(job.job_id).status == "lost"
