"""remote.grpo with the in-process sglang-jax rollout, end to end on JAX's CPU backend.

It runs in the real-engine environment (.venv-engine: Python 3.12, sglang-jax[cpu] and Tunix,
made by `make test`), from a tiny Qwen3 directory, with the network cut off.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.remote.test_grpo import LOSS, REWARD, SEED_SINGLE_HOST, offline_env
from tests.remote.tiny_qwen3 import write_gsm8k_parquet, write_tiny_qwen3

pytestmark = pytest.mark.slow  # end to end through the real runner: minutes

ROOT = Path(__file__).resolve().parents[2]
ENGINE_PYTHON = Path(
    os.environ.get("TPUCONSOLE_ENGINE_PYTHON") or ROOT / ".venv-engine" / "bin" / "python"
)


def _engine_env_has_tunix() -> str:
    if not ENGINE_PYTHON.exists():
        return f"no real-engine environment at {ENGINE_PYTHON} (make test creates .venv-engine)"
    probe = subprocess.run(
        [str(ENGINE_PYTHON), "-c", "import sgl_jax, tunix"], capture_output=True, text=True
    )
    if probe.returncode:
        return f"{ENGINE_PYTHON} lacks sglang-jax or Tunix: {probe.stderr.strip()[-200:]}"
    return ""


WHY_NOT = _engine_env_has_tunix()


@pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT)
def test_the_seeds_single_host_command_runs_sglang_jax_rollout_on_the_cpu(tmp_path: Path) -> None:
    models = tmp_path / "models"
    model_dir = models / "Qwen__Qwen3-4B-Instruct-2507"
    write_tiny_qwen3(model_dir)
    data = write_gsm8k_parquet(tmp_path / "gsm8k_train.parquet")
    log = tmp_path / "network.log"
    # Two rollouts with the trained weights pushed into the engine between them: everything
    # the TPU run does, at a size a CPU compiles in minutes.
    small = ["--steps", "2", "--rollout-devices", "1"]
    small += ["--batch-size", "1", "--num-generations", "2", "--mini-batch-size", "1"]
    small += ["--micro-batch-size", "1", "--max-prompt-length", "96", "--max-new-tokens", "4"]
    small += ["--sglang-page-size", "16", "--sglang-chunked-prefill-size", "256"]
    args = [*SEED_SINGLE_HOST, *small, "--models-dir", str(models), "--metrics-dir", ""]
    args += ["--data-source", "local", "--dataset", str(data)]
    out = subprocess.run(
        [str(ENGINE_PYTHON), "-u", "-m", "remote.grpo", *args],
        cwd=ROOT,
        env={
            **offline_env(1, log),
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests/remote/offline'}",
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert not log.exists(), log.read_text()
    assert "rollout_engine=sglang_jax" in out.stdout
    (line,) = re.findall(r"^SGLANG_JAX: (.*)$", out.stdout, re.M)
    engine = json.loads(line)
    # The settings as the engine holds them: the seeds' and the demo's, through Tunix's config.
    assert engine["model_path"] == str(model_dir) and engine["load_format"] == "dummy"
    assert engine["mem_fraction_static"] == 0.8 and engine["disable_precompile"] is True
    assert engine["context_length"] == 96 + 4 + 256
    assert engine["max_total_tokens"] == (96 + 4 + 256) * 1 * 2
    assert (engine["page_size"], engine["chunked_prefill_size"]) == (16, 256)
    assert engine["precompile_bs_paddings"] == [8]
    assert engine["precompile_token_paddings"] == [2048]
    assert engine["enable_single_process"] is True and engine["device_indexes"] == [0]
    assert [int(s) for s, _ in LOSS.findall(text)] == [1, 2]
    assert [int(s) for s, *_ in REWARD.findall(out.stdout)] == [1, 2]
    assert "DONE: steps=2" in out.stdout
