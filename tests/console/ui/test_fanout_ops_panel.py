"""Progress at pod scale in the TUI: a launch's fan-out to a 32-worker node shows k/N in the
operations panel while it runs, and names the worker whose ssh server was stopped."""

from __future__ import annotations

import re

from textual.widgets import Input, Select

from console.sandbox.fleet_state import SandboxNode
from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from console.services.session import Services
from console.ui.app import TpuConsoleApp
from console.ui.fleet_screen import FleetScreen
from console.ui.launch_screen import LaunchScreen
from console.ui.log_screen import LogScreen
from console.ui.widgets.ops_panel import OpsPanel
from tests.conftest import cursor_to, fleet_loaded, fleet_row_keys, until

ZONE = "us-central2-b"
POD = "pod-v4-256"  # 128 chips, 32 hosts
STOPPED = 17


async def test_a_fanout_to_32_workers_shows_k_of_n_and_names_the_stopped_worker(
    sandbox: Sandbox, jobs: JobService
) -> None:
    sandbox.fleet.add_node(
        SandboxNode(
            POD, ZONE, "v4-256", "tpu-ubuntu2204-base", "READY", sandbox.fleet.new_node_id(), 0.0
        )
    )
    sandbox.set_worker_down(ZONE, POD, STOPPED, True)  # its sshd stopped: refused
    app = TpuConsoleApp(Services.build(jobs), mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(160, 50)) as pilot:
        await until(pilot, lambda: fleet_loaded(app) and f"{ZONE}/{POD}" in fleet_row_keys(app))
        fleet = app.screen
        assert isinstance(fleet, FleetScreen)
        await cursor_to(pilot, f"{ZONE}/{POD}")
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, LaunchScreen)
        form.query_one("#template", Select).value = "custom"
        await until(pilot, lambda: bool(form.query("#p-command")))
        form.query_one("#p-command", Input).focus()
        await pilot.press(*"hostname")
        ops = fleet.query_one("#ops", OpsPanel)
        seen: list[str] = []  # every text the panel was given to draw (the fan-out may be
        shown = ops.update  # quicker than a poll from the test: this records each frame)

        def update(content="", **kw) -> None:
            seen.append(str(content))
            shown(content, **kw)

        ops.update = update  # type: ignore[method-assign]

        def panel() -> str:
            return str(ops.content)

        await pilot.press("ctrl+s")

        await until(pilot, lambda: f"failed: w{STOPPED} (refused)" in panel(), limit=6000)
        live = [t for t in seen if re.search(r"⟳ launch pod-v4-256: RUNNING .*\d+/32 done", t)]
        assert live, seen  # k/N while it ran
        assert any("slowest: w" in t for t in live)
        closing = panel()
        assert "✗ launch pod-v4-256: FAILED" in closing
        assert "starting: 31/32 ok in" in closing and "slowest: w" in closing
        # The other 31 run the job; the log view opens on it as for any launch.
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        job = jobs.get(app.screen.job.job_id)
        assert sum(1 for w in job.workers if w.pid) == 31
        assert [w.worker for w in job.workers if w.error] == [STOPPED]
