"""A runner ends when its work does, even with threads left behind and even when it failed."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import threading, time
from remote.process_end import run_and_exit

def main():
    threading.Thread(target=time.sleep, args=(3600,)).start()  # an engine's leftover thread
    print("working", flush=True)
    {body}

run_and_exit(main)
"""


def run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(body=body)],
        capture_output=True,
        text=True,
        timeout=30,  # without run_and_exit each of these would wait an hour
    )


def test_a_failure_is_printed_and_ends_the_process_with_code_1() -> None:
    out = run("raise RuntimeError('Not enough memory')")
    assert out.returncode == 1 and out.stdout == "working\n"
    assert "Traceback" in out.stderr and "RuntimeError: Not enough memory" in out.stderr


def test_a_refusal_message_and_a_clean_return_keep_their_meaning() -> None:
    refused = run("raise SystemExit('Unknown device id 9. Known: [0, 1]')")
    assert (
        refused.returncode == 1 and refused.stderr.strip() == "Unknown device id 9. Known: [0, 1]"
    )
    assert run("return 2").returncode == 2
    assert run("return 0").returncode == 0
