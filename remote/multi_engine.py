"""The seeds' multi-engine thread test: one engine per device, all in one process.

`python -u -m remote.multi_engine [flags]`, on the VM. It carries the fixes the seeds found by
hand: a device-aware zero-penalty cache, engines built and called on their own threads, a
sequential warm-up, and an exit of its own after `DONE` (engine shutdown leaves threads alive);
and those found running sgl-jax on CPU: idle schedulers that wait instead of spinning, and a
last word when sgl-jax ends the process. Its first line names the engine that ran.
`--engine reference` runs remote/reference_engine.py instead of sgl-jax (for comparison).
When this Python has no sgl-jax and TPUCONSOLE_SGL_JAX_PYTHON names one that has (the sandbox
sets it to the checkout's .venv-engine), the runner runs itself there, in the same process.
"""

import argparse
import concurrent.futures
import contextlib
import json
import os
import queue
import signal
import sys
import threading
import time

SHUTDOWN_LIMIT_S = 10.0


def parse_args(argv):
    p = argparse.ArgumentParser(prog="remote.multi_engine", description=__doc__)
    p.add_argument("--model", default="Qwen/Qwen3-4B-Instruct-2507")
    p.add_argument("--num-engines", type=int, default=4)
    p.add_argument(
        "--device-indexes",
        default="",
        help="comma-separated device ids (default: the first N local devices)",
    )
    p.add_argument("--load-format", default="dummy", choices=["auto", "safetensors", "pt", "dummy"])
    p.add_argument("--context-length", type=int, default=2048)
    p.add_argument("--max-total-tokens", type=int, default=2048)
    p.add_argument("--max-prefill-tokens", type=int, default=2048)
    p.add_argument("--page-size", type=int, default=64)
    p.add_argument("--max-running-requests", type=int, default=4)
    p.add_argument("--mem-fraction-static", type=float, default=0.7)
    p.add_argument("--prompt", default="Please answer: 1+1=?")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--warmup-sequential", action="store_true")
    p.add_argument("--engine-per-thread", action="store_true")
    # A sandbox without the real engine's environment sets TPUCONSOLE_ENGINE=reference.
    p.add_argument(
        "--engine",
        default=os.environ.get("TPUCONSOLE_ENGINE") or "sgl-jax",
        choices=["sgl-jax", "reference"],
    )
    # Each fix can be left out, to show what it fixes (tests, benchmarks).
    p.add_argument(
        "--no-cache-patch",
        action="store_true",
        help="leave the zero-penalty cache as the engine has it (to show the bug)",
    )
    p.add_argument(
        "--no-signal-patch",
        action="store_true",
        help="let sgl-jax install its signal handlers from any thread, as it does",
    )
    p.add_argument(
        "--no-idle-patch",
        action="store_true",
        help="leave idle schedulers polling without pause, as sgl-jax 0.1.0rc0 does",
    )
    return p.parse_args(argv)


SAY_LOCK = threading.Lock()


def say(text):
    """One whole line at a time: the engines are built and run in threads of their own, and
    print() writes the text and its newline separately, so two engines' lines could merge."""
    with SAY_LOCK:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def choose_devices(jax, args):
    """The device ids to use, checked the way the seeds' runner checks them."""
    local = [d.id for d in jax.local_devices()]
    if not local:
        raise SystemExit("No local JAX devices found.")
    if args.device_indexes:
        ids = [int(x) for x in args.device_indexes.split(",") if x.strip()]
    else:
        ids = local[: args.num_engines]
    if len(ids) != args.num_engines:
        raise SystemExit("Need %d device ids, got %d: %s" % (args.num_engines, len(ids), ids))
    if len(set(ids)) != len(ids):
        raise SystemExit("Duplicate device ids: %s" % ids)
    for i in ids:
        if i not in local:
            raise SystemExit("Unknown device id %d. Known: %s" % (i, local))
    return ids


def patch_zero_penalty_cache(module):
    """Key the engine's zero-penalty cache by device as well as shape (sglang-jax PR #795).

    Returns what was done, for the log: a version that already keys by device is left alone.
    """
    original = getattr(module, "zero_penalty", None)
    if original is None or getattr(original, "_device_aware", False):
        return "zero-penalty cache: already device-aware"
    jnp = module.jnp
    cache = {}

    def zero_penalty(shape, device):
        key = (tuple(shape), device.id)
        if key not in cache:
            cache[key] = module.jax.device_put(jnp.zeros(shape, jnp.float32), device)
        return cache[key]

    zero_penalty._device_aware = True
    module.zero_penalty = zero_penalty
    return "zero-penalty cache: patched to be device-aware (keyed by shape and device)"


def engine_factory(args):
    if args.engine == "reference":
        from remote import reference_engine

        if not args.no_cache_patch:
            say(patch_zero_penalty_cache(reference_engine))

        def make(device_id):
            return reference_engine.ReferenceEngine(
                [device_id], context_length=args.context_length, seed=device_id
            )

        return make
    import jax

    from remote import sgl_jax_adapter

    try:
        engine_class = sgl_jax_adapter.load(
            jax,
            say,
            cache_patch=not args.no_cache_patch,
            signal_patch=not args.no_signal_patch,
            on_sigquit=scheduler_failed,
        )
    except ImportError as exc:
        raise SystemExit(
            "sgl-jax is not importable here (%s); install it (bootstrap) or use "
            "--engine reference" % exc
        ) from None
    except sgl_jax_adapter.Unusable as exc:
        raise SystemExit(str(exc)) from None

    devices = {d.id: d for d in jax.local_devices()}
    backend = jax.default_backend()

    def make(device_id):
        with jax.default_device(devices[device_id]):
            engine = engine_class(**sgl_jax_adapter.engine_kwargs(args, device_id, backend))
        if not args.no_idle_patch:
            say("[engine device %d] %s" % (device_id, sgl_jax_adapter.quiet_idle_scheduler(engine)))
        return engine

    return make


def engine_line(args):
    """The first line of every run: which engine, which version, and why when it matters."""
    if args.engine == "reference":
        note = os.environ.get("TPUCONSOLE_ENGINE_NOTE", "")
        return "engine: reference" + (" (%s)" % note if note else "")
    from remote.sgl_jax_adapter import installed_version

    version = installed_version()
    if version is None:
        return "engine: sgl-jax (not installed in this Python, %s)" % sys.executable
    return "engine: sgl-jax %s (Python %d.%d)" % ((version,) + tuple(sys.version_info[:2]))


def run_in_engine_python(args, argv):
    """Run this runner again, in this process, under a Python that has sgl-jax.

    TPUCONSOLE_SGL_JAX_PYTHON names it (the sandbox's .venv-engine, or a VM's env). Only when
    this Python has no sgl-jax, and only once (a loop would be a bug, not a fallback).
    """
    target = os.environ.get("TPUCONSOLE_SGL_JAX_PYTHON", "")
    if args.engine != "sgl-jax" or not target or os.environ.get("TPUCONSOLE_REEXEC"):
        return
    from remote.sgl_jax_adapter import installed_version

    if installed_version() is not None or os.path.realpath(target) == os.path.realpath(
        sys.executable
    ):
        return
    if not os.access(target, os.X_OK):
        say("engine: TPUCONSOLE_SGL_JAX_PYTHON=%s is not an executable; staying here" % target)
        return
    sys.stdout.flush()
    os.environ["TPUCONSOLE_REEXEC"] = "1"
    # The same runner code, wherever this Python found it (shipped, or an installed checkout).
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = here + (os.pathsep + path if path else "")
    os.execv(target, [target, "-u", "-m", "remote.multi_engine", *argv])


def scheduler_failed(signum, frame):
    """sgl-jax's SIGQUIT: a scheduler thread hit an exception (logged above) and asked for the
    process to end. End it, but say so first: the seeds' runs just vanished with rc 131."""
    say(
        "ERROR: sgl-jax ended the run: a scheduler failed (SIGQUIT from sgl-jax; its "
        "traceback is above). Exit status 131."
    )
    sys.stderr.flush()
    os._exit(128 + signal.SIGQUIT)


class EngineWorker:
    """One daemon thread per device: builds its engine and serves generate requests in turn."""

    def __init__(self, index, device_id, make):
        self.index = index
        self.device_id = device_id
        self.requests = queue.Queue()
        self.ready = concurrent.futures.Future()
        self.engine = None
        self.thread = threading.Thread(
            target=self._run, args=(make,), daemon=True, name="engine-worker-%d" % index
        )
        self.thread.start()

    def _run(self, make):
        try:
            self.engine = make(self.device_id)
        except BaseException as exc:  # reported to the main thread through the future
            self.ready.set_exception(exc)
            return
        self.ready.set_result(self.engine)
        while True:
            item = self.requests.get()
            if item is None:
                return
            prompt, params, future = item
            try:
                with on_device(self.device_id):
                    out = self.engine.generate(prompt=prompt, sampling_params=params)
                future.set_result(out)
            except BaseException as exc:
                future.set_exception(exc)

    def generate(self, prompt, params):
        future = concurrent.futures.Future()
        self.requests.put((prompt, params, future))
        return future.result()


def _caller(engine, device_id):
    """Legacy mode: the engine is called from the pool's threads."""

    def call(prompt, params):
        with on_device(device_id):
            return engine.generate(prompt=prompt, sampling_params=params)

    return call


def on_device(device_id):
    """`jax.default_device` of the engine's device: arrays an engine makes on the fly land there.

    (The seeds' third fix; jax's default device is per thread, so engines in threads never mix.)
    """
    import jax

    for d in jax.local_devices():
        if d.id == device_id:
            return jax.default_device(d)
    raise SystemExit(
        "Unknown device id %d. Known: %s" % (device_id, [d.id for d in jax.local_devices()])
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    run_in_engine_python(args, argv)
    say(engine_line(args))
    if args.engine == "sgl-jax":
        # The handler for sgl-jax's SIGQUIT is ours from the start, on the main thread.
        signal.signal(signal.SIGQUIT, scheduler_failed)
    import jax

    info = {
        "backend": jax.default_backend(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_device_count": jax.local_device_count(),
        "device_count": jax.device_count(),
        "local_device_ids": [d.id for d in jax.local_devices()],
    }
    say("JAX: " + json.dumps(info))
    if info["process_count"] != 1:
        say(
            "ERROR: This smoke test must run on a single host (process_count==1). "
            "Got process_count=%d" % info["process_count"]
        )
        return 2
    ids = choose_devices(jax, args)
    make = engine_factory(args)
    params = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0}
    worker_mode = args.engine_per_thread or args.concurrency > 1
    for i, device_id in enumerate(ids):
        say("[engine %d] init device_indexes=[%d]" % (i, device_id))
    if worker_mode:
        workers = [EngineWorker(i, d, make) for i, d in enumerate(ids)]
        engines = [w.ready.result() for w in workers]
        call = [w.generate for w in workers]
    else:
        engines = [make(d) for d in ids]
        call = [_caller(e, d) for e, d in zip(engines, ids, strict=True)]
    from remote.sgl_jax_adapter import mesh_device_ids

    for i, engine in enumerate(engines):
        say("[engine %d] OK mesh_device_ids=%s" % (i, mesh_device_ids(engine)))
    if args.warmup_sequential:
        say("Warmup: sequential generate")
        for i in range(len(engines)):
            call[i](args.prompt, {"max_new_tokens": 1, "temperature": 0.0})
    mode = "engine-workers" if worker_mode else "thread-pool"
    say("Running concurrent generate (%s): concurrency=%d" % (mode, args.concurrency))

    def timed(i):
        start = time.perf_counter()
        out = call[i](args.prompt, params)
        return i, time.perf_counter() - start, out["text"]

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for i, seconds, text in pool.map(timed, range(len(engines))):
            say("[engine %d] generate_sec=%.3f text=%s" % (i, seconds, json.dumps(text)))
    say("DONE: engines=%d wall_sec=%.3f" % (len(engines), time.perf_counter() - start))
    finish(engines, workers if worker_mode else [])
    return 0


def finish(engines, workers):
    """Shut the engines down within a time limit, then end the process, threads or not.

    sgl-jax's shutdown leaves scheduler threads running, so the seeds' process lingered after
    DONE and held the TPU; nothing is ever left to clean after a good run.
    """

    from remote.sgl_jax_adapter import socket_files

    def shut():
        for engine in engines:
            engine.shutdown()
            for path in socket_files(engine):  # sgl-jax leaves its sockets' files in TMPDIR
                with contextlib.suppress(OSError):
                    os.unlink(path)
        for worker in workers:
            worker.requests.put(None)

    closer = threading.Thread(target=shut, daemon=True)
    closer.start()
    closer.join(SHUTDOWN_LIMIT_S)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    from remote.process_end import run_and_exit

    run_and_exit(main)
