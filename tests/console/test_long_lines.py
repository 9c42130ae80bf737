"""Long lines from the user's side: a progress bar of 63 MB followed in bounded memory.

`tpuconsole logs -f` prints the bar's latest state, the local copy keeps every byte, and the
follower's peak memory does not grow with the line (it grew by the line twice over before).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from console.cli import main

STATES = 640_000  # 98-byte `\r` states: one line of 63 MB
BAR = (
    'python3 -c "import sys\n'
    "w = sys.stdout.buffer.write\n"
    f"for i in range({STATES}): w(b'\\r%6d%%|%s|' % (i, b'#' * 88))\n"
    "w(b'\\nafter the bar\\n')\""
)
MEASURE = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run([sys.executable, '-m', 'console.cli', *sys.argv[1:]],"
    " capture_output=True)\n"
    "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.stdout.flush(); sys.stdout.buffer.write(done.stdout)\n"
)


def follow_in_a_fresh_process(job_id: str) -> tuple[int, int, list[str]]:
    """`tpuconsole logs JOB -f` alone in a wrapper: its status, peak RSS (KiB) and lines."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, "logs", job_id, "-f"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    head, *printed = done.stdout.splitlines()
    rc, peak = (int(x) for x in head.split())
    return rc, peak, printed


def test_a_63_mb_progress_bar_is_followed_in_bounded_memory(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["launch", "demo-v4-8", "--", "echo small; echo job"]) == 0
    small = capsys.readouterr().out.split()[1]
    assert main(["launch", "demo-v4-8", "--", BAR]) == 0
    big = capsys.readouterr().out.split()[1]
    rc, baseline, printed = follow_in_a_fresh_process(small)
    assert (rc, printed) == (0, ["[w0] small", "[w0] job"])
    rc, peak, printed = follow_in_a_fresh_process(big)
    assert rc == 0
    assert printed == [f"[w0] {STATES - 1:6d}%|{'#' * 88}|", "[w0] after the bar"]
    assert peak - baseline < 32 * 1024, f"peak grew by {(peak - baseline) // 1024} MB"
    copy = Path(os.environ["TPUCONSOLE_HOME"]) / "logs" / big / "w0.log"
    state = len(b"\r%6d%%|%s|" % (0, b"#" * 88))
    assert copy.stat().st_size == STATES * state + len("\nafter the bar\n")  # every byte kept
