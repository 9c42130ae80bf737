"""No text from a job, a node or a user is ever read as markup: it shows as typed, nothing crashes.

Textual would read `[/]` as a closing tag (MarkupError: the app dies), `[bold red]x[/]` as a
style (the brackets vanish) and `[@click=app.quit]` as an action. Each test below drives the real
screens with such text and checks it on screen character for character.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input

from console.sandbox.fleet_state import SandboxNode
from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from console.services.session import Services
from console.ui.app import TpuConsoleApp
from console.ui.cleanup_screen import CleanupScreen
from console.ui.create_screen import CreateScreen
from console.ui.health_screen import HealthScreen
from console.ui.job_detail import JobDetailScreen
from console.ui.jobs_screen import JobsScreen
from console.ui.launch_screen import LaunchScreen
from console.ui.log_screen import LogScreen
from console.ui.node_detail import NodeDetailScreen
from tests.conftest import screen_text, until

ZONE = "us-central2-b"
HOSTILE_NODE = "hostile-v4-8"
RUNTIME = "v[/x]"
DESCRIPTION = "[bold red]desc[/] [@click=app.quit]quit[/]"
SYMPTOM = "[INST] symptom [/INST]"
LABEL_VALUE = "[/]"
COMMAND = "echo '[INST] hi [/INST]'"
OUTPUT = "[bold red]out[/] [$x]y"
FAILURE = "RuntimeError: TPU is already in use by process [/x]"
HOLDER = Path(__file__).resolve().parents[2] / "hold_tpu.py"


@pytest.fixture
def hostile_node(sandbox: Sandbox) -> SandboxNode:
    """A node whose free-text fields (description, symptoms, labels, runtime) are hostile."""
    node = SandboxNode(
        HOSTILE_NODE,
        ZONE,
        "v4-8",
        RUNTIME,
        "READY",
        sandbox.fleet.new_node_id(),
        0.0,
        labels={"team": LABEL_VALUE},
        description=DESCRIPTION,
        symptoms=[SYMPTOM],
    )
    sandbox.fleet.add_node(node)
    return node


def console(jobs: JobService, **kw) -> TpuConsoleApp:
    return TpuConsoleApp(Services.build(jobs), mode="SANDBOX", **kw)


async def cursor_to(app: TpuConsoleApp, pilot, key: str) -> None:
    table = app.screen.query_one("#fleet", DataTable)
    await until(pilot, lambda: key in table.rows)
    for _ in range(table.row_count):
        if app.screen.cursor_node_key() == key:
            return
        await pilot.press("down")
    raise AssertionError(f"{key} not reached")


async def test_a_job_command_with_inst_tags_opens_the_jobs_list_every_time(
    jobs: JobService,
) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", COMMAND)
    app = console(jobs)
    async with app.run_test(size=(200, 40), notifications=True) as pilot:
        for _ in range(2):  # the seeds' report: the first `j` crashed, and every later one
            await pilot.press("j")
            assert isinstance(app.screen, JobsScreen)
            await until(pilot, lambda: COMMAND in screen_text(app))
            await pilot.press("escape")
        await pilot.press("j")
        await until(pilot, lambda: COMMAND in screen_text(app))  # the list, read off the loop
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen))
        assert f"job {job.job_id}" in screen_text(app) and COMMAND in screen_text(app)
    assert app.return_code in (None, 0)


async def test_a_label_key_of_brackets_in_the_create_form_is_refused_as_typed(
    jobs: JobService,
) -> None:
    app = console(jobs)
    async with app.run_test(size=(200, 50), notifications=True) as pilot:
        await until(pilot, lambda: app.screen.query_one("#fleet", DataTable).row_count >= 5)
        await pilot.press("c")
        form = app.screen
        assert isinstance(form, CreateScreen)
        form.query_one("#labels", Input).focus()
        await pilot.press(*"[/]=x", "ctrl+s")
        assert isinstance(app.screen, CreateScreen)  # refused, and the form still open
        await until(pilot, lambda: "Label key '[/]'" in screen_text(app))
        await pilot.press("escape")
        assert not isinstance(app.screen, CreateScreen)


async def test_node_detail_shows_hostile_runtime_description_labels_and_symptoms(
    jobs: JobService, hostile_node: SandboxNode
) -> None:
    app = console(jobs)
    async with app.run_test(size=(200, 50), notifications=True) as pilot:
        await cursor_to(app, pilot, hostile_node.key)
        await pilot.press("enter")
        assert isinstance(app.screen, NodeDetailScreen)
        await until(pilot, lambda: RUNTIME in screen_text(app))
        shown = screen_text(app)
        for text in (DESCRIPTION, SYMPTOM, f"team={LABEL_VALUE}"):
            assert text in shown, text
        await pilot.press("r")  # read again from the API: still shown, still running
        await pilot.pause()
        assert RUNTIME in screen_text(app)
        await pilot.press("escape", "slash", *"[/]")  # a filter typed by the user
        await until(pilot, lambda: "filter: '[/]'" in screen_text(app))


async def test_job_output_search_filter_and_findings_show_as_printed(jobs: JobService) -> None:
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    job = await jobs.launch(node, "all", f"echo {OUTPUT!r}; echo {FAILURE!r}; exit 1")
    await jobs.follow(job, node, lambda w, t: None)
    app = console(jobs)
    async with app.run_test(size=(200, 50), notifications=True) as pilot:
        await app.push_screen(LogScreen(jobs.get(job.job_id)))
        screen = app.screen
        await until(pilot, lambda: OUTPUT in screen_text(app) and FAILURE in screen_text(app))
        # The finding, its evidence quoted from the log as printed.
        await until(pilot, lambda: f"— {FAILURE}" in screen_text(app))
        await pilot.press("slash", *"[/zz]", "enter")  # no such line: said in a notification
        await until(pilot, lambda: "No line contains '[/zz]'." in screen_text(app))
        assert "search: '[/zz]'" in screen_text(app)
        await pilot.press("ampersand", *"[bold", "enter")
        await until(pilot, lambda: screen.running_query is None)
        await until(pilot, lambda: "filter: '[bold'" in screen_text(app))
        assert len(screen.index.visible) == 1 and OUTPUT in screen_text(app)
        app.pop_screen()
        await pilot.press("j")
        await until(pilot, lambda: "w0: The TPU is already in use" in screen_text(app))


async def test_launch_form_shows_a_hostile_value_in_the_command_as_typed(
    jobs: JobService,
) -> None:
    app = console(jobs)
    async with app.run_test(size=(200, 60), notifications=True) as pilot:
        await cursor_to(app, pilot, f"{ZONE}/demo-v4-8")
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, LaunchScreen)
        form.query_one("#p-prompt", Input).focus()
        await pilot.press(*"[/] [bold red]p[/]")
        await until(pilot, lambda: "--prompt '[/] [bold red]p[/]'" in screen_text(app))


async def test_health_and_cleanup_show_a_hostile_command_line_as_it_runs(
    jobs: JobService, sandbox: Sandbox
) -> None:
    place = sandbox.worker_place(sandbox.fleet.get(ZONE, "demo-v4-8"), 0)
    place.materialise()
    shutil.copy(HOLDER, place.root / "hold_tpu.py")
    node = await jobs.remote.fleet.find_node("demo-v4-8")
    await jobs.remote.run(
        node,
        "0",
        "setsid nohup python3 hold_tpu.py chips '[/]' > h.out 2>&1 "
        "< /dev/null & until grep -q holding h.out; do sleep 0.02; done",
    )
    app = console(jobs)
    async with app.run_test(size=(200, 50), notifications=True) as pilot:
        key = f"{ZONE}/demo-v4-8"
        table = app.screen.query_one("#fleet", DataTable)
        await until(
            pilot, lambda: key in table.rows and "lingering" in str(table.get_cell(key, "lock"))
        )
        await pilot.press("H")
        assert isinstance(app.screen, HealthScreen)
        await until(pilot, lambda: "hold_tpu.py chips [/]" in screen_text(app))
        await pilot.press("escape")
        await cursor_to(app, pilot, key)
        await pilot.press("K")
        assert isinstance(app.screen, CleanupScreen)
        dialog = app.screen
        await until(pilot, lambda: dialog.state == "confirm")
        assert "hold_tpu.py chips [/]" in screen_text(app)
        await pilot.press("y")
        await until(pilot, lambda: dialog.state == "done")
        assert "now clean" in screen_text(app)


# ----- a guard for widgets written later ---------------------------------------------------------
UI = Path(__file__).resolve().parents[3] / "console" / "ui"
TEXT_WIDGETS = {"Static", "Label"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = (
                node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            )
            yield name, node


def test_every_text_widget_of_the_console_is_built_not_to_read_markup() -> None:
    """A new Static, Label or table that would parse its text as markup fails here, by name.

    Static and Label take `markup=False` (text is given as Rich Text when styled); tables are
    PlainTable, whose str cells are text; nothing builds markup with escape() or from_markup,
    since neither Rich's nor Textual's escape covers every tag Textual reads.
    """
    problems = []
    for path in sorted(UI.rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        where = path.relative_to(UI.parent.parent)
        for name, call in _calls(tree):
            keywords = {k.arg: k.value for k in call.keywords}
            if name in TEXT_WIDGETS:
                flag = keywords.get("markup")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}:{call.lineno}: {name}(...) without markup=False")
            if name == "DataTable" and path.name != "plain.py":
                problems.append(f"{where}:{call.lineno}: DataTable(...): use PlainTable")
            if name in {"from_markup", "escape"}:
                problems.append(f"{where}:{call.lineno}: {name}(...) reads or makes markup")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                if "DataTable" in bases and path.name != "plain.py":
                    problems.append(
                        f"{where}:{node.lineno}: {node.name}(DataTable): use PlainTable"
                    )
    assert problems == []


async def test_notifications_never_read_markup_whoever_asks(jobs: JobService) -> None:
    app = console(jobs)
    async with app.run_test(size=(160, 40), notifications=True) as pilot:
        app.screen.notify("[/] [@click=app.quit]q[/]", markup=True)
        await until(pilot, lambda: "[/] [@click=app.quit]q[/]" in screen_text(app))
