"""Local log copies from the user's side: exact copies of the workers' logs, one rule for lines.

Several followers of one job (the log view, `tpuconsole logs -f` in two terminals) share one
local copy; it must stay byte-identical to the worker's log and every follower must print
every line once.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from console.adapters.history_db import HistoryStore
from console.cli import main
from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from console.services.remote import RemoteService
from tests.conftest import FAST, fleet_for, ssh_options_for

ZONE = "us-central2-b"
LINES = 20_000


def worker_log(sandbox: Sandbox, node: str, job_id: str, worker: int = 0) -> bytes:
    place = sandbox.worker_place(sandbox.fleet.get(ZONE, node), worker)
    return (place.root / ".tpuconsole" / "jobs" / job_id / "log").read_bytes()


@pytest.fixture
def served(tmp_path: Path):
    """The sandbox, served from this process for the CLI processes to join, as a console does."""
    with Sandbox.start(Path(os.environ["TPUCONSOLE_HOME"]), timing=FAST) as sandbox:
        yield sandbox


@pytest.fixture
async def console_jobs(served: Sandbox, tmp_path: Path):
    """The library's JobService on the same home as the CLI: the same copies and history."""
    home = Path(os.environ["TPUCONSOLE_HOME"])
    fleet = fleet_for(served)
    remote = RemoteService(fleet, ssh_options_for(served, tmp_path))
    history = HistoryStore(home / "history.db")
    try:
        yield JobService(remote, history, home)
    finally:
        await remote.close()
        await fleet.close()
        history.close()


async def _cli_follower(job_id: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "console.cli",
        "logs",
        job_id.split("-")[0],
        "-f",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )


async def test_three_followers_of_one_job_keep_one_exact_copy_and_each_sees_every_line_once(
    served: Sandbox, console_jobs: JobService
) -> None:
    node = await console_jobs.remote.fleet.find_node("demo-v4-8")
    # "ready", then, once every follower is attached, 20,000 lines in bursts.
    script = (
        'echo ready; until [ -f "$HOME/go" ]; do sleep 0.05; done; '
        f'for i in $(seq 1 {LINES}); do echo "line $i"; '
        "if [ $((i % 2000)) = 0 ]; then sleep 0.1; fi; done"
    )
    job = await console_jobs.launch(node, "all", script)
    library: list[str] = []
    following = asyncio.ensure_future(
        console_jobs.follow(job, node, lambda w, text: library.append(text))
    )
    clis = [await _cli_follower(job.job_id) for _ in range(2)]
    for cli in clis:  # each has printed the first line: all three are following now
        assert cli.stdout is not None
        first = await asyncio.wait_for(cli.stdout.readline(), 60)
        assert first == b"[w0] ready\n"
    (served.worker_place(served.fleet.get(ZONE, "demo-v4-8"), 0).root / "go").touch()
    outputs = await asyncio.wait_for(asyncio.gather(*(c.communicate() for c in clis)), 120)
    assert await asyncio.wait_for(following, 60) == {0: 0}

    expected = ["ready", *(f"line {i}" for i in range(1, LINES + 1))]
    copy = console_jobs.log_path(job.job_id, 0).read_bytes()
    assert copy == worker_log(served, "demo-v4-8", job.job_id)
    assert copy.decode().split("\n")[:-1] == expected
    assert library == expected
    for cli, (out, err) in zip(clis, outputs, strict=True):
        assert cli.returncode == 0, err.decode()
        printed = out.decode().split("\n")[:-1]
        assert printed == [f"[w0] {line}" for line in expected[1:]]  # after the first, read above


async def test_the_last_line_without_a_newline_is_kept_and_reaches_results_and_diagnoses(
    served: Sandbox, console_jobs: JobService, capsys: pytest.CaptureFixture
) -> None:
    node = await console_jobs.remote.fleet.find_node("demo-v4-16")
    script = (
        'if [ "$(basename $HOME)" = w0 ]; then printf "step\\nDONE: engines=4 wall_sec=0.5"; '
        'else printf "step\\nRuntimeError: Not enough memory. Please try to increase '
        '--mem-fraction-static."; exit 1; fi'
    )
    job = await console_jobs.launch(node, "all", script)
    live: list[tuple[int, str]] = []
    await console_jobs.follow(job, node, lambda w, text: live.append((w, text)))
    for w in (0, 1):
        assert console_jobs.log_path(job.job_id, w).read_bytes() == worker_log(
            served, "demo-v4-16", job.job_id, w
        )
    assert (0, "DONE: engines=4 wall_sec=0.5") in live
    stored = console_jobs.get(job.job_id)
    assert stored.metrics["done"] == {"0": "DONE: engines=4 wall_sec=0.5"}
    assert [(d.key, d.worker) for d in stored.diagnoses] == [("hbm_oom", 1)]
    # And the replay of the copies prints it, as `tpuconsole logs` does.
    assert await asyncio.to_thread(main, ["logs", job.job_id, "--worker", "0"]) == 0
    assert capsys.readouterr().out.split("\n")[:-1] == [
        "[w0] step",
        "[w0] DONE: engines=4 wall_sec=0.5",
    ]


def test_replay_and_live_split_lines_only_at_newlines(
    served: Sandbox, capsys: pytest.CaptureFixture
) -> None:
    # \r, \f, \v, U+0085, U+2028 and \x1c-\x1e all end a line for str.splitlines(); not here.
    script = r"printf 'a\rb\n\fc\n\vd\ne\302\205f\n\342\200\250g\n\034\035\036h\nend\n'"
    assert main(["launch", "demo-v4-8", "--follow", "--", script]) == 0
    header, *live = capsys.readouterr().out.split("\n")[:-1]
    job_id = header.split()[1]
    expected = ["a\rb", "\fc", "\vd", "e\x85f", "\u2028g", "\x1c\x1d\x1eh", "end"]
    assert live == [f"[w0] {line}" for line in expected]
    assert main(["logs", job_id]) == 0
    assert capsys.readouterr().out.split("\n")[:-1] == live
    assert main(["jobs", "show", job_id, "--json"]) == 0
