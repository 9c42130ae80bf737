"""remote.grpo on JAX's CPU backend: Tunix's toy transformer, one process and two as one slice."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from remote import grpo

LOSS = re.compile(r"Train step (\d+) training loss: (-?[0-9.]+)")


def env(devices: int, **extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        **extra,
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
    for p in procs:
        out, _ = p.communicate(timeout=240)
        outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, ""))
    return outs


def test_toy_grpo_trains_two_steps_on_the_cpu_and_says_done() -> None:
    pytest.importorskip("tunix", reason="the grpo extra is not installed: pip install -e '.[grpo]'")
    out = subprocess.run(
        [
            sys.executable,
            "-u",
            "-m",
            "remote.grpo",
            "--model",
            "toy",
            "--steps",
            "2",
            "--rollout-engine",
            "vanilla",
        ],
        env=env(4),
        capture_output=True,
        text=True,
        timeout=240,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert [int(m.group(1)) for m in LOSS.finditer(text)] == [1, 2]
    assert re.search(r"^DONE: steps=2 elapsed_sec=[0-9.]+$", out.stdout, re.M)
    assert '"process_index": 0, "process_count": 1' in out.stdout


def test_two_hosts_train_together_with_vanilla_rollout_and_each_logs_its_index() -> None:
    pytest.importorskip("tunix", reason="the grpo extra is not installed: pip install -e '.[grpo]'")
    outs = run_slice(
        2, "--model", "toy", "--steps", "2", "--rollout-engine", "vanilla", "--rollout-devices", "4"
    )
    for index, out in enumerate(outs):
        assert out.returncode == 0, out.stdout[-3000:]
        assert f'"process_index": {index}, "process_count": 2' in out.stdout
        assert f"process_index={index}" in out.stdout
        assert len(LOSS.findall(out.stdout)) == 2 and "DONE: steps=2" in out.stdout
    # One program: both hosts computed the same losses.
    assert LOSS.findall(outs[0].stdout) == LOSS.findall(outs[1].stdout)


def test_sglang_rollout_across_hosts_is_refused_on_every_host_with_the_workarounds() -> None:
    outs = run_slice(
        2, "--model", "toy", "--rollout-engine", "sglang_jax", "--rollout-devices", "4"
    )
    for out in outs:
        assert out.returncode == 2
        assert "spans hosts (processes [0, 1])" in out.stdout
        assert "The program continuator has halted unexpectedly" in out.stdout
        assert (
            "--rollout-engine vanilla" in out.stdout
            and "--rollout-devices 2 or fewer" in out.stdout
        )


@pytest.mark.parametrize(
    ("flags", "refused"),
    [
        (["--rollout-devices", "2"], False),  # host-local mesh
        (["--rollout-devices", "4", "--rollout-engine", "vanilla"], False),
        (
            ["--rollout-devices", "4", "--sglang-nnodes", "2", "--sglang-dist-init-addr", "h:1"],
            False,
        ),
        (["--rollout-devices", "4", "--sglang-nnodes", "2"], True),  # multi-node needs an address
        (["--rollout-devices", "4"], True),
        (["--rollout-devices", "9"], True),
    ],
)
def test_which_rollouts_are_refused_on_a_two_host_slice(flags: list[str], refused: bool) -> None:
    args = grpo.parse_args(flags)
    assert (grpo.rollout_refusal(args, [0, 0, 1, 1]) is not None) is refused


def test_the_suggested_host_local_size_is_one_that_would_be_accepted() -> None:
    args = grpo.parse_args(["--rollout-devices", "4", "--rollout-engine", "sglang_jax"])
    interleaved = [0, 0, 1, 1, 0, 0, 1, 1]  # a slice whose hosts' device ids interleave
    message = grpo.rollout_refusal(args, interleaved)
    assert message is not None and "--rollout-devices 2 or fewer" in message
    assert grpo.rollout_refusal(grpo.parse_args(["--rollout-devices", "2"]), interleaved) is None


def test_toy_defaults_apply_however_flags_are_written() -> None:
    toy = grpo.parse_args(["--model", "toy"])
    assert (toy.rollout_engine, toy.max_new_tokens, toy.learning_rate) == ("vanilla", 4, 1e-3)
    assert grpo.parse_args(["--model=toy", "--max-new-tokens=8"]).max_new_tokens == 8
    real = grpo.parse_args([])
    assert (real.rollout_engine, real.max_new_tokens) == ("sglang_jax", 64)


def test_rewards_follow_the_gsm8k_answer_convention() -> None:
    completions = ["so it is 72\n#### 72", "the answer is 72", "#### 71", "no idea"]
    answers = ["Natalia sold 48/2 = 24 clips... #### 72"] * 4
    assert grpo.reward_format([], completions) == [1.0, 0.0, 1.0, 0.0]
    assert grpo.reward_correct([], completions, answer=answers) == [2.0, 0.5, 0.0, 0.0]
