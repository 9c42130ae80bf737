"""Timed rounds on four real sgl-jax engines in one process; run by bench/multi_engine.py.

Run with .venv-engine's Python. Builds the engines as remote/multi_engine.py does (its own
factory and engine workers, with or without the idle-scheduler fix), warms them up one by one,
then alternates the timed part at concurrency 1 and 4 so both see the same machine, and last
measures what four idle engines cost in CPU. Prints one JSON object.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from remote import multi_engine  # noqa: E402

IDLE_WINDOW_S = 5.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    rounds = int(sys.argv[1])
    args = multi_engine.parse_args(sys.argv[2:])
    started = time.perf_counter()
    make = multi_engine.engine_factory(args)
    workers = [multi_engine.EngineWorker(i, d, make) for i, d in enumerate(range(4))]
    for w in workers:
        w.ready.result()
    built = time.perf_counter()
    for w in workers:
        w.generate(args.prompt, {"max_new_tokens": 1, "temperature": 0.0})
    warmed = time.perf_counter()
    params = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0, "ignore_eos": True}

    def timed(concurrency: int) -> float:
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(lambda w: w.generate(args.prompt, params), workers))
        return time.perf_counter() - start

    timed(4)  # the first decode compiles; not a measurement
    walls: dict[str, list[float]] = {"1": [], "4": []}
    for _ in range(rounds):
        walls["1"].append(timed(1))
        walls["4"].append(timed(4))
    before = cpu_seconds()
    time.sleep(IDLE_WINDOW_S)
    idle_cores = (cpu_seconds() - before) / IDLE_WINDOW_S
    print(
        json.dumps(
            {
                "build_s": built - started,
                "warmup_s": warmed - built,
                "walls": walls,
                "idle_cores": idle_cores,
            }
        ),
        flush=True,
    )
    os._exit(0)  # sgl-jax's scheduler threads would keep the process alive


if __name__ == "__main__":
    main()
