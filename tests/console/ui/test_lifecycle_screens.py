"""Create, stop and delete-all from the fleet screen, by key presses, against the emulator."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Select, Static

from console.sandbox.fleet_state import SandboxTiming
from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from console.services.lifecycle import LifecycleService
from console.services.session import Services
from console.ui.app import TpuConsoleApp
from console.ui.confirm_screen import ConfirmScreen, TypedConfirmScreen
from console.ui.create_screen import CreateScreen
from tests.conftest import cursor_to, fleet_loaded, services_on, until


def rows(app: TpuConsoleApp) -> dict[str, str]:
    table = app.screen.query_one("#fleet", DataTable)
    return {r.key.value: str(table.get_cell(r.key, "state")) for r in table.ordered_rows}


@pytest.fixture
async def app(services: Services):
    life = LifecycleService(services.fleet, services.history, services.remote, poll_s=0.05)
    return TpuConsoleApp(
        replace(services, lifecycle=life), mode="SANDBOX", refresh_s=0.5, probe_interval_s=None
    )


async def test_the_create_form_by_keys_makes_a_ready_node(app: TpuConsoleApp) -> None:
    async with app.run_test(size=(170, 50)) as pilot:
        await until(pilot, lambda: fleet_loaded(app))
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
        node = await app.services.fleet.get_node("us-central1-a", "form-made")
        assert node.labels == {"team": "rl"} and node.accelerator_type == "v3-8"
        history = app.services.lifecycle.history

        def kinds() -> list[str]:
            return [e.kind for e in history.events_for("us-central1-a", "form-made")]

        # READY shows as soon as a refresh sees it; the create flow then checks ssh.
        await until(pilot, lambda: "ssh" in kinds())
        assert kinds()[0] == "create"


async def test_the_create_form_picks_each_generations_runtime_as_the_type_changes(
    app: TpuConsoleApp,
) -> None:
    """europe-west4-a offers v5e, v3 and v6e: each type brings its generation's image."""
    async with app.run_test(size=(170, 50)) as pilot:
        await until(pilot, lambda: fleet_loaded(app))
        await cursor_to(pilot, "europe-west4-a/demo-v5e-8")
        await pilot.press("c")
        form = app.screen
        assert isinstance(form, CreateScreen)
        type_select = form.query_one("#type", Select)
        version = form.query_one("#version", Select)
        await until(pilot, lambda: type_select.value == "v5litepod-4")
        assert version.value == "v2-alpha-tpuv5-lite"
        await pilot.press("tab", "enter", *["down"] * 4, "enter")  # v6e-8, the last offered
        assert type_select.value == "v6e-8" and version.value == "v2-alpha-tpuv6e"
        await pilot.press("enter", "up", "enter")  # v3-8
        assert type_select.value == "v3-8" and version.value == "tpu-ubuntu2204-base"
        assert form.request().runtime_version == "tpu-ubuntu2204-base"


async def test_a_spot_stockout_falls_back_with_every_try_in_the_progress_lines(
    app: TpuConsoleApp,
) -> None:
    """europe-west4-a has no spot v5litepod capacity: code 8 inside the operation."""
    async with app.run_test(size=(170, 50)) as pilot:
        await until(pilot, lambda: fleet_loaded(app))
        await cursor_to(pilot, "europe-west4-a/demo-v5e-8")
        ops = app.screen.query_one("#ops", Static)
        shown: list[str] = []  # every text the progress panel was given, in order
        update = ops.update
        ops.update = lambda content="", **kw: (shown.append(str(content)), update(content, **kw))[1]
        await pilot.press("c")
        form = app.screen
        assert isinstance(form, CreateScreen)
        await until(pilot, lambda: form.query_one("#type", Select).value == "v5litepod-4")
        await pilot.press("tab", "enter", "down", "enter")  # the type: v5litepod-8
        assert form.query_one("#type", Select).value == "v5litepod-8"
        assert form.query_one("#version", Select).value == "v2-alpha-tpuv5-lite"
        await pilot.press(*["tab"] * 5, "space", "tab", "space")  # spot, then the fallback
        request = form.request()
        assert request.spot and request.fallback_on_demand
        await pilot.press("ctrl+s")
        key = f"europe-west4-a/{request.name}"
        await until(pilot, lambda: any("(on-demand): READY" in text for text in shown))
        # While the on-demand try ran, the spot try's failure and the fallback stayed on screen.
        text = next(t for t in shown if "(on-demand): " in t)
        failed = text.index(f"✗ create {request.name} (spot): FAILED")
        assert '[RESOURCE_EXHAUSTED] There is no more capacity in the zone "europe-west4-a"' in (
            text
        )
        fallback = text.index("FALLBACK")
        assert failed < fallback < text.index("(on-demand): ")
        assert "spot had no capacity in europe-west4-a (stockout)" in text
        await until(pilot, lambda: rows(app).get(key) == "READY")
        node = await app.services.fleet.get_node("europe-west4-a", request.name)
        assert node.provisioning == "on-demand"
        history = app.services.lifecycle.history

        def kinds() -> list[str]:
            return [e.kind for e in history.events_for("europe-west4-a", request.name)]

        await until(pilot, lambda: "ssh" in kinds())  # the create flow's last step
        assert kinds().index("failed") < kinds().index("fallback") < kinds().index("ssh")


async def test_s_is_greyed_on_a_multi_host_slice_with_the_reason_in_help(
    app: TpuConsoleApp, sandbox: Sandbox
) -> None:
    from console.ui.help_screen import HelpScreen
    from tests.console.ui.test_fleet_screen import text_of

    async with app.run_test(size=(170, 50)) as pilot:
        await until(pilot, lambda: fleet_loaded(app))
        fleet = app.screen
        await cursor_to(pilot, "us-central2-b/demo-v4-16")
        assert fleet.check_action("change", ("stop",)) is None  # greyed in the footer
        await pilot.press("s")
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        help_text = "".join(text_of(s) for s in app.screen.query(Static))
        assert "TPU VM pods cannot be stopped" in help_text
        await pilot.press("escape")
        await cursor_to(pilot, "us-central2-b/demo-v4-8")
        assert fleet.check_action("change", ("stop",)) is True
        assert sandbox.emulator.calls.get("StopNode", 0) == 0
        assert sandbox.fleet.nodes["us-central2-b/demo-v4-16"].state == "READY"


async def test_stop_asks_first_and_then_stops(app: TpuConsoleApp) -> None:
    async with app.run_test(size=(170, 50)) as pilot:
        await until(pilot, lambda: fleet_loaded(app))
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
        await until(pilot, lambda: fleet_loaded(app))
        await pilot.press("D")  # the cursor is on demo-v5e-8, in europe-west4-a
        dialog = app.screen
        assert isinstance(dialog, TypedConfirmScreen)
        await pilot.press(*"europe", "enter")
        assert "nothing was deleted" in str(dialog.query_one("#typed-error", Static).content)
        assert "europe-west4-a/demo-v5e-8" in sandbox.fleet.nodes
        await pilot.press("ctrl+u", *"europe-west4-a", "enter")
        await until(pilot, lambda: not any(k.startswith("europe-west4-a/") for k in rows(app)))
        assert not any(k.startswith("europe-west4-a/") for k in sandbox.fleet.nodes)


FIXED = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def test_create_form_snapshot(snap_compare, tmp_path: Path) -> None:
    sandbox = Sandbox.start(tmp_path / "snap", now=FIXED.timestamp(), timing=SandboxTiming())
    try:
        with services_on(sandbox, tmp_path) as services:
            app = TpuConsoleApp(
                services, mode="SANDBOX", clock=lambda: FIXED, probe_interval_s=None
            )

            async def form_loaded(pilot: Pilot) -> None:
                await until(pilot, lambda: fleet_loaded(app))
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
    sandbox: Sandbox, jobs: JobService, services: Services
) -> None:
    from console.ui.log_screen import LogScreen

    fleet, remote = jobs.remote.fleet, jobs.remote
    life = LifecycleService(fleet, jobs.history, remote, poll_s=0.05)
    node = await fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "echo started; sleep 60")
    app = TpuConsoleApp(
        replace(services, lifecycle=life), mode="SANDBOX", refresh_s=0.5, probe_interval_s=None
    )
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
