"""The sgl-jax adapter's logic, quickly, in the console's Python (3.11: no sgl-jax here).

The real engine's runs, which show every fix against sglang-jax itself, are in
test_sgl_jax_engine.py. These stand-ins carry only what the adapter touches: the zero-penalty
cache of sampling_batch_info in both its shapes (shape-keyed as before sglang-jax PR #795, or
device-keyed as in 0.1.0rc0) and the engine module's unconditional signal.signal calls.
"""

from __future__ import annotations

import signal
import threading
import types
from argparse import Namespace

import pytest

jax = pytest.importorskip("jax")
import numpy as np  # noqa: E402
from jax.sharding import SingleDeviceSharding  # noqa: E402

from remote import sgl_jax_adapter  # noqa: E402


def standin_sampling_batch_info(keyed_by_device: bool) -> types.ModuleType:
    """sampling_batch_info's cache, the old way (shape only) or the fixed way."""
    sbi = types.ModuleType("sampling_batch_info")
    sbi.np = np
    sbi._zero_linear_penalty_cache = {}
    sbi._zero_linear_penalty_lock = threading.Lock()

    def get_or_create(shape, sharding):
        key = (
            (tuple(shape), tuple(d.id for d in sharding.device_set))
            if keyed_by_device
            else tuple(shape)
        )
        with sbi._zero_linear_penalty_lock:
            if key not in sbi._zero_linear_penalty_cache:
                sbi._zero_linear_penalty_cache[key] = jax.device_put(
                    np.zeros(shape, np.float32), sharding
                )
            return sbi._zero_linear_penalty_cache[key]

    sbi._get_or_create_zero_penalty_device = get_or_create
    return sbi


def test_engine_arguments_are_the_seeds() -> None:
    args = Namespace(
        model="Qwen/Qwen3-4B-Instruct-2507",
        load_format="dummy",
        context_length=1024,
        max_total_tokens=1024,
        max_prefill_tokens=1024,
        page_size=16,
        max_running_requests=1,
        mem_fraction_static=0.7,
    )
    kwargs = sgl_jax_adapter.engine_kwargs(args, 2, "tpu")
    assert kwargs["device_indexes"] == [2] and kwargs["tp_size"] == 1
    assert kwargs["enable_single_process"] and kwargs["disable_overlap_schedule"]
    assert kwargs["disable_precompile"] and kwargs["skip_server_warmup"]
    assert (kwargs["device"], kwargs["dtype"]) == ("tpu", "bfloat16")
    # The device is JAX's backend, never a constant: "cpu" here, where sgl-jax refuses "tpu".
    assert sgl_jax_adapter.engine_kwargs(args, 2, jax.default_backend())["device"] == "cpu"
    assert kwargs["model_path"] == "Qwen/Qwen3-4B-Instruct-2507" and kwargs["page_size"] == 16


def test_a_shape_keyed_cache_is_detected_patched_and_then_works_across_devices() -> None:
    devices = jax.local_devices()
    assert len(devices) >= 2, "conftest asks for four CPU devices"
    sbi = standin_sampling_batch_info(keyed_by_device=False)
    shard = [SingleDeviceSharding(d) for d in devices[:2]]
    add = jax.jit(lambda logits, penalty: logits - penalty)
    logits_on_1 = jax.device_put(np.ones((1, 8), np.float32), shard[1])
    sbi._get_or_create_zero_penalty_device((1, 8), shard[0])
    stale = sbi._get_or_create_zero_penalty_device((1, 8), shard[1])
    with pytest.raises(ValueError, match="Received incompatible devices for jitted computation"):
        add(logits_on_1, stale)  # the seeds' bug, on CPU
    assert "patched" in sgl_jax_adapter.patch_zero_penalty_cache(sbi, jax)
    penalty = sbi._get_or_create_zero_penalty_device((1, 8), shard[1])
    assert penalty.devices() == {devices[1]}
    assert float(add(logits_on_1, penalty).sum()) == 8.0
    assert sbi._get_or_create_zero_penalty_device((1, 8), shard[1]) is penalty  # still cached


def test_a_device_keyed_cache_is_left_alone() -> None:
    sbi = standin_sampling_batch_info(keyed_by_device=True)
    original = sbi._get_or_create_zero_penalty_device
    assert "already device-aware" in sgl_jax_adapter.patch_zero_penalty_cache(sbi, jax)
    assert sbi._get_or_create_zero_penalty_device is original
    assert sbi._zero_linear_penalty_cache == {}  # the probe's own entries are removed


def test_signal_handlers_are_installed_on_the_main_thread_only() -> None:
    engine_module = types.ModuleType("engine")
    engine_module.signal = signal
    installed = []

    def set_envs_and_config():  # what sgl-jax does while building an Engine
        engine_module.signal.signal(signal.SIGUSR2, lambda *a: installed.append(a))

    errors: list[BaseException] = []

    def in_thread():
        try:
            set_envs_and_config()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert errors and "main thread" in str(errors[0])
    assert "main thread only" in sgl_jax_adapter.patch_signal_handlers(engine_module)
    errors.clear()
    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert errors == []
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        set_envs_and_config()  # on the main thread the handler is really installed
        assert signal.getsignal(signal.SIGUSR2) is not previous
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_sgl_jax_sigquit_handler_is_replaced_by_the_runners_last_word() -> None:
    engine_module = types.ModuleType("engine")
    engine_module.signal = signal
    runners = []

    def last_word(signum, frame) -> None:
        runners.append(signum)

    previous = signal.getsignal(signal.SIGQUIT)
    try:
        sgl_jax_adapter.patch_signal_handlers(engine_module, last_word)
        engine_module.signal.signal(signal.SIGQUIT, lambda *a: None)  # sgl-jax's, on main thread
        assert signal.getsignal(signal.SIGQUIT) is last_word
    finally:
        signal.signal(signal.SIGQUIT, previous)


def test_an_engine_without_a_scheduler_says_so_and_has_no_mesh() -> None:
    engine = types.SimpleNamespace(scheduler_info={})
    assert sgl_jax_adapter.mesh_device_ids(engine) == []
    assert sgl_jax_adapter.quiet_idle_scheduler(engine) == (
        "idle scheduler: none found; left as it is"
    )
