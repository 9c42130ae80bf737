"""Multi-engine speedup: the timed part at concurrency 1 and 4, reference engines on 4 devices.

The seeds judged concurrency by wall time against the slowest engine, which holds even when the
engines take turns; the honest figure is speedup = wall(concurrency 1) / wall(concurrency 4).
Goal (issue 6): at least 0.8 x min(engines, CPU cores) here; on a v4-8 (4 chips) close to 4x.
Run on a TPU VM with `--engine sgl-jax` to see the real figure.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_file import machine_line, write_section  # noqa: E402

RUNS = 5
DONE_RE = re.compile(r"DONE: engines=(\d+) wall_sec=([0-9.]+)")


def run(engine: str, concurrency: int, extra: list[str]) -> float:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    if engine == "reference":
        env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [
            sys.executable,
            "-u",
            "-m",
            "remote.multi_engine",
            "--engine",
            engine,
            "--num-engines",
            "4",
            "--concurrency",
            str(concurrency),
            "--warmup-sequential",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    match = DONE_RE.search(out.stdout)
    assert match, out.stdout + out.stderr
    return float(match.group(2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", default="reference", choices=["reference", "sgl-jax"])
    args = parser.parse_args()
    extra = ["--context-length", "256", "--max-new-tokens", "32"]
    serial, parallel = [], []
    for _ in range(RUNS):  # interleaved in the same run
        serial.append(run(args.engine, 1, extra))
        parallel.append(run(args.engine, 4, extra))
    s, p = statistics.median(serial), statistics.median(parallel)
    speedup = s / p
    cores = os.cpu_count() or 1
    goal = 0.8 * min(4, cores)
    print(
        f"concurrency 1: {s:.3f} s, concurrency 4: {p:.3f} s, speedup {speedup:.2f} "
        f"(goal >= {goal:.2f})"
    )
    write_section(
        "multi_engine",
        "\n".join(
            [
                "## multi_engine (issue 6)",
                "",
                f"`python bench/multi_engine.py` — {machine_line()}. `remote.multi_engine --engine "
                f"{args.engine}`, 4 engines on 4 virtual CPU devices, 32 new tokens each after a "
                "sequential warm-up; wall time of the timed part (the DONE line), median of "
                f"{RUNS} runs each, interleaved.",
                "",
                "| concurrency | wall (median) | runs |",
                "|---|---|---|",
                f"| 1 | {s * 1000:.0f} ms | {', '.join(f'{x * 1000:.0f}' for x in serial)} |",
                f"| 4 | {p * 1000:.0f} ms | {', '.join(f'{x * 1000:.0f}' for x in parallel)} |",
                "",
                f"Speedup {speedup:.2f}; goal ≥ 0.8 × min(engines, cores) = {goal:.2f} "
                + ("✅" if speedup >= goal else "❌")
                + ".",
            ]
        ),
    )


if __name__ == "__main__":
    main()
