"""The multi-engine runner on the real sgl-jax Engine: sglang-jax 0.1.0rc0 from .venv-engine, on
four virtual CPU devices, with the tiny Llama and dummy weights; nothing is downloaded.

Each scenario is a process of its own, as on a VM: sgl-jax ends its process when a scheduler
fails. Where `make` found no Python 3.12 these skip, and say so.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from console.cli import main as tpuconsole
from console.sandbox.engine_env import CHECKOUT, TINY_LLAMA, engine_env

ENGINE = engine_env()
pytestmark = [
    pytest.mark.skipif(not ENGINE.ready(), reason=ENGINE.missing()),
    pytest.mark.slow,
]

# The seeds' tiny-llama run, small: one token, a 128-token context, one request per engine.
TINY = [
    "--model", TINY_LLAMA, "--context-length", "128", "--max-total-tokens", "128",
    "--max-prefill-tokens", "128", "--page-size", "8", "--max-running-requests", "1",
    "--max-new-tokens", "1", "--prompt", "1+1=?",
]  # fmt: skip
RUNNER = [str(ENGINE.python), "-u", "-m", "remote.multi_engine"]
OLD_SGL_JAX = [str(ENGINE.python), "-u", str(CHECKOUT / "tests" / "remote" / "old_sgl_jax.py")]
SEEDS_ERROR = (
    "ValueError: Received incompatible devices for jitted computation. Got argument "
    "sampler_state_leaves[0] of ModelRunner.initialize_jit.<locals>.jitted_sampler"
)


def engine_environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPUCONSOLE_", "HF_"))}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(ENGINE.hub_cache),
        TMPDIR=str(tmp_path / "tmp"),  # where sgl-jax makes its unix sockets
        PYTHONPATH=str(CHECKOUT),
    )
    env.update(extra)
    return env


def run(tmp_path: Path, argv: list[str], **extra: str) -> tuple[int, list[str], Path]:
    """The scenario's exit status and its output as a job's log would hold it (both streams)."""
    log = tmp_path / "log"
    with log.open("w") as out:
        rc = subprocess.run(
            argv,
            cwd=CHECKOUT,
            env=engine_environment(tmp_path, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        ).returncode
    return rc, log.read_text().splitlines(), log


def diagnosed(log: Path, capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    assert tpuconsole(["diagnose", str(log)]) == 1
    return capsys.readouterr().out


def test_four_real_engines_warm_up_then_generate_concurrently_and_the_process_ends(
    tmp_path: Path,
) -> None:
    stderr = tmp_path / "stderr"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [*RUNNER, *TINY, "--warmup-sequential", "--concurrency", "4"],
            cwd=CHECKOUT,
            env=engine_environment(tmp_path),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        assert proc.stdout is not None
        lines, done_at = [], None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("DONE:"):
                done_at = time.monotonic()
                break
        rc = proc.wait(timeout=60)
    assert done_at is not None, "\n".join(lines) + stderr.read_text()[-3000:]
    gone_after = time.monotonic() - done_at
    assert rc == 0 and gone_after < 10  # sgl-jax's scheduler threads do not keep it alive
    assert list((tmp_path / "tmp").iterdir()) == []  # nor are its sockets' files left behind
    assert lines[0].startswith("engine: sgl-jax 0.1.0rc0")
    assert lines[1].startswith('JAX: {"backend": "cpu"') and '"local_device_count": 4' in lines[1]
    # Built in their own threads: the signal-handler patch is what lets them be.
    assert "signal handlers: installed on the main thread only" in lines
    assert "zero-penalty cache: already device-aware (sglang-jax PR #795 or later)" in lines
    quiet = "idle scheduler: waits for requests instead of spinning"
    for i in range(4):
        assert f"[engine {i}] init device_indexes=[{i}]" in lines
        assert f"[engine device {i}] {quiet}" in lines
        assert f"[engine {i}] OK mesh_device_ids=[{i}]" in lines  # the engine's real mesh
    assert lines.index("Warmup: sequential generate") < lines.index(
        "Running concurrent generate (engine-workers): concurrency=4"
    )
    timed = [x for x in lines if " generate_sec=" in x]
    assert sorted(x.split("]")[0] for x in timed) == [f"[engine {i}" for i in range(4)]
    assert lines[-1].startswith("DONE: engines=4 wall_sec=")


def test_a_shape_keyed_cache_without_the_patch_fails_as_the_seeds_did_and_is_diagnosed(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc, lines, log = run(
        tmp_path,
        [*OLD_SGL_JAX, "shape-keyed-cache", *TINY, "--num-engines", "2", "--warmup-sequential",
         "--concurrency", "2", "--no-cache-patch"],
    )  # fmt: skip
    assert rc == 131  # sgl-jax SIGQUITs its own process when the scheduler fails
    errors = [x for x in lines if x.startswith("ValueError: Received incompatible devices")]
    assert errors and errors[0].startswith(SEEDS_ERROR)
    assert "with device ids [1]" in errors[0] and "argument args[1][8]" in errors[0]
    assert "with device ids [0]" in errors[0]  # engine 0's array, handed to engine 1
    assert lines[-1].startswith("ERROR: sgl-jax ended the run: a scheduler failed")
    assert not any(x.startswith("DONE:") for x in lines)
    report = diagnosed(log, capsys)
    assert "Engines on different devices share an array" in report
    assert "An sgl-jax scheduler failed and sgl-jax ended the process" in report
    assert "PR #795" in report


def test_the_same_shape_keyed_cache_with_the_patch_runs_to_done(tmp_path: Path) -> None:
    rc, lines, _ = run(
        tmp_path,
        [*OLD_SGL_JAX, "shape-keyed-cache", *TINY, "--num-engines", "2", "--warmup-sequential",
         "--concurrency", "2"],
    )  # fmt: skip
    assert rc == 0, "\n".join(lines[-30:])
    assert "zero-penalty cache: was keyed by shape alone; patched to key by device too" in lines
    assert len([x for x in lines if " generate_sec=" in x]) == 2
    assert any(x.startswith("DONE: engines=2 wall_sec=") for x in lines)


def test_engines_built_in_threads_fail_without_the_signal_patch(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc, lines, log = run(
        tmp_path,
        [*RUNNER, *TINY, "--num-engines", "1", "--engine-per-thread", "--no-signal-patch"],
    )
    assert rc == 1
    assert "ValueError: signal only works in main thread of the main interpreter" in lines
    assert "sgl-jax's Engine installs SIGCHLD/SIGQUIT handlers" in diagnosed(log, capsys)
    # With the patch, the four-engine run above builds every engine in a thread of its own.


def test_sampler_state_made_on_another_device_needs_no_fix(tmp_path: Path) -> None:
    """The seeds moved each engine's sampler state to its device; 0.1.0rc0 does not need it."""
    rc, lines, _ = run(tmp_path, [*OLD_SGL_JAX, "sampler-state", TINY_LLAMA])
    assert rc == 0, "\n".join(lines[-30:])
    # Built for device 1 with no default device: the state is on device 0, but not committed
    # to it, so JAX moves it to the engine's device and the engine generates.
    assert "sampler state: devices=[0] committed=False" in lines
    assert "engine: mesh_device_ids=[1] generated=1" in lines


def test_a_too_old_sgl_jax_is_refused_with_a_reason(tmp_path: Path) -> None:
    rc, lines, _ = run(
        tmp_path,
        [*RUNNER, *TINY],
        PYTHONPATH=os.pathsep.join([str(ENGINE.old_sglang_jax), str(CHECKOUT)]),
    )
    assert rc == 1
    assert lines[0].startswith("engine: sgl-jax 0.0.2")
    assert lines[-1].startswith(
        "sgl-jax 0.0.2 cannot run the multi-engine test: its Engine has no device_indexes"
    )
    assert "--engine reference" in lines[-1]


def test_a_python_without_sgl_jax_runs_the_runner_in_the_engine_python(tmp_path: Path) -> None:
    """As the sandbox starts it: the console's python, TPUCONSOLE_SGL_JAX_PYTHON set."""
    import sys

    rc, lines, _ = run(
        tmp_path,
        [sys.executable, "-u", "-m", "remote.multi_engine", *TINY, "--num-engines", "5"],
        TPUCONSOLE_SGL_JAX_PYTHON=str(ENGINE.python),
    )
    assert rc == 1
    assert lines[0].startswith("engine: sgl-jax 0.1.0rc0 (Python 3.1")
    assert lines[-1] == "Need 5 device ids, got 4: [0, 1, 2, 3]"
