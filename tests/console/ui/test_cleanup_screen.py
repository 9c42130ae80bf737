"""`K` by key presses: the plan shows every action, `y` carries it out, the column reads clean."""

from __future__ import annotations

import shutil
from pathlib import Path

from textual.widgets import DataTable, Static

from console.sandbox.runtime import Sandbox
from console.services.session import Services
from console.ui.app import TpuConsoleApp
from console.ui.cleanup_screen import CleanupScreen
from console.ui.health_screen import HealthScreen
from tests.conftest import cursor_to, until

ZONE = "us-central2-b"
HOLDER = Path(__file__).resolve().parents[2] / "hold_tpu.py"


def lock_cell(app: TpuConsoleApp, key: str) -> str:
    table = app.screen.query_one("#fleet", DataTable)
    return str(table.get_cell(key, "lock")) if key in table.rows else ""


async def test_k_shows_the_plan_and_y_leaves_the_node_clean(
    sandbox: Sandbox, services: Services
) -> None:
    place = sandbox.worker_place(sandbox.fleet.get(ZONE, "demo-v4-8"), 0)
    place.materialise()
    shutil.copy(HOLDER, place.root / "hold_tpu.py")
    place.lockfile.touch()  # left behind by a run that died
    fleet, remote = services.fleet, services.remote
    node = await fleet.find_node("demo-v4-8")
    await remote.run(
        node,
        "0",
        "setsid nohup python3 hold_tpu.py chips > h.out 2>&1 "
        "< /dev/null & until grep -q holding h.out; do sleep 0.02; done",
    )
    app = TpuConsoleApp(services, mode="SANDBOX")
    key = "us-central2-b/demo-v4-8"
    async with app.run_test(size=(170, 40)) as pilot:
        await until(pilot, lambda: lock_cell(app, key) == "1 lingering")
        await cursor_to(pilot, key)
        await pilot.press("K")
        assert isinstance(app.screen, CleanupScreen)
        dialog = app.screen
        await until(pilot, lambda: dialog.state == "confirm")
        plan_text = str(dialog.query_one("#plan", Static).content)
        assert "SIGTERM pid" in plan_text and "hold_tpu.py chips" in plan_text
        assert f"remove {place.lockfile}" in plan_text
        await pilot.press("y")
        await until(pilot, lambda: dialog.state == "done")
        result_text = str(dialog.query_one("#plan", Static).content)
        assert "now clean" in result_text and "NOT DONE" not in result_text
        await pilot.press("enter")
        await until(pilot, lambda: lock_cell(app, key) == "clean")
        assert not place.lockfile.exists()
        await pilot.press("H")
        assert isinstance(app.screen, HealthScreen)
        # What is left is the default fleet's FAILED queued resource on quota (issue 17).
        assert [row[2] for row in app.screen.findings()] == ["holds quota"]


async def test_n_leaves_everything_as_it_is(sandbox: Sandbox, services: Services) -> None:
    place = sandbox.worker_place(sandbox.fleet.get(ZONE, "demo-v4-8"), 0)
    place.materialise()
    place.lockfile.touch()
    app = TpuConsoleApp(services, mode="SANDBOX")
    key = "us-central2-b/demo-v4-8"
    async with app.run_test(size=(170, 40)) as pilot:
        await until(pilot, lambda: lock_cell(app, key) == "STALE LOCK")
        await pilot.press("H")
        health = app.screen
        assert isinstance(health, HealthScreen)
        assert ("us-central2-b/demo-v4-8", "w0", "STALE LOCK") in [
            tuple(str(c) for c in row[:3])
            for row in (
                health.query_one("#health", DataTable).get_row_at(i)
                for i in range(health.query_one("#health", DataTable).row_count)
            )
        ]
        await pilot.press("escape")
        await cursor_to(pilot, key)
        await pilot.press("K")
        dialog = app.screen
        await until(pilot, lambda: getattr(dialog, "state", "") == "confirm")
        await pilot.press("n")
        assert not isinstance(app.screen, CleanupScreen)
        assert place.lockfile.exists()


async def test_the_first_probe_of_a_node_says_it_adds_your_key(
    sandbox: Sandbox, services: Services
) -> None:
    """A new sandbox, like a new VM, has your key in no metadata: the console says it adds it."""
    app = TpuConsoleApp(services, mode="SANDBOX")
    key = "us-central2-b/demo-v4-8"
    shown: list[str] = []  # every notification, kept past its 8 s on screen
    notify = app.notify

    def keep(message: str, **kw: object) -> None:
        shown.append(str(message))
        notify(message, **kw)  # type: ignore[arg-type]

    app.notify = keep  # type: ignore[method-assign,assignment]
    async with app.run_test(size=(170, 40)) as pilot:
        await until(pilot, lambda: lock_cell(app, key) == "clean")

        def told() -> list[str]:
            return shown

        assert "adding your ssh key to demo-v4-8's metadata" in told()
