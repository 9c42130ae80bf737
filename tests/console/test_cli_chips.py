"""`tpuconsole top` and `tpuconsole stacks` as a user runs them, on the sandbox of their home:
a job deadlocked on one of two workers (tests/stuck_barrier.py), and an idle node."""

from __future__ import annotations

import asyncio
import json
import shlex
from pathlib import Path

import pytest

from console.cli import main
from console.present.chips import CHIP_JSON_KEYS, TOP_JSON_KEYS, WORKER_JSON_KEYS
from console.services.chip_metrics import NO_PROGRAM
from console.services.settings import ensure_home, resolve_settings
from console.services.templates import RUNNERS_PRELUDE
from console.wiring import open_services
from tests.conftest import worker_output

PROGRAM = (Path(__file__).resolve().parents[1] / "stuck_barrier.py").read_text()


async def _launch_deadlock() -> str:
    """Launched as the TUI or `launch` would, with the program written into each worker's HOME."""
    settings = resolve_settings()
    ensure_home(settings.home)
    command = (
        f"{RUNNERS_PRELUDE}\nprintf %s {shlex.quote(PROGRAM)} > stuck_barrier.py\n"
        "python3 -u stuck_barrier.py"
    )
    async with open_services(settings) as services:
        node = await services.fleet.find_node("demo-v4-16")
        job = await services.jobs.launch(node, "all", command, ship_runners=True)
        log = f".tpuconsole/jobs/{job.job_id}/log"
        for worker, text in ((0, "w0: preparing"), (1, "w1: at the barrier")):
            wait = f"for i in $(seq 3600); do grep -q {text!r} {log} && exit 0; sleep 0.05; done"
            status, _ = await worker_output(services.remote, node, wait + "; exit 1", worker)
            assert status == 0, f"w{worker} never printed {text!r}"
        return job.job_id


@pytest.fixture
def deadlocked():
    job_id = asyncio.run(_launch_deadlock())
    try:
        yield job_id
    finally:
        main(["jobs", "stop", job_id, "--yes"])


def test_stacks_points_at_the_worker_that_never_reached_the_barrier(
    deadlocked: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["stacks", deadlocked]) == 0
    out = capsys.readouterr().out
    assert "w0 is elsewhere (w0 in elsewhere (~/stuck_barrier.py:" in out
    assert "while w1 waits in barrier (~/stuck_barrier.py:" in out
    assert "Look at w0 first" in out
    # Side by side: the groups' titles on one line, the one that differs marked.
    titles = next(line for line in out.splitlines() if "DIFFERS" in line)
    assert "◀ DIFFERS w0: 1 worker" in titles and "w1: 1 worker (at a sync point)" in titles
    assert "── w0  ◀ differs" in out and "── w1" in out

    assert main(["stacks", deadlocked, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["differing"] == [0]
    assert [g["workers"] for g in report["groups"]] == [[0], [1]]  # equal size: by worker


def test_top_json_shows_the_held_chips_numbers_and_an_idle_nodes_reason(
    deadlocked: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["top", "demo-v4-16", "--json"]) == 0
    reading = json.loads(capsys.readouterr().out)
    assert tuple(reading) == TOP_JSON_KEYS and reading["standin"] is True
    w0, w1 = reading["workers"]
    assert tuple(w0) == WORKER_JSON_KEYS and tuple(w0["chips"][0]) == CHIP_JSON_KEYS
    assert w0["state"] == w1["state"] == "ok"
    # Rank 0 computes on chip 0 (elsewhere, never at the barrier); rank 1 holds all four, idle.
    chip0 = w0["chips"][0]
    assert chip0["hbm_used_bytes"] > 0 and chip0["pid"] and "stuck_barrier.py" in chip0["command"]
    assert all(c["pid"] for c in w1["chips"])

    assert main(["top", "demo-v4-8", "--json"]) == 0
    (idle,) = json.loads(capsys.readouterr().out)["workers"]
    assert idle["state"] == "no_program" and idle["reason"] == NO_PROGRAM
    assert [(c["hbm_used_bytes"], c["duty_cycle_pct"]) for c in idle["chips"]] == [(0, 0.0)] * 4


def test_top_refreshes_a_table_of_every_chip_until_its_count(
    deadlocked: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["top", "demo-v4-16", "-n", "2"]) == 0
    out = capsys.readouterr().out
    blocks = out.split("\n\ndemo-v4-16 · ")
    assert len(blocks) == 2, out  # into a pipe: one block per reading
    assert out.startswith("demo-v4-16 · 2 workers · 8 chips · ")
    header = next(line for line in out.splitlines() if line.startswith("WORKER"))
    assert header.split()[:5] == ["WORKER", "CHIP", "HBM", "USED", "HBM"]
    assert sum(1 for line in out.splitlines() if line.startswith(("w0 ", "w1 "))) == 16
    assert main(["top", "demo-v4-16", "-n", "0"]) == 2
