"""What the multi-engine runner needs from sgl-jax: engine arguments and three run-time fixes.

sgl-jax (import `sgl_jax`) needs Python 3.12+ and a TPU, so it is imported only when a run asks
for it. The fixes are the seeds': a zero-penalty cache keyed by shape alone (before sglang-jax
PR #795) is made device-aware, detected by behaviour rather than by version; the engine's
signal-handler installation is made harmless off the main thread; and each engine's sampler
state is put on the engine's own device, its jitted functions rebuilt, so a sampler created
while another device was the default never mixes devices in one computation.
"""

import threading
import types


def engine_kwargs(args, device_id):
    """The arguments the seeds' runner gave each Engine, one device per engine."""
    return {
        "model_path": args.model,
        "tp_size": 1,
        "device": "tpu",
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
    }


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
        for key in [k for k in sbi._zero_linear_penalty_cache if shape in (k, k[0])]:
            del sbi._zero_linear_penalty_cache[key]
    del first
    return devices[1] not in second.devices()


def patch_zero_penalty_cache(sbi, jax):
    """Make `_get_or_create_zero_penalty_device` key its cache by shape and devices.

    Returns a line for the log saying what was found and done.
    """
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
    """

    def __init__(self, real):
        self._real = real

    def signal(self, signum, handler):
        if threading.current_thread() is threading.main_thread():
            return self._real.signal(signum, handler)
        return None

    def __getattr__(self, name):
        return getattr(self._real, name)


def patch_signal_handlers(engine_module):
    real = getattr(engine_module, "signal", None)
    if real is None or isinstance(real, _SignalOnMainThreadOnly):
        return "signal handlers: nothing to patch"
    engine_module.signal = _SignalOnMainThreadOnly(real)
    return "signal handlers: installed on the main thread only"


def find_model_runner(engine, depth=6):
    """The object holding the sampler and its jitted functions, a few objects inside the engine.

    sgl-jax nests it differently across versions (engine, scheduler, worker, model runner), so
    it is found by what it has, walking only objects of sgl-jax's own package.
    """
    package = type(engine).__module__.split(".")[0]
    seen = set()
    frontier = [engine]
    for _ in range(depth):
        found_next = []
        for obj in frontier:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if hasattr(obj, "sampler") and callable(getattr(obj, "initialize_jit", None)):
                return obj
            for value in list(getattr(obj, "__dict__", {}).values()):
                kind = type(value)
                if isinstance(value, (type, types.ModuleType)):
                    continue
                if kind.__module__.split(".")[0] == package and hasattr(value, "__dict__"):
                    found_next.append(value)
        frontier = found_next
    return None


def place_sampler_state(engine, device, jax):
    """Put the sampler's state on `device` and rebuild the jitted functions that captured it.

    Returns a line for the log.
    """
    runner = find_model_runner(engine)
    if runner is None:
        return "sampler state: no model runner found in the engine; left where it is"
    from flax import nnx

    state = nnx.state(runner.sampler)
    nnx.update(runner.sampler, jax.device_put(state, device))
    runner.initialize_jit()
    return f"sampler state: on device {device.id}, jitted functions rebuilt"


def load(jax, say):
    """Import sgl-jax, apply the fixes once, and return a factory of engines by device id."""
    from sgl_jax.srt.entrypoints import engine as engine_module
    from sgl_jax.srt.sampling import sampling_batch_info as sbi

    say(patch_zero_penalty_cache(sbi, jax))
    say(patch_signal_handlers(engine_module))
    return engine_module.Engine
