"""remote.grpo on JAX's CPU backend: the toy, a tiny Qwen3 read from its directory with the
network cut off, one process and two as one slice, and the refusal of sglang-jax across them."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from remote import grpo, grpo_tasks
from tests.remote.tiny_qwen3 import write_gsm8k_parquet, write_tiny_qwen3

pytestmark = pytest.mark.slow  # end to end through the real runner: minutes

LOSS = re.compile(r"Train step (\d+) training loss: (-?[0-9.]+)")
REWARD = re.compile(r"^Train step (\d+) reward_mean=(-?[0-9.]+) kl=(-?[0-9.]+)$", re.M)
OFFLINE = Path(__file__).parent / "offline"  # its sitecustomize cuts the network off
SEED_SINGLE_HOST = [
    "--steps",
    "10",
    "--rollout-devices",
    "2",
    "--sglang-mem-fraction-static",
    "0.8",
]
SEED_MULTI_HOST = [
    "--steps", "10", "--rollout-devices", "8", "--rollout-engine", "vanilla",
    "--local-model-dir", "/tmp/models/Qwen__Qwen3-4B-Instruct-2507",
]  # fmt: skip
needs_tunix = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("tunix"),
    reason="the grpo extra is not installed: pip install -e '.[grpo]'",
)


def env(devices: int, **extra: str) -> dict[str, str]:
    out = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        **extra,
    )
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        out.pop(name, None)  # the runner must go offline by itself, and never needs a token
    return out


def offline_env(devices: int, log: Path) -> dict[str, str]:
    """As env(), with every connection off this machine blocked and written to `log`."""
    return env(
        devices,
        PYTHONPATH=os.pathsep.join([str(OFFLINE), os.environ.get("PYTHONPATH", "")]),
        TPUCONSOLE_NETWORK_LOG=str(log),
    )


def runner(args: list[str], environment: dict[str, str], timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-u", "-m", "remote.grpo", *args],
        env=environment,
        stdin=subprocess.DEVNULL,  # nobody is there to answer a login prompt
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_slice(hosts: int, *args: str) -> list[subprocess.CompletedProcess]:
    """`hosts` processes joined into one JAX runtime, as the workers of a multi-host slice."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-u", "-m", "remote.grpo", *args],
            env=env(
                2,
                TPUCONSOLE_COORDINATOR=f"127.0.0.1:{port}",
                TPUCONSOLE_NUM_PROCESSES=str(hosts),
                TPUCONSOLE_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(hosts)
    ]
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=600)  # a safety net: two JAX processes, 2 busy cores
            outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, ""))
    finally:
        for p in procs:  # the ones this test started, and only if still running
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


# --- the toy learns from its rewards ---------------------------------------------------------


@needs_tunix
def test_toy_earns_rewards_and_its_loss_is_more_than_the_kl_term() -> None:
    out = runner(["--model", "toy", "--steps", "2"], env(4), timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    losses = {int(s): float(v) for s, v in LOSS.findall(text)}
    rewards = {int(s): (float(r), float(kl)) for s, r, kl in REWARD.findall(out.stdout)}
    assert sorted(losses) == sorted(rewards) == [1, 2]
    assert any(r != 0 for r, _ in rewards.values()), rewards
    # GRPO's loss is -mean(ratio·advantage) + β·KL. The toy passes twice over each batch
    # (μ = 2): on the second pass the policy has moved, and the policy term is what is left.
    beta = grpo.parse_args(["--model", "toy"]).beta
    gaps = {s: losses[s] - beta * rewards[s][1] for s in losses}
    assert max(abs(g) for g in gaps.values()) > 1e-3, (losses, rewards)
    assert re.search(r"^DONE: steps=2 elapsed_sec=[0-9.]+$", out.stdout, re.M)
    assert '"process_index": 0, "process_count": 1' in out.stdout


def test_toy_rewards_score_a_random_model_and_the_sum() -> None:
    completions = ["7 what 3", "+ ? is", "7", ""]
    assert grpo_tasks.toy_number_words([], completions) == [2 / 3, 0.0, 1.0, 0.0]
    assert grpo_tasks.toy_sum([], ["3 7", "7 3", "7", "is"], answer=["7"] * 4) == [1, 2, 2, 0]


# --- a Qwen3 directory, loaded with no Hugging Face call -------------------------------------


@needs_tunix
def test_the_seeds_command_trains_a_local_qwen3_for_two_steps_with_the_network_cut_off(
    tmp_path: Path,
) -> None:
    """The seeds' single-host flags, the model where a download of its id lands, GSM8K from a
    local parquet copy through Tunix's data path; vanilla rollout (no sgl-jax in this env)."""
    models = tmp_path / "models"
    write_tiny_qwen3(models / "Qwen__Qwen3-4B-Instruct-2507")
    data = write_gsm8k_parquet(tmp_path / "gsm8k_train.parquet")
    log = tmp_path / "network.log"
    small = ["--max-new-tokens", "8", "--max-prompt-length", "128", "--batch-size", "2"]
    small += ["--num-generations", "2", "--mini-batch-size", "2", "--micro-batch-size", "2"]
    args = [*SEED_SINGLE_HOST, "--steps", "2", "--rollout-engine", "vanilla", *small]
    args += ["--models-dir", str(models), "--data-source", "local", "--dataset", str(data)]
    args += ["--metrics-dir", str(tmp_path / "tb"), "--checkpoint-dir", str(tmp_path / "ckpt")]
    out = runner(args, offline_env(2, log), timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert not log.exists(), log.read_text()  # no name looked up, no connection tried
    assert f"MODEL: loading {models / 'Qwen__Qwen3-4B-Instruct-2507'}" in out.stdout
    assert "downloading" not in text
    assert [int(s) for s, _ in LOSS.findall(text)] == [1, 2]
    assert [int(s) for s, *_ in REWARD.findall(out.stdout)] == [1, 2]
    assert "DONE: steps=2" in out.stdout
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))  # the metrics dir
    assert (tmp_path / "ckpt" / "actor" / "2").is_dir()  # the last step's checkpoint


@needs_tunix
def test_a_model_id_with_no_weights_here_and_no_token_fails_fast_with_what_to_do(
    tmp_path: Path,
) -> None:
    """The download is tried anonymously (no login, no prompt) and its failure is one line.
    It is also the proof that the offline test's hook sees a Hugging Face call."""
    log = tmp_path / "network.log"
    out = runner(
        ["--models-dir", str(tmp_path / "models"), "--rollout-engine", "vanilla"],
        offline_env(2, log),
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "anonymously, HF_TOKEN is unset" in out.stdout
    error = [line for line in out.stdout.splitlines() if line.startswith("ERROR: ")]
    assert len(error) == 1 and "could not download Qwen/Qwen3-4B-Instruct-2507" in error[0]
    assert "--local-model-dir" in error[0]
    assert "huggingface.co" in log.read_text()
    assert "Traceback" not in out.stderr


# --- one slice of two processes --------------------------------------------------------------


@needs_tunix
def test_two_hosts_train_together_with_vanilla_rollout_and_each_logs_its_index() -> None:
    outs = run_slice(
        2, "--model", "toy", "--steps", "2", "--rollout-engine", "vanilla", "--rollout-devices", "4"
    )
    for index, out in enumerate(outs):
        assert out.returncode == 0, out.stdout[-3000:]
        assert f'"process_index": {index}, "process_count": 2' in out.stdout
        assert f"process_index={index}" in out.stdout
        assert len(LOSS.findall(out.stdout)) == 2 and "DONE: steps=2" in out.stdout
    # One program: both hosts computed the same losses and the same rewards.
    assert LOSS.findall(outs[0].stdout) == LOSS.findall(outs[1].stdout)
    assert REWARD.findall(outs[0].stdout) == REWARD.findall(outs[1].stdout)


@pytest.mark.parametrize("devices", ["2", "4"])  # one host's devices, and both hosts'
def test_sglang_rollout_in_a_two_process_job_is_refused_on_every_host(devices: str) -> None:
    outs = run_slice(2, "--rollout-engine", "sglang_jax", "--rollout-devices", devices)
    for out in outs:
        assert out.returncode == 2, out.stdout[-3000:]
        error = [line for line in out.stdout.splitlines() if line.startswith("ERROR: ")]
        assert len(error) == 1, out.stdout
        assert "cannot run in a job of 2 processes" in error[0]
        assert "The program continuator has halted unexpectedly" in error[0]
        assert "--rollout-engine vanilla" in error[0]
        assert "separate single-host servers" in error[0]
        assert "Train step" not in out.stdout  # refused before anything loaded


SGLANG_EXTRAS = [
    [],
    ["--sglang-setting", "nnodes=2"],
    ["--sglang-setting", "node_rank=1"],
    ["--sglang-setting", "dist_init_addr=10.0.0.2:5000"],
    ["--sglang-setting", "device_indexes=[0,1]"],
    ["--sglang-setting", "tp_size=1"],
    ["--sglang-setting", "enable_single_process=false"],
    ["--no-sglang-disable-precompile", "--sglang-page-size", "16"],
]


@pytest.mark.parametrize(
    ("engine", "model"),
    [([], []), (["--rollout-engine", "sglang_jax"], []), ([], ["--model", "Qwen/Qwen3-8B"])],
)
def test_no_flag_combination_starts_an_in_process_engine_across_processes(
    engine: list[str], model: list[str]
) -> None:
    for devices, extra in itertools.product(range(1, 9), SGLANG_EXTRAS):
        args = grpo.parse_args([*engine, *model, "--rollout-devices", str(devices), *extra])
        assert args.rollout_engine == "sglang_jax"
        assert grpo.rollout_refusal(args, process_count=2, device_count=8), (devices, extra)
        vanilla = grpo.parse_args(
            ["--rollout-engine", "vanilla", "--rollout-devices", str(devices)]
        )
        assert grpo.rollout_refusal(vanilla, process_count=2, device_count=8) is None
        if extra[:1] == ["--sglang-setting"]:  # multi-node settings stay refused on one host
            assert grpo.rollout_refusal(args, process_count=1, device_count=8)


def test_the_flags_that_pretended_multi_node_worked_are_gone() -> None:
    options = [o for a in grpo.parser()._actions for o in a.option_strings]
    assert not [o for o in options if re.search(r"nnodes|node-rank|dist-init", o)]
    for flag in ("--sglang-nnodes", "--sglang-node-rank", "--sglang-dist-init-addr"):
        with pytest.raises(SystemExit) as exited:
            grpo.parse_args([flag, "2"])
        assert exited.value.code == 2


# --- the recipe and the sglang-jax settings --------------------------------------------------


def dry_run(args: list[str]) -> dict:
    out = runner([*args, "--dry-run"], env(1), timeout=60)
    assert out.returncode == 0, out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("PLAN: ")]
    return json.loads(line.removeprefix("PLAN: "))


def test_the_seeds_two_commands_parse_to_the_demo_recipe_on_one_model_directory() -> None:
    single, multi = dry_run(SEED_SINGLE_HOST), dry_run(SEED_MULTI_HOST)
    # The single-host run downloads the id where the multi-host run was pointed.
    assert single["model_dir"] == multi["model_dir"] == "/tmp/models/Qwen__Qwen3-4B-Instruct-2507"
    assert (single["rollout_engine"], multi["rollout_engine"]) == ("sglang_jax", "vanilla")
    assert (single["steps"], single["rollout_devices"], multi["rollout_devices"]) == (10, 2, 8)
    assert single["sglang_jax"]["rollout_sglang_jax_mem_fraction_static"] == 0.8
    assert multi["sglang_jax"] is None
    for plan in (single, multi):  # Tunix's GRPO demo, scripts/grpo_demo_llama3_qwen2.py
        assert plan["generation"] == {
            "max_prompt_length": 256,
            "max_new_tokens": 768,
            "temperature": 0.9,
            "top_p": 1.0,
            "top_k": 50,
            "kv_cache_size": 256 + 768 + 256,
        }
        assert plan["grpo"] == {
            "num_generations": 4,
            "num_iterations": 1,
            "beta": 0.08,
            "epsilon": 0.2,
            "batch_size": 4,
            "mini_batch_size": 4,
            "micro_batch_size": 2,
        }
        assert plan["optimizer"] == {
            "learning_rate": 3e-6,
            "b1": 0.9,
            "b2": 0.99,
            "weight_decay": 0.1,
            "warmup_steps": 1,
            "max_grad_norm": 0.1,
        }
        assert plan["rewards"] == [
            "match_format_exactly",
            "match_format_approximately",
            "check_answer",
            "check_numbers",
        ]
        assert plan["metrics_dir"] == "/tmp/tensorboard/grpo"
        assert plan["data"] == {"source": "huggingface", "dataset": "openai/gsm8k:main"}


@needs_tunix
def test_sglang_settings_reach_tunix_config_where_they_take_effect() -> None:
    from tunix.rl.rollout.base_rollout import RolloutConfig

    args = grpo.parse_args([*SEED_SINGLE_HOST, "--sglang-setting", "log_level=warning"])
    config = grpo.rollout_config(args, "/m")
    assert (config.max_tokens_to_generate, config.top_k, config.kv_cache_size) == (768, 50, 1280)
    # Tunix's sampler takes load_format from this field, whatever init_with_random_weights says.
    assert config.rollout_sglang_jax_load_format == "dummy"
    assert config.rollout_sglang_jax_init_with_random_weights is True
    assert config.rollout_sglang_jax_model_version == "/m"
    assert config.rollout_sglang_jax_mem_fraction_static == 0.8
    assert config.rollout_sglang_jax_context_length == 1280
    assert config.rollout_sglang_jax_page_size == 64
    assert config.rollout_sglang_jax_chunked_prefill_size == 2048
    assert config.rollout_sglang_jax_precompile_bs_paddings == [8]
    assert config.rollout_sglang_jax_precompile_token_paddings == [2048]
    # What RolloutConfig has no field for goes to the engine through Tunix's kwargs.
    assert config.rollout_sglang_jax_kwargs == {
        "disable_precompile": True,
        "max_total_tokens": 1280 * 4 * 4,
        "log_level": "warning",
    }
    # A Tunix without one of these fields would drop the setting: that is an error instead.
    older = dataclasses.make_dataclass(
        "RolloutConfig",
        [
            (f.name, f.type, f)
            for f in dataclasses.fields(RolloutConfig)
            if f.name != "rollout_sglang_jax_page_size"
        ],
    )
    with pytest.raises(ValueError, match="no field rollout_sglang_jax_page_size"):
        grpo.rollout_config(args, "/m", older)


def test_engine_settings_are_checked_against_sglang_jax_server_args() -> None:
    @dataclasses.dataclass
    class ServerArgs:  # the two fields of sgl-jax's ServerArgs this check needs
        model_path: str = ""
        max_total_tokens: int = 0

    grpo.check_engine_settings({"max_total_tokens": 1}, ServerArgs)
    with pytest.raises(ValueError, match="no engine setting max_totl_tokens"):
        grpo.check_engine_settings({"max_totl_tokens": 1}, ServerArgs)


def test_batch_sizes_are_checked_with_the_flag_names() -> None:
    with pytest.raises(SystemExit):
        grpo.parse_args(["--batch-size", "4", "--mini-batch-size", "3"])
    with pytest.raises(SystemExit):
        grpo.parse_args(["--num-generations", "1"])
    with pytest.raises(SystemExit):  # Tunix's sglang-jax rollout cannot give old log-probs
        grpo.parse_args(["--rollout-engine", "sglang_jax", "--num-iterations", "2"])
    assert grpo.parse_args(["--rollout-engine", "vanilla", "--num-iterations", "2"])
    toy = grpo.parse_args(["--model", "toy"])
    assert (toy.rollout_engine, toy.max_new_tokens, toy.num_iterations) == ("vanilla", 4, 2)
    assert grpo.parse_args(["--model=toy", "--max-new-tokens=8"]).max_new_tokens == 8


# --- the demo's four rewards -----------------------------------------------------------------

GOOD = "<reasoning>48/2 = 24, 48 + 24 = 72</reasoning>\n<answer>72</answer>"
NEAR = "<reasoning>about</reasoning><answer>70</answer>"
TWICE = "<answer>1</answer> <reasoning>x</reasoning> <answer>72</answer>"


def test_the_demo_rewards_score_format_and_answer() -> None:
    completions = [GOOD, NEAR, TWICE, "72", "<answer>lots</answer>"]
    answers = ["72"] * 5
    assert grpo_tasks.match_format_exactly([], completions) == [3.0, 3.0, 0.0, 0.0, 0.0]
    assert grpo_tasks.match_format_approximately([], completions) == [2.0, 2.0, 0.0, -2.0, 0.0]
    assert grpo_tasks.check_answer([], completions, answer=answers) == [3.0, 0.5, 3.0, 0.0, 0.0]
    assert grpo_tasks.check_numbers([], completions, answer=answers) == [1.5, 0.0, 1.5, 0.0, 0.0]
    assert grpo_tasks.check_answer([], ["<answer>60</answer>"], answer=["72"]) == [0.25]
    assert grpo_tasks.check_answer([], ["<answer>1,000</answer>"], answer=["1000"]) == [-0.5]
    assert grpo_tasks.check_numbers([], ["<answer>1,000</answer>"], answer=["1000"]) == [1.5]


@needs_tunix
def test_the_rewards_ask_for_the_tags_tunix_system_prompt_names() -> None:
    from tunix.examples.data import math_dataset

    for tag in (*grpo_tasks.REASONING, *grpo_tasks.ANSWER):
        assert tag in math_dataset.SYSTEM_PROMPT
