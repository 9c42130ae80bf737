"""End to end in the sandbox: launch the multi-engine test from the TUI by key presses."""

from __future__ import annotations

import pytest
from textual.widgets import Input, Select, Static

from console.sandbox.engine_env import engine_env
from console.services.jobs import JobService
from console.services.session import Services
from console.ui.app import TpuConsoleApp
from console.ui.launch_screen import LaunchScreen
from console.ui.log_screen import LogScreen
from tests.conftest import cursor_to, fleet_loaded, until

pytest.importorskip("jax")
ENGINE = engine_env()


def console(jobs: JobService) -> TpuConsoleApp:
    return TpuConsoleApp(Services.build(jobs), mode="SANDBOX", probe_interval_s=None)


async def open_form(app: TpuConsoleApp, pilot, node_key: str) -> LaunchScreen:
    """Down the fleet table to the node, by key presses, and `n`."""
    await until(pilot, lambda: fleet_loaded(app))
    await cursor_to(pilot, node_key)
    await pilot.press("n")
    assert isinstance(app.screen, LaunchScreen)
    return app.screen


@pytest.mark.slow  # the real sgl-jax engines behind the form: minutes on this CPU
async def test_launch_multi_engine_from_the_tui_and_see_it_succeed(
    jobs: JobService,
) -> None:
    app = console(jobs)
    async with app.run_test(size=(160, 50)) as pilot:
        form = await open_form(app, pilot, "us-central2-b/demo-v4-8")
        await pilot.press("tab", "enter", "down", "down", "enter")
        assert form.query_one("#preset", Select).value == "tiny-llama"
        model = form.query_one("#p-model", Input)
        assert model.value == "hf-internal-testing/tiny-random-LlamaForCausalLM"
        form.query_one("#p-max_new_tokens", Input).focus()
        await pilot.press("backspace", "x")  # validated as typed: the field and the reason
        assert form.query_one("#p-max_new_tokens").has_class("-bad")
        assert "'x' is not a valid int" in str(form.query_one("#launch-checks", Static).content)
        await pilot.press("backspace", "2")
        assert not form.query_one("#p-max_new_tokens").has_class("-bad")
        command = str(form.query_one("#launch-command", Static).content)
        assert "--model hf-internal-testing/tiny-random-LlamaForCausalLM" in command
        assert "--max-new-tokens 2" in command
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        logs = app.screen
        # The real sgl-jax engine compiles four engines on this machine's CPU: minutes, not s.
        await until(pilot, lambda: bool(logs.ended.get(0)), limit=30_000)
        log = jobs.log_path(logs.job.job_id, 0).read_text()
        assert logs.ended[0] == "rc=0", log[-3000:]
        await until(pilot, lambda: 0 in logs.metrics.done)
        first = log.splitlines()[0]
        if ENGINE.ready():  # the worker's python has no sgl-jax: the runner moved to .venv-engine
            assert first.startswith("engine: sgl-jax 0.1.0rc0 (Python 3.1")
        else:
            assert first.startswith("engine: reference (the sandbox has no sgl-jax: ")
        assert len([e for (w, e) in logs.metrics.engine_sec if w == 0]) == 4
        assert logs.metrics.done[0].startswith("DONE: engines=4 wall_sec=")
        panel = str(logs.query_one("#log-diagnosis", Static).content)
        assert "results" in panel and ("serial (" in panel or "concurrent (" in panel)
        assert all(f"e{i} " in panel.split("generate_sec", 1)[1] for i in range(4))
        assert logs.diagnoser.found == []
        job = jobs.get(logs.job.job_id)
        assert job.kind == "multi-engine"
        await until(pilot, lambda: jobs.get(logs.job.job_id).status == "succeeded")


async def test_a_custom_command_with_commas_and_quotes_runs_as_typed(
    jobs: JobService,
) -> None:
    app = console(jobs)
    async with app.run_test(size=(160, 50)) as pilot:
        form = await open_form(app, pilot, "us-central2-b/demo-v4-8")
        form.query_one("#template", Select).value = "custom"
        await until(pilot, lambda: bool(form.query("#p-command")))
        form.query_one("#p-command", Input).focus()
        await pilot.press(*"echo 'a, b' \"$((6 * 7))\"")
        assert "echo 'a, b'" in str(form.query_one("#launch-command", Static).content)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        job = app.screen.job
        await until(pilot, lambda: jobs.get(job.job_id).status == "succeeded")
        assert jobs.log_path(job.job_id, 0).read_text() == "a, b 42\n"
        assert jobs.get(job.job_id).params == {"command": "echo 'a, b' \"$((6 * 7))\""}


async def test_the_bad_field_is_marked_from_the_errors_field_not_its_text(
    jobs: JobService,
) -> None:
    """An empty custom command's error begins "custom:" (the template), not the field's name:
    the form marks the command field because the error names it as its `field`."""
    app = console(jobs)
    async with app.run_test(size=(160, 50)) as pilot:
        form = await open_form(app, pilot, "us-central2-b/demo-v4-8")
        form.query_one("#template", Select).value = "custom"
        await until(pilot, lambda: bool(form.query("#p-command")))
        await until(pilot, lambda: form.query_one("#p-command").has_class("-bad"))
        assert "give the command to run" in str(form.query_one("#launch-checks", Static).content)
        form.query_one("#p-command", Input).focus()
        await pilot.press(*"hostname")
        assert not form.query_one("#p-command").has_class("-bad")


async def test_the_form_works_with_choices_left_empty_and_presets_that_skip_them(
    jobs: JobService,
) -> None:
    app = console(jobs)
    async with app.run_test(size=(160, 50)) as pilot:
        form = await open_form(app, pilot, "us-central2-b/demo-v4-16")
        await until(pilot, lambda: bool(form.query("#p-load_format")))
        assert form.error == ""  # load_format left empty: the runner's default applies
        assert "python -u -m remote.multi_engine" in str(
            form.query_one("#launch-command", Static).content
        )
        form.query_one("#template", Select).value = "grpo"
        await until(pilot, lambda: bool(form.query("#p-rollout_engine")))
        form.query_one("#p-rollout_engine", Select).value = "vanilla"
        form.query_one("#preset", Select).value = "single-host-sglang"  # sets no rollout_engine
        await until(pilot, lambda: form.query_one("#p-steps", Input).value == "10")
        assert form.query_one("#p-rollout_engine", Select).is_blank()
        command = str(form.query_one("#launch-command", Static).content)
        assert "--sglang-mem-fraction-static 0.8" in command and "--rollout-engine" not in command
        checks = str(form.query_one("#launch-checks", Static).content)
        assert "continuator" in checks  # multi-host with in-process sglang-jax: the warning
