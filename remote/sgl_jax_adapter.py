"""What the multi-engine runner needs from sgl-jax: engine arguments, where things live, fixes.

sgl-jax (distribution `sglang-jax`, import `sgl_jax`) needs Python 3.12+, so it is imported only
when a run asks for it; it runs on a TPU or on JAX's CPU backend. The fixes are the seeds' and
this machine's: a zero-penalty cache keyed by shape alone (before sglang-jax PR #795) is made
device-aware, detected by behaviour rather than by version; the engine's signal handlers are
installed on the main thread only, and its SIGQUIT ("a scheduler failed") ends the process with
a last word instead of silently; an idle scheduler waits on its sockets instead of spinning.
"""

import dataclasses
import threading

DISTRIBUTION = "sglang-jax"
# Engine arguments the runner cannot do without; sglang-jax 0.0.2 (PyPI) has no device_indexes.
NEEDED_SERVER_ARGS = ("device_indexes", "enable_single_process")
IDLE_WAIT_MS = 1000  # as sglang's IdleSleeper: woken at once by a request, else once a second


class Unusable(Exception):
    """This sgl-jax cannot run the test; the message says why and what to do."""


def installed_version():
    """The installed sglang-jax's version, read without importing it; None when absent."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def engine_kwargs(args, device_id, backend):
    """The arguments the seeds' runner gave each Engine, one device per engine.

    `device` is JAX's backend: sgl-jax asserts it matches JAX_PLATFORMS (`device tpu is not
    consistent with 'JAX_PLATFORMS' cpu`), and on "cpu" it picks its native attention itself.
    `sleep_on_idle` asks for idle sleeping where sgl-jax implements it (0.1.0rc0 does not read
    it; quiet_idle_scheduler does the same from outside).
    """
    return {
        "model_path": args.model,
        "tp_size": 1,
        "device": backend,
        "device_indexes": [device_id],
        "enable_single_process": True,
        "disable_overlap_schedule": True,
        "disable_precompile": True,
        "dtype": "bfloat16",
        "skip_server_warmup": True,
        "trust_remote_code": True,
        "load_format": args.load_format,
        "context_length": args.context_length,
        "max_total_tokens": args.max_total_tokens,
        "max_prefill_tokens": args.max_prefill_tokens,
        "page_size": args.page_size,
        "max_running_requests": args.max_running_requests,
        "mem_fraction_static": args.mem_fraction_static,
        "sleep_on_idle": True,
    }


def check_usable(server_args_class, version):
    """Refuse, with the reason, an sgl-jax whose Engine lacks what one-engine-per-device needs."""
    names = {f.name for f in dataclasses.fields(server_args_class)}
    missing = [n for n in NEEDED_SERVER_ARGS if n not in names]
    if missing:
        raise Unusable(
            f"sgl-jax {version} cannot run the multi-engine test: its Engine has no "
            f"{' or '.join(missing)} (PyPI's 0.0.x releases are too old; use sglang-jax "
            "0.1.0rc0 or later, e.g. bootstrap from git), or use --engine reference"
        )


def _device_key(sharding):
    try:
        return tuple(sorted(d.id for d in sharding.device_set))
    except AttributeError:
        return ("sharding", id(sharding))


def zero_penalty_cache_is_shape_keyed(sbi, jax):
    """Ask the cache for one shape on two devices: a shape-keyed cache answers with one array.

    Needs two local devices; with one, the bug cannot happen and nothing is patched.
    """
    devices = jax.local_devices()
    if len(devices) < 2:
        return False
    from jax.sharding import SingleDeviceSharding

    shape = (1, 7919)  # a shape no real batch uses, removed again below
    first = sbi._get_or_create_zero_penalty_device(shape, SingleDeviceSharding(devices[0]))
    second = sbi._get_or_create_zero_penalty_device(shape, SingleDeviceSharding(devices[1]))
    with sbi._zero_linear_penalty_lock:
        # Keys are the shape (before PR #795) or start with it (shape, sharding).
        for key in [k for k in sbi._zero_linear_penalty_cache if shape in (tuple(k[:2]), k[0])]:
            del sbi._zero_linear_penalty_cache[key]
    del first
    return devices[1] not in second.devices()


def patch_zero_penalty_cache(sbi, jax):
    """Make `_get_or_create_zero_penalty_device` key its cache by shape and devices.

    Returns a line for the log saying what was found and done.
    """
    if not hasattr(sbi, "_get_or_create_zero_penalty_device"):
        return "zero-penalty cache: none in this version; nothing to patch"
    if not zero_penalty_cache_is_shape_keyed(sbi, jax):
        return "zero-penalty cache: already device-aware (sglang-jax PR #795 or later)"
    cache = {}
    lock = threading.Lock()

    def get_or_create(shape, sharding):
        key = (tuple(int(n) for n in shape), _device_key(sharding))
        with lock:
            found = cache.get(key)
            if found is None:
                found = jax.device_put(sbi.np.zeros(key[0], dtype=sbi.np.float32), sharding)
                cache[key] = found
            return found

    sbi._get_or_create_zero_penalty_device = get_or_create
    return "zero-penalty cache: was keyed by shape alone; patched to key by device too"


class _SignalOnMainThreadOnly:
    """Stands in for the `signal` module inside sgl-jax's engine module.

    Python allows signal.signal only on the main thread; an engine built in a worker thread
    would raise, so there the handler installation is skipped (the main thread keeps its own).
    SIGQUIT is sgl-jax's "a scheduler failed, end the process" (it SIGKILLs itself, or, with no
    handler, dies of SIGQUIT with rc 131, either way without a word): the runner's own handler
    for it, given here, is installed in its place.
    """

    def __init__(self, real, on_sigquit):
        self._real = real
        self._on_sigquit = on_sigquit

    def signal(self, signum, handler):
        if threading.current_thread() is not threading.main_thread():
            return None
        if signum == self._real.SIGQUIT and self._on_sigquit is not None:
            handler = self._on_sigquit
        return self._real.signal(signum, handler)

    def __getattr__(self, name):
        return getattr(self._real, name)


def patch_signal_handlers(engine_module, on_sigquit=None):
    real = getattr(engine_module, "signal", None)
    if real is None or isinstance(real, _SignalOnMainThreadOnly):
        return "signal handlers: nothing to patch"
    engine_module.signal = _SignalOnMainThreadOnly(real, on_sigquit)
    return "signal handlers: installed on the main thread only"


def scheduler(engine):
    """The engine's scheduler: in single-process mode sgl-jax hands it back in scheduler_info."""
    info = getattr(engine, "scheduler_info", None)
    return info.get("scheduler") if isinstance(info, dict) else None


def model_runner(engine):
    """The engine's model runner (mesh, sampler, jitted functions), where 0.1.0rc0 keeps it."""
    worker = getattr(scheduler(engine), "tp_worker", None)
    return getattr(worker, "model_runner", None)


def mesh_device_ids(engine):
    """The device ids of the engine's mesh: what the engine really runs on."""
    own = getattr(engine, "mesh_device_ids", None)  # the reference engine says it itself
    if own is not None:
        return list(own)
    mesh = getattr(model_runner(engine), "mesh", None)
    if mesh is None:
        return []
    return sorted(int(d.id) for d in mesh.devices.flat)


def socket_files(engine):
    """The files behind the engine's ZeroMQ ipc:// sockets, which sgl-jax never removes."""
    port_args = getattr(engine, "port_args", None)
    names = [getattr(port_args, f, "") for f in dir(port_args) if f.endswith("_ipc_name")]
    return [n[len("ipc://") :] for n in names if isinstance(n, str) and n.startswith("ipc://")]


def quiet_idle_scheduler(engine):
    """Make an idle scheduler wait for its next request instead of polling without pause.

    sgl-jax 0.1.0rc0's event loop calls recv_requests (non-blocking) and on_idle in a tight
    loop, so each idle engine keeps a core busy: four engines on two cores slowed a run 1.5 to
    5 times. As sglang's `sleep_on_idle` does, on_idle now polls the request sockets for up to
    a second when nothing is running or waiting; a request wakes it at once. Returns a line.
    """
    sched = scheduler(engine)
    if sched is None:
        return "idle scheduler: none found; left as it is"
    if getattr(sched, "idle_sleeper", None) is not None:
        return "idle scheduler: sgl-jax sleeps on idle itself"
    names = ("recv_from_tokenizer", "recv_from_rpc")
    sockets = [s for s in (getattr(sched, n, None) for n in names) if s is not None]
    if not sockets or not callable(getattr(sched, "is_fully_idle", None)):
        return "idle scheduler: no request sockets found; left as it is"
    import zmq

    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    original = sched.on_idle

    def on_idle():
        original()
        if sched.is_fully_idle():
            poller.poll(IDLE_WAIT_MS)

    sched.on_idle = on_idle
    return "idle scheduler: waits for requests instead of spinning"


def load(jax, say, cache_patch=True, signal_patch=True, on_sigquit=None):
    """Import sgl-jax, check it can do this, apply the fixes once, return its Engine class.

    Raises ImportError when sgl-jax is absent and Unusable when it is too old.
    """
    version = installed_version()
    if version is None:
        raise ImportError(f"no {DISTRIBUTION} distribution in this Python")
    from sgl_jax.srt.server_args import ServerArgs

    check_usable(ServerArgs, version)
    from sgl_jax.srt.entrypoints import engine as engine_module
    from sgl_jax.srt.sampling import sampling_batch_info as sbi

    if cache_patch:
        say(patch_zero_penalty_cache(sbi, jax))
    else:
        say("zero-penalty cache: left as sgl-jax has it (--no-cache-patch)")
    if signal_patch:
        say(patch_signal_handlers(engine_module, on_sigquit))
    else:
        say("signal handlers: left as sgl-jax has them (--no-signal-patch)")
    return engine_module.Engine
