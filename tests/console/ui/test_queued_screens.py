"""Queued resources in the TUI, by key presses against the emulator: the request rows and
groups of the fleet table, a create through the queue, delete-right, the quota finding."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from rich.console import Console
from textual.widgets import DataTable, Select, Static

from console.sandbox.runtime import Sandbox
from console.services.lifecycle import LifecycleService
from console.services.queued_resources import QueuedCreateRequest
from console.services.session import Services
from console.ui.app import TpuConsoleApp
from console.ui.confirm_screen import ConfirmScreen
from console.ui.create_screen import CreateScreen
from tests.conftest import cursor_to, fleet_loaded, fleet_row_keys, until, worker_output

SIZE = (180, 50)
MS = "us-central2-b/demo-multislice"


def cell(app: TpuConsoleApp, key: str, column: str) -> str:
    return str(app.screen.query_one("#fleet", DataTable).get_cell(key, column))


def text_of(static: Static) -> str:
    """What the user reads in a Static holding a Rich table (the node detail's summary)."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(static.content)
    return console.export_text()


def note(app: TpuConsoleApp) -> str:
    return str(app.screen.query_one("#row-note", Static).content)


def kept_notifications(app: TpuConsoleApp) -> list[str]:
    """Every notification the app shows, kept past its time on screen."""
    shown: list[str] = []
    notify = app.notify

    def keep(message: str, **kw: object) -> None:
        shown.append(str(message))
        notify(message, **kw)  # type: ignore[arg-type]

    app.notify = keep  # type: ignore[method-assign,assignment]
    return shown


@pytest.fixture
def app(services: Services) -> TpuConsoleApp:
    life = LifecycleService(services.fleet, services.history, services.remote, poll_s=0.05)
    return TpuConsoleApp(
        replace(services, lifecycle=life), mode="SANDBOX", refresh_s=0.5, probe_interval_s=None
    )


def loaded(app: TpuConsoleApp) -> bool:
    return fleet_loaded(app) and "queued:us-east5-a/demo-queue-v5p" in fleet_row_keys(app)


async def test_requests_are_rows_and_a_multislice_requests_nodes_one_group_under_it(
    app: TpuConsoleApp,
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app))
        rows = fleet_row_keys(app)
        # The group: the request's row, then its two slices right under it.
        at = rows.index(f"queued:{MS}")
        assert rows[at + 1 : at + 3] == ["us-central2-b/demo-ms-0", "us-central2-b/demo-ms-1"]
        assert cell(app, f"queued:{MS}", "name") == "▾ demo-multislice"
        assert cell(app, f"queued:{MS}", "state") == "ACTIVE"
        assert cell(app, f"queued:{MS}", "type") == "v4-16 x2"
        assert cell(app, f"queued:{MS}", "workers") == "2/2 nodes"
        assert cell(app, "us-central2-b/demo-ms-0", "name") == "├ demo-ms-0"
        assert cell(app, "us-central2-b/demo-ms-1", "name") == "└ demo-ms-1"
        # Requests with no node: rows of their own after the nodes, with what they wait for.
        assert rows[-2:] == [
            "queued:europe-west4-a/demo-queue-failed",
            "queued:us-east5-a/demo-queue-v5p",
        ]
        waiting = "queued:us-east5-a/demo-queue-v5p"
        assert cell(app, waiting, "name") == "▸ demo-queue-v5p"
        assert cell(app, waiting, "state") == "WAITING_FOR_RESOURCES"
        assert cell(app, waiting, "provisioning") == "spot"
        assert cell(app, waiting, "workers") == "0/1 nodes"
        assert cell(app, waiting, "ips") == "valid for 6h"
        assert cell(app, waiting, "age").endswith("m")  # 25 minutes in the queue
        failed = "queued:europe-west4-a/demo-queue-failed"
        assert cell(app, failed, "state") == "FAILED" and cell(app, failed, "job") == "error 8"
        status = str(app.screen.query_one("#status", Static).content)
        assert "3 queued resources" in status
        # The row under the cursor says it all in a line, a FAILED one's error too.
        await cursor_to(pilot, failed)
        assert note(app).startswith("queued resource demo-queue-failed: FAILED, spot, 0/1 nodes")
        assert 'error 8: There is no more capacity in the zone "europe-west4-a"' in note(app)
        await cursor_to(pilot, "us-central2-b/demo-ms-1")
        assert note(app).startswith("queued resource demo-multislice: ACTIVE, on-demand, 2/2")
        await pilot.press("A")  # by age: the group moves as one, its row above its slices
        rows = fleet_row_keys(app)
        at = rows.index(f"queued:{MS}")
        assert rows[at + 1 : at + 3] == ["us-central2-b/demo-ms-0", "us-central2-b/demo-ms-1"]
        assert app.screen.cursor_node_key() == "us-central2-b/demo-ms-1"  # the cursor stayed
        await pilot.press("Z")
        # The filter reads requests too: v5p has no node, only its request.
        await pilot.press("slash", *"v5p")
        assert fleet_row_keys(app) == [waiting]
        await pilot.press("escape", "slash", *"demo-ms-1")  # one slice: under its request
        assert fleet_row_keys(app) == [f"queued:{MS}", "us-central2-b/demo-ms-1"]
        assert cell(app, "us-central2-b/demo-ms-1", "name") == "└ demo-ms-1"
        await pilot.press("escape")
        assert f"queued:{MS}" in fleet_row_keys(app)


async def test_a_create_through_the_queue_shows_each_state_with_the_time_waited(
    app: TpuConsoleApp, sandbox: Sandbox
) -> None:
    # Each state long enough for a loaded machine's polls to see it (the sandbox moves a
    # request along whenever anyone looks, so a late look skips a state).
    sandbox.fleet.timing = replace(sandbox.fleet.timing, queue_accept_s=1.0, queue_wait_s=2.0)
    shown: list[str] = []  # every text the operations panel was given, in order
    told = kept_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app))
        ops = app.screen.query_one("#ops", Static)
        update = ops.update
        ops.update = lambda content="", **kw: (shown.append(str(content)), update(content, **kw))[1]
        await cursor_to(pilot, "us-central1-a/demo-v5e-timeout")  # spot has room here
        await pilot.press("c")
        form = app.screen
        assert isinstance(form, CreateScreen)
        await until(pilot, lambda: form.query_one("#type", Select).value == "v3-8")
        assert not form.query_one("#queued-fields").display
        await pilot.press(*["tab"] * 8, "space")  # "Through a queued resource"
        assert form.query_one("#queued-fields").display
        await pilot.press("tab", "enter", "down", "enter")  # the tier: spot
        await pilot.press("tab", *"6h", "tab", "ctrl+u", "1")
        request = form.request()
        assert isinstance(request, QueuedCreateRequest)
        assert (request.tier, request.valid_for_s, request.count) == ("spot", 21600.0, 1)
        await pilot.press("ctrl+s")
        assert not isinstance(app.screen, CreateScreen)
        name = request.name
        await until(pilot, lambda: any("ACTIVE after" in t for t in told))
        lines = [line for text in shown for line in text.splitlines()]
        states = []
        for line in lines:
            if line.startswith(f"⟳ queue {name}: "):
                state = line.split(": ")[1].split(" after ")[0]
                if not states or states[-1] != state:
                    states.append(state)
        assert states[-4:] == ["ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"]
        waiting = next(line for line in lines if "WAITING_FOR_RESOURCES after" in line)
        assert waiting.endswith("s — valid for 6h")  # the time waited, and the bound
        assert any(line.startswith(f"⟳ ssh {name}") for line in lines)  # then the ssh check
        done = next(t for t in told if "ACTIVE after" in t)
        assert f"{name} READY (ssh answers on every worker)" in done
        key = f"us-central1-a/{name}"
        await until(pilot, lambda: key in fleet_row_keys(app))
        await until(pilot, lambda: cell(app, f"queued:{key}", "state") == "ACTIVE")
        assert fleet_row_keys(app).index(key) == fleet_row_keys(app).index(f"queued:{key}") + 1
        assert cell(app, key, "name") == f"└ {name}" and cell(app, key, "state") == "READY"


async def test_a_queued_create_that_fails_says_why_in_a_sentence(app: TpuConsoleApp) -> None:
    told = kept_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app))
        await pilot.press("c")
        form = app.screen
        assert isinstance(form, CreateScreen)
        await until(pilot, lambda: form.query_one("#type", Select).value == "v5litepod-4")
        # europe-west4-a has no spot v5e: the request waits its one second and FAILs.
        await pilot.press(*["tab"] * 8, "space", "tab", "enter", "down", "enter", "tab", *"1s")
        request = form.request()
        assert isinstance(request, QueuedCreateRequest) and request.tier == "spot"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: any("Queued create" in t for t in told))
        said = next(t for t in told if "Queued create" in t)
        assert f"Queued resource {request.name} FAILED: [4]" in said
        assert "'valid until' time" in said and "It still holds its quota" in said


async def test_the_form_says_what_is_wrong_with_the_queues_fields(app: TpuConsoleApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app))
        await pilot.press("c")
        form = app.screen
        assert isinstance(form, CreateScreen)
        await until(pilot, lambda: form.query_one("#type", Select).value == "v5litepod-4")
        await pilot.press(*["tab"] * 8, "space", "tab", "tab", *"six hours", "ctrl+s")
        errors = str(form.query_one("#create-errors", Static).content)
        assert "is not like 6h, 90m or 1d12h" in errors
        assert isinstance(app.screen, CreateScreen)  # nothing sent


async def test_deleting_a_node_of_a_request_says_the_request_goes_and_deletes_it(
    app: TpuConsoleApp, sandbox: Sandbox
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app))
        await cursor_to(pilot, "us-central2-b/demo-ms-1")
        await pilot.press("ctrl+d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        question = "\n".join(app.screen.lines)
        assert app.screen.title_text == "Delete queued resource demo-multislice?"
        assert "demo-ms-1 belongs to queued resource demo-multislice" in question
        assert "with force: its nodes (demo-ms-0, demo-ms-1) are deleted too" in question
        await pilot.press("y")
        await until(pilot, lambda: f"queued:{MS}" not in fleet_row_keys(app))
        await until(pilot, lambda: "us-central2-b/demo-ms-0" not in fleet_row_keys(app))
        snapshot = await app.services.fleet.list_nodes()
        assert snapshot.queued(MS) is None
        assert not [n for n in snapshot.nodes if n.name.startswith("demo-ms-")]


async def test_a_requests_own_row_deletes_the_request(app: TpuConsoleApp) -> None:
    waiting = "queued:us-east5-a/demo-queue-v5p"
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app))
        await cursor_to(pilot, waiting)
        await pilot.press("ctrl+d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert (
            "Delete queued resource demo-queue-v5p in us-east5-a (WAITING_FOR_RESOURCES)"
            in (app.screen.lines[0])
        )
        assert "none yet: demo-queue-v5p never came" in app.screen.lines[0]
        await pilot.press("y")
        await until(pilot, lambda: waiting not in fleet_row_keys(app))
        snapshot = await app.services.fleet.list_nodes()
        assert snapshot.queued("us-east5-a/demo-queue-v5p") is None


async def test_a_failed_request_on_quota_is_a_health_finding_cleaned_up_once_confirmed(
    app: TpuConsoleApp,
) -> None:
    from console.ui.health_screen import HealthScreen

    failed = "europe-west4-a/demo-queue-failed"
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app))
        await pilot.press("H")
        health = app.screen
        assert isinstance(health, HealthScreen)
        found = health.findings()
        assert [row[:3] for row in found] == [(failed, "-", "holds quota")]
        assert (
            "demo-queue-failed in europe-west4-a is FAILED and holds 8 chips of spot quota "
            in (found[0][3])
        )
        assert "There is no more capacity" in found[0][3]  # its error, as the request says
        await pilot.press("K")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert app.screen.title_text == "Delete queued resource demo-queue-failed?"
        assert "its quota is freed" in app.screen.lines[1]
        await pilot.press("n")  # nothing happens
        assert app.screen is health and health.findings()[0][0] == failed
        await pilot.press("K")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: app.screen is health and health.findings() == [])
        await until(pilot, lambda: health.query_one("#health", DataTable).row_count == 0)
        snapshot = await app.services.fleet.list_nodes()
        assert snapshot.queued(failed) is None
        await pilot.press("escape")
        await until(pilot, lambda: f"queued:{failed}" not in fleet_row_keys(app))


async def test_the_node_detail_names_its_request_and_says_when_the_service_took_it_back(
    app: TpuConsoleApp, sandbox: Sandbox
) -> None:
    from console.services.queued_resources import QueuedResourceService

    zone = "us-central1-a"
    life = app.services.lifecycle
    queued = QueuedResourceService(app.services.fleet, life, poll_s=0.05)
    await queued.create(QueuedCreateRequest("spot-q", zone, "v3-8", tier="spot"))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app) and f"{zone}/spot-q" in fleet_row_keys(app))
        await cursor_to(pilot, "us-central2-b/demo-ms-1")
        await pilot.press("enter")
        summary = app.screen.query_one("#summary", Static)
        await until(pilot, lambda: "slice 1 of 2" in text_of(summary))
        assert "queued resource  demo-multislice: ACTIVE, on-demand, slice 1 of 2" in (
            text_of(summary)
        )
        await pilot.press("escape")
        await cursor_to(pilot, f"{zone}/spot-q")
        await pilot.press("enter")
        summary = app.screen.query_one("#summary", Static)
        await until(pilot, lambda: "spot-q: ACTIVE, spot" in text_of(summary))
        sandbox.fleet.preempt(zone, "spot-q")
        for _ in range(500):  # the service deletes the node: until the listing has it no more
            if all(n.name != "spot-q" for n in (await app.services.fleet.list_nodes()).nodes):
                break
        await pilot.press("r")
        banner = app.screen.query_one("#detail-banner", Static)
        await until(pilot, lambda: "initiated by SERVICE" in text_of(banner))
        said = " ".join(text_of(banner).split())
        assert "spot capacity reclaimed by the TPU service (queued resource spot-q is SUSPEND" in (
            said
        )
        assert "not a user or a policy" in said


async def test_a_launch_on_a_slice_of_a_group_runs_on_every_slice_or_is_refused_for_a_part(
    app: TpuConsoleApp,
) -> None:
    from textual.widgets import Input

    from console.ui.launch_screen import LaunchScreen
    from console.ui.log_screen import LogScreen

    jobs = app.services.jobs
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app))
        await cursor_to(pilot, "us-central2-b/demo-ms-1")
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, LaunchScreen) and form.group is not None
        form.query_one("#template", Select).value = "custom"
        await until(pilot, lambda: bool(form.query("#p-command")))
        form.query_one("#p-command", Input).focus()
        await pilot.press(
            *'echo "$MEGASCALE_NUM_SLICES $MEGASCALE_SLICE_ID $MEGASCALE_PORT" > ~/megascale'
        )
        checks = form.query_one("#launch-checks", Static)
        assert "preflight: nothing in the way" in str(checks.content)
        form.query_one("#workers", Input).value = "0"  # half a group would never start
        await until(pilot, lambda: "REFUSE" in str(checks.content))
        assert "every worker of every slice must run the program" in str(checks.content)
        await pilot.press("ctrl+s")
        assert app.screen is form  # refused: nothing sent
        form.query_one("#workers", Input).value = "all"
        await until(pilot, lambda: "REFUSE" not in str(checks.content))
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        first = app.screen.job
        assert first.node == "demo-ms-0"  # the first slice's logs open
        await until(pilot, lambda: jobs.get(first.job_id).status == "succeeded")
        launched = [j for j in jobs.history.recent(10) if j.node.startswith("demo-ms-")]
        assert sorted(j.node for j in launched) == ["demo-ms-0", "demo-ms-1"]
        snapshot = await app.services.fleet.list_nodes()
        for slice_id, name in enumerate(("demo-ms-0", "demo-ms-1")):
            node = next(n for n in snapshot.nodes if n.name == name)
            for worker in (0, 1):
                status, text = await worker_output(
                    app.services.remote,
                    node,
                    "for i in $(seq 200); do [ -s ~/megascale ] && break; sleep 0.05; done; "
                    "cat ~/megascale",
                    worker,
                )
                assert (status, text) == (0, f"2 {slice_id} 8080"), (name, worker)
