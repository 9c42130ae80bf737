"""Every failure the seeds met is recognised, with its cause and remedy; results are read."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.cli import main
from console.services.diagnosis import Diagnoser, diagnose_text, from_condition, looks_like_error
from console.services.metrics import JobMetrics, sparkline

# The lines as the seeds' logs (and SEED-NOTES) show them.
SEED_LINES = {
    "incompatible_devices": "ValueError: Received incompatible devices for jitted computation. "
    "Got argument args[0] of sampler with shape float32[1] and device "
    "ids [1] on platform TPU",
    "tpu_in_use": "RuntimeError: Unable to initialize backend 'tpu': ABORTED: The TPU is "
    "already in use by process with pid 4242. Not attempting to load libtpu.so "
    "in this process.",
    "tpu_version": "NotImplementedError: TPU version must be 4 or higher.",
    "continuator_halted": "jax.errors.JaxRuntimeError: FAILED_PRECONDITION: The program "
    "continuator has halted unexpectedly.",
    "hbm_oom": "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.",
    "spot_quota": "ERROR: (gcloud.compute.tpus.tpu-vm.create) Quota limit "
    "'TPUV4sPreemptiblePodPerProjectPerRegionForTPUAPI' has been exceeded.",
    "signal_off_main_thread": "ValueError: signal only works in main thread of the main "
    "interpreter",
    "multi_process_refused": "ERROR: This smoke test must run on a single host "
    "(process_count==1). Got process_count=2",
}


# The lines as the real sglang-jax 0.1.0rc0 and the runner printed them on this machine's CPU.
REAL_ENGINE_LINES = {
    "engine_device_mismatch": "AssertionError: device tpu is not consistent with "
    "'JAX_PLATFORMS' cpu",
    "scheduler_failed": "[2026-12-01 20:21:00] Scheduler hit an exception: Traceback (most "
    "recent call last):",
}
# sgl-jax with device="tpu" on a CPU and JAX_PLATFORMS unset: a TypeError whose traceback
# shows the line that asked the CPU for TPU memory statistics (jax_utils.py:166).
NONE_STATS_LINE = '    avail_mem.append(stats["bytes_limit"] - stats["bytes_in_use"])'
RUNNER_LAST_WORD = (
    "ERROR: sgl-jax ended the run: a scheduler failed (SIGQUIT from sgl-jax; its traceback is "
    "above). Exit status 131."
)


@pytest.mark.parametrize("key", sorted(SEED_LINES) + sorted(REAL_ENGINE_LINES))
def test_each_seed_failure_is_diagnosed_with_cause_and_remedy(key: str) -> None:
    line = SEED_LINES.get(key) or REAL_ENGINE_LINES[key]
    (found,) = Diagnoser().feed_line(3, line)
    assert found.key == key and found.worker == 3
    assert found.evidence == line
    assert found.cause and found.remedy


def test_the_device_mismatch_is_known_with_jax_platforms_unset_too() -> None:
    (found,) = Diagnoser().feed_line(0, NONE_STATS_LINE)
    assert found.key == "engine_device_mismatch" and "default_backend" in found.remedy


def test_the_runners_last_word_after_sgl_jax_sigquit_names_the_scheduler_failure() -> None:
    (found,) = Diagnoser().feed_line(0, RUNNER_LAST_WORD)
    assert found.key == "scheduler_failed" and "131" in found.cause


def test_the_grpo_runner_refusal_is_itself_not_the_failure_it_quotes() -> None:
    from remote import grpo

    line = "ERROR: " + grpo.MULTI_PROCESS_REFUSAL % 2  # the runner's own words
    assert "program continuator has halted" in line
    (found,) = Diagnoser().feed_line(1, line)
    assert found.key == "grpo_sglang_multi_process_refused"
    assert "vanilla" in found.remedy and "single-host servers" in found.remedy
    (halted,) = Diagnoser().feed_line(1, SEED_LINES["continuator_halted"])
    assert "host-local rollout mesh" not in halted.remedy.split("(")[0]
    assert "--rollout-engine vanilla" in halted.remedy


def test_the_owner_sees_the_lock_remedy_for_tpu_in_use() -> None:
    (found,) = Diagnoser().feed_line(0, SEED_LINES["tpu_in_use"])
    assert "K" in found.remedy and "tpuconsole clean" in found.remedy


def test_a_chunk_of_many_lines_reports_each_signature_once_per_worker() -> None:
    chunk = b"".join(f"step {i}\n".encode() for i in range(10_000))
    chunk += (SEED_LINES["hbm_oom"] + "\n").encode() * 3
    diagnoser = Diagnoser()
    assert [d.key for d in diagnoser.feed_chunk(0, chunk)] == ["hbm_oom"]
    assert diagnoser.feed_chunk(0, chunk) == []
    assert [d.key for d in diagnoser.feed_chunk(1, chunk)] == ["hbm_oom"]


def test_conditions_from_the_node_and_the_clock() -> None:
    for key in ("node_left", "hang_after_done", "killed_by_sigquit", "silent"):
        d = from_condition(key, "evidence", 0)
        assert d.key == key and d.remedy


def test_ordinary_lines_are_not_failures() -> None:
    assert diagnose_text("loading\nTrain step 1 training loss: 0.5\nDONE: steps=1\n") == []
    assert looks_like_error("Traceback (most recent call last):")
    assert not looks_like_error("all good")


def test_results_read_per_engine_loss_and_done() -> None:
    metrics = JobMetrics()
    for line in [
        "[engine 0] generate_sec=0.410 text=2",
        "[engine 1] generate_sec=0.400 text=2",
        "DONE: engines=2 wall_sec=0.450",
    ]:
        assert metrics.feed(0, line)
    assert metrics.concurrency(0).startswith("concurrent")
    serial = JobMetrics()
    for line in [
        "[engine 0] generate_sec=0.4",
        "[engine 1] generate_sec=0.4",
        "DONE: engines=2 wall_sec=0.81",
    ]:
        serial.feed(0, line)
    assert serial.concurrency(0).startswith("serial")
    grpo = JobMetrics()
    for step, loss in enumerate([0.9, 0.7, 0.4], start=1):
        grpo.feed(1, f"Train step {step} training loss: {loss}")
    assert grpo.losses[1][-1] == (3, 0.4) and "loss 0.4000" in grpo.summary()
    # remote/grpo.py's reward line, beside Tunix's loss line; read in bulk as in a live log.
    chunk = b"".join(
        f"Train step {s} reward_mean={r} kl=0.001\n".encode()
        for s, r in [(1, -2.0), (2, 0.25), (3, 1.5e-1)]
    )
    assert grpo.feed_chunk(1, chunk)
    assert grpo.rewards == {1: [(1, -2.0), (2, 0.25), (3, 0.15)]}
    assert "reward 0.15" in grpo.summary()
    assert grpo.as_json()["rewards"] == {"1": [(1, -2.0), (2, 0.25), (3, 0.15)]}
    assert sparkline([0.9, 0.7, 0.4]) == "█▅▁"


def test_diagnose_command_on_a_saved_log(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = tmp_path / "run.log"
    log.write_text(
        f"[w0] [engine 0] init device_indexes=[0]\n[w1] {SEED_LINES['incompatible_devices']}\n"
    )
    assert main(["diagnose", str(log)]) == 1
    out = capsys.readouterr().out
    assert "w1: Engines on different devices share an array" in out and "PR #795" in out
    clean = tmp_path / "ok.log"
    clean.write_text("[engine 0] generate_sec=0.1 text=2\nDONE: engines=1 wall_sec=0.12\n")
    assert main(["diagnose", str(clean)]) == 0
    assert "concurrent" in capsys.readouterr().out
    assert main(["diagnose", str(tmp_path / "missing.log")]) == 2


def test_the_anchored_bulk_scan_finds_what_the_full_scan_finds() -> None:
    """Anchors only skip lines; on a log of noise and every seed failure, nothing is missed."""
    from console.services.diagnosis import _ANCHORS, _COMBINED
    from console.services.lines import matching_lines

    noise = [f"line {i} xxxxxxxx RESOURCE usage in memory ok" for i in range(500)]
    lines = noise[:250] + list(SEED_LINES.values()) + noise[250:]
    lines.append("RESOURCE_EXHAUSTED: Out of HBM memory while allocating")  # a second hbm form
    data = ("\n".join(lines) + "\n").encode()
    full = [(m.lastgroup, line) for m, line in matching_lines(_COMBINED, data)]
    anchored = [(m.lastgroup, line) for m, line in matching_lines(_COMBINED, data, _ANCHORS)]
    assert anchored == full and len(full) == len(SEED_LINES) + 1
