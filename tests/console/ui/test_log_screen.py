"""The log view by key presses: two workers' lines, follow and pause, search, worker switching."""

from __future__ import annotations

import re

import pytest

from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from console.services.session import Services
from console.ui.app import TpuConsoleApp
from console.ui.jobs_screen import JobsScreen
from console.ui.log_screen import LogScreen
from tests.conftest import screen_text, until

ZONE = "us-central2-b"
# Forty lines and an error per worker, then it waits for the test to let it finish.
SCRIPT = (
    'w=$(basename "$HOME"); for i in $(seq 1 40); do echo "$w line $i"; done; '
    'echo "ValueError: boom on $w"; '
    'echo "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static."; '
    'while [ ! -f "$HOME/release" ]; do sleep 0.05; done; '
    'echo "$w done"'
)


@pytest.fixture
async def app_with_job(sandbox: Sandbox, services: Services):
    fleet, jobs = services.fleet, services.jobs
    node = await fleet.find_node("demo-v4-16")
    job = await jobs.launch(node, "all", SCRIPT)
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    release = [
        sandbox.worker_place(sandbox.fleet.get(ZONE, "demo-v4-16"), w).root / "release"
        for w in (0, 1)
    ]
    yield app, job, release
    for path in release:
        path.touch()


def shown(screen: LogScreen) -> list[tuple[int, str]]:
    return [screen.index.visible_line(r) for r in range(len(screen.index.visible))]


async def settled(pilot, screen: LogScreen) -> None:
    """Searches and filters run off the event loop: wait for the one asked for to finish."""
    await until(pilot, lambda: screen.running_query is None)


async def test_log_view_follows_pauses_searches_and_switches_workers(app_with_job) -> None:
    app, job, release = app_with_job
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("j")
        assert isinstance(app.screen, JobsScreen)
        await until(pilot, lambda: app.screen.query_one("#jobs").row_count == 1)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, LogScreen)
        view = screen.view
        # Following: once all 84 lines are in, the view settles on the last of them.
        await until(
            pilot, lambda: len(screen.index) == 84 and view.scroll_offset.y == view.max_scroll_y > 0
        )
        assert {w for w, _ in shown(screen)} == {0, 1}
        assert view.follow
        # The known failure is diagnosed on both workers, with its remedy on screen.
        await until(pilot, lambda: len(screen.diagnoser.found) == 2)
        assert {(d.key, d.worker) for d in screen.diagnoser.found} == {
            ("hbm_oom", 0),
            ("hbm_oom", 1),
        }
        assert "mem-fraction-static" in str(screen.query_one("#log-diagnosis").content)

        await pilot.press("up")
        assert not view.follow
        assert "PAUSED" in screen.query_one("#log-status").text
        await pilot.press("f")
        assert view.follow

        await pilot.press("slash", *"boom", "enter")
        await settled(pilot, screen)
        first = view.current_row
        assert first is not None and "boom" in screen.index.visible_line(first)[1]
        assert not view.follow
        await pilot.press("n")
        await settled(pilot, screen)
        second = view.current_row
        assert second != first and "boom" in screen.index.visible_line(second)[1]

        await pilot.press("2")
        await settled(pilot, screen)
        assert {w for w, _ in shown(screen)} == {1} and len(shown(screen)) == 42
        await pilot.press("a", "ampersand", *"line 4", "enter")  # the second view waits for none
        await settled(pilot, screen)
        assert sorted(t for _, t in shown(screen)) == [
            "w0 line 4",
            "w0 line 40",
            "w1 line 4",
            "w1 line 40",
        ]

        for path in release:
            path.touch()
        await until(pilot, lambda: all(s == "rc=0" for s in screen.ended.values()))
        await pilot.press("ampersand", "ctrl+u", "enter")  # empty filter: everything again
        await settled(pilot, screen)
        assert shown(screen)[-1][1].endswith("done") and len(shown(screen)) == 86

        await pilot.press("s")
        saved = list((app.services.jobs.home / "saved").glob(f"{job.job_id}-*.log"))
        assert len(saved) == 1 and len(saved[0].read_text().splitlines()) == 86


async def test_hang_and_silence_are_judged_only_while_the_job_runs(
    jobs: JobService, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    import console.services.job_monitor as job_monitor

    monkeypatch.setattr(job_monitor, "HANG_AFTER_DONE_S", 0.0)
    monkeypatch.setattr(job_monitor, "SILENT_S", 0.0)
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    ended = await jobs.launch(node, "all", "echo 'DONE: engines=1 wall_sec=0.1'")
    await jobs.follow(ended, node, lambda w, t: None)
    hanging = await jobs.launch(node, "all", "echo 'DONE: engines=1 wall_sec=0.1'; sleep 30")
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(160, 40)) as pilot:
        done = LogScreen(jobs.get(ended.job_id))
        await app.push_screen(done)
        await until(pilot, lambda: 0 in done.metrics.done)
        done.monitor.check(done.job.open, done.ended)  # each redraw asks; both limits passed
        assert done.diagnoser.found == [] and jobs.get(ended.job_id).diagnoses == ()
        app.pop_screen()
        live = LogScreen(jobs.get(hanging.job_id))
        await app.push_screen(live)
        await until(pilot, lambda: any(d.key == "hang_after_done" for d in live.diagnoser.found))
        await jobs.stop(jobs.get(hanging.job_id), node, grace_s=0.5)


BIG = 2_000_000  # lines, as the report had it


async def test_search_and_filter_of_a_big_log_leave_the_keys_working(
    jobs: JobService, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search reads every line off the event loop: keys work meanwhile, esc stops it."""
    import threading
    from datetime import UTC, datetime

    from console.models import Job, JobWorker
    from console.services.log_index import Query

    job = Job("1-b16b16", "demo-v4-8", ZONE, "big", datetime.now(UTC), workers=(JobWorker(0),))
    jobs.history.record_launch(job)
    copy = jobs.log_path(job.job_id, 0)
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"".join(b"line %d of the run\n" % i for i in range(BIG)) + b"needle\n")
    # The first search is held once it has read half the log, as a slower disk would hold it.
    gate, check = threading.Event(), Query.check

    def held(query: Query) -> None:
        if query.text == "absent" and query.fraction > 0.5:
            gate.wait(30)
        check(query)

    monkeypatch.setattr(Query, "check", held)
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    try:  # never leave the held search waiting
        async with app.run_test(size=(120, 30), notifications=True) as pilot:
            screen = LogScreen(jobs.get(job.job_id))
            await app.push_screen(screen)
            await until(pilot, lambda: len(screen.index) == BIG + 1, limit=6000)
            status = screen.query_one("#log-status")
            await pilot.press("slash", *"absent", "enter")
            progress = re.compile(r"searching 'absent'… [1-9]\d?% \(esc stops\)")
            await until(pilot, lambda: progress.search(status.text.plain) is not None)
            following = screen.view.follow
            await pilot.press("f")  # keys are handled while the search runs
            assert screen.view.follow is not following and screen.running_query is not None
            await pilot.press("home")
            assert screen.view.scroll_offset.y == 0
            await pilot.press("escape")  # stops the search; the view stays open
            assert screen.running_query is None and app.screen is screen
            assert "searching" not in status.text
            gate.set()
            await pilot.press("slash", "ctrl+u", *"NEEDLE", "enter")
            await until(pilot, lambda: screen.view.current_row == BIG)
            assert screen.index.visible_line(BIG)[1] == "needle"
            await pilot.press("ampersand", *"needle", "enter")
            await until(pilot, lambda: len(screen.index.visible) == 1)
            assert f"1/{BIG + 1} lines" in status.text and "filter: 'needle'" in status.text
            assert "No line contains" not in screen_text(app)  # the stopped search said nothing
    finally:
        gate.set()


async def test_loss_and_mean_reward_are_plotted_side_by_side_per_worker(
    jobs: JobService, services: Services
) -> None:
    """The lines remote/grpo.py and Tunix print, from both workers of a slice."""
    node = await jobs.remote.fleet.find_node("demo-v4-16")
    script = (
        "for s in 1 2 3; do "
        'echo "INFO:absl:Train step $s training loss: 0.0$s  - training perplexity: 1.0"; '
        'echo "Train step $s reward_mean=$((s * 25)).5 kl=0.001"; done'
    )
    job = await jobs.launch(node, "all", script, kind="grpo")
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = LogScreen(jobs.get(job.job_id))
        await app.push_screen(screen)
        panel = screen.query_one("#log-diagnosis")
        await until(pilot, lambda: "step 3: 75.5" in str(panel.content).split("w1")[-1])
        lines = [line for line in str(panel.content).splitlines() if line.startswith("w")]
        for worker, line in enumerate(lines):
            assert line == f"w{worker}   loss ▁▄█ step 3: 0.03   reward ▁▄█ step 3: 75.5"
        # The job's end is recorded before the history closes under it.
        await until(pilot, lambda: jobs.get(job.job_id).status == "succeeded")


async def test_the_last_line_without_a_newline_is_shown_once_the_job_ends(
    jobs: JobService,
    services: Services,
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", "printf 'one\\ntwo\\nlast words'")
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = LogScreen(job)
        await app.push_screen(screen)
        await until(pilot, lambda: screen.ended[0] == "rc=0" and len(screen.index) == 3)
        assert shown(screen) == [(0, "one"), (0, "two"), (0, "last words")]


CONTROLS = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]}


async def test_job_output_cannot_drive_the_terminal_but_its_colours_and_bars_show(
    jobs: JobService,
    services: Services,
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    script = (
        "printf 'before\\n"
        "\\033]0;PWNED TITLE\\007\\033[2J\\033[H\\033[5;10Hmoved\\033[3Aup\\033[?1049h\\n"
        "\\033[31mred\\033[0m and \\033[1;32mbold green\\033[0m\\n"
        " 10%%\\r 50%%\\r100%% done\\n'"
    )
    job = await jobs.launch(node, "all", script)
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = LogScreen(job)
        await app.push_screen(screen)
        await until(pilot, lambda: screen.ended[0] == "rc=0" and len(screen.index) == 4)
        await pilot.pause()
        rows = ["".join(s.text for s in strip) for strip in app.screen._compositor.render_strips()]
        assert not any(set(row) & CONTROLS for row in rows), "a control reached the screen"
        assert f"job {job.job_id} on demo-v4-8" in rows[0]  # the header is where it was
        shown_rows = [row.split("│", 1)[1].strip() for row in rows if row.startswith("w0 │")]
        assert shown_rows == ["before", "movedup", "red and bold green", "100% done"]
        colours = {
            s.text: s.style
            for y in range(screen.view.size.height)
            for s in screen.view.render_line(y)
            if s.style is not None and s.style.color is not None and "w0" not in s.text
        }
        assert colours["red"].color.number == 1
        assert colours["bold green"].color.number == 2 and colours["bold green"].bold


def bar_rows(app: TpuConsoleApp) -> list[str]:
    rows = [strip.text for strip in app.screen._compositor.render_strips()]
    return [row.split("│ ", 1)[1].rstrip() for row in rows if row.startswith("w0 │")]


async def test_a_running_progress_bar_is_counted_and_shown_at_its_latest_state(
    jobs: JobService, services: Services, sandbox: Sandbox
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    script = (
        "printf 'epoch 1\\n'; for p in 10 60; do printf '\\r%3d%%|%s' $p 'bar'; "
        "until [ -f \"$HOME/go-$p\" ]; do sleep 0.05; done; done; printf '\\r100%%|bar\\ndone\\n'"
    )
    job = await jobs.launch(node, "all", script)
    home = sandbox.worker_place(sandbox.fleet.get(ZONE, "demo-v4-8"), 0).root
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = LogScreen(job)
        await app.push_screen(screen)
        status = screen.query_one("#log-status")
        await until(pilot, lambda: bar_rows(app) == ["epoch 1", " 10%|bar"])
        # the bar is a line while it runs (the status line follows at the view's next redraw)
        await until(pilot, lambda: "2/2 lines" in status.text)
        (home / "go-10").touch()
        await until(pilot, lambda: bar_rows(app) == ["epoch 1", " 60%|bar"])
        await until(pilot, lambda: "2/2 lines" in status.text)
        (home / "go-60").touch()
        await until(pilot, lambda: bar_rows(app) == ["epoch 1", "100%|bar", "done"])
        await until(pilot, lambda: "3/3 lines" in status.text and screen.ended[0] == "rc=0")


async def test_a_30_mb_line_is_one_row_shown_in_part_and_read_once(
    jobs: JobService, services: Services
) -> None:
    from datetime import UTC, datetime

    from console.models import Job, JobWorker
    from console.services.lines import VISIBLE_BYTES

    job = Job("1-10e10e", "demo-v4-8", ZONE, "big", datetime.now(UTC), workers=(JobWorker(0),))
    jobs.history.record_launch(job)
    copy = jobs.log_path(job.job_id, 0)
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"before\n" + b"x" * (30 << 20) + b"\nafter\n")
    app = TpuConsoleApp(services, mode="SANDBOX", probe_interval_s=None)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = LogScreen(jobs.get(job.job_id))
        await app.push_screen(screen)
        await until(pilot, lambda: bar_rows(app)[-1:] == ["after"])
        await until(pilot, lambda: "3/3 lines" in screen.query_one("#log-status").text)
        shown = screen.index.text(1)
        assert shown.startswith("x" * 1000)
        assert shown.endswith(f" … [{(30 << 20) - VISIBLE_BYTES:,} more bytes]")
        for key in ("up", "up", "home", "end", "down", "end"):  # each redraw reads 16 KiB at most
            await pilot.press(key)
        assert bar_rows(app)[0] == "before"
