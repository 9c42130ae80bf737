"""The multi-engine runner on 4 virtual CPU devices with the reference engine (fast; the real
sgl-jax engine's runs are in test_sgl_jax_engine.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # end to end through the real runner: minutes

pytest.importorskip("jax")

ENV = {k: v for k, v in os.environ.items() if not k.startswith("TPUCONSOLE_")}
ENV.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
BASE = [
    sys.executable,
    "-u",
    "-m",
    "remote.multi_engine",
    "--engine",
    "reference",
    "--context-length",
    "64",
    "--max-new-tokens",
    "4",
    "--prompt",
    "1+1=?",
]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BASE, *args], env=ENV, capture_output=True, text=True, timeout=120)


def test_four_engines_warm_up_then_run_concurrently_and_exit_by_themselves() -> None:
    proc = subprocess.Popen(
        [*BASE, "--concurrency", "4", "--warmup-sequential"],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("DONE:"):
            done_at = time.monotonic()
            break
    rc = proc.wait(timeout=30)
    assert rc == 0 and time.monotonic() - done_at < 10  # ends itself soon after DONE
    assert lines[0] == "engine: reference"  # a log says what ran
    assert lines[1].startswith('JAX: {"backend": "cpu"') and '"local_device_count": 4' in lines[1]
    for i in range(4):
        assert f"[engine {i}] init device_indexes=[{i}]" in lines
        assert f"[engine {i}] OK mesh_device_ids=[{i}]" in lines
        assert any(x.startswith(f"[engine {i}] generate_sec=") for x in lines)
    assert lines.index("Warmup: sequential generate") < lines.index(
        "Running concurrent generate (engine-workers): concurrency=4"
    )
    assert lines[-1].startswith("DONE: engines=4 wall_sec=")


def test_engines_built_in_their_own_threads() -> None:
    out = run("--concurrency", "4", "--engine-per-thread")
    assert out.returncode == 0, out.stderr
    assert "DONE: engines=4" in out.stdout


def test_the_seeds_bug_reproduces_with_a_shape_keyed_cache_and_the_patch_fixes_it() -> None:
    broken = run("--concurrency", "1", "--no-cache-patch")
    assert broken.returncode != 0
    assert "Received incompatible devices for jitted computation" in broken.stderr
    fixed = run("--concurrency", "1")
    assert fixed.returncode == 0, fixed.stderr
    assert "zero-penalty cache: patched to be device-aware" in fixed.stdout
    assert "DONE: engines=4" in fixed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--num-engines", "5"), "Need 5 device ids, got 4: [0, 1, 2, 3]"),
        (("--device-indexes", "0,0,1,2"), "Duplicate device ids: [0, 0, 1, 2]"),
        (("--device-indexes", "0,1,2,9"), "Unknown device id 9. Known: [0, 1, 2, 3]"),
    ],
)
def test_device_choices_are_checked_with_the_seeds_messages(args, message: str) -> None:
    out = run(*args)
    assert out.returncode == 1 and message in out.stderr


def test_without_sgl_jax_the_runner_says_what_to_do() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "remote.multi_engine", "--engine", "sgl-jax"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stdout.startswith("engine: sgl-jax (not installed in this Python, ")
    assert "sgl-jax is not importable here" in out.stderr and "--engine reference" in out.stderr


def test_a_sandbox_without_sgl_jax_says_why_it_runs_the_reference_engine() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "remote.multi_engine", "--num-engines", "5"],
        env=dict(ENV, TPUCONSOLE_ENGINE="reference", TPUCONSOLE_ENGINE_NOTE="no sgl-jax here"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.splitlines()[0] == "engine: reference (no sgl-jax here)"
