"""The sgl-jax adapter against stand-ins that carry sgl-jax's names.

This is the one place a stand-in is right: sgl-jax needs Python 3.12+ and a TPU, so it cannot be
installed here. The stand-ins reproduce only what the adapter touches: the zero-penalty cache of
sampling_batch_info (shape-keyed as before sglang-jax PR #795, or device-keyed) and the engine
module's unconditional signal.signal call.
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
    kwargs = sgl_jax_adapter.engine_kwargs(args, 2)
    assert kwargs["device_indexes"] == [2] and kwargs["tp_size"] == 1
    assert kwargs["enable_single_process"] and kwargs["disable_overlap_schedule"]
    assert kwargs["disable_precompile"] and kwargs["skip_server_warmup"]
    assert (kwargs["device"], kwargs["dtype"]) == ("tpu", "bfloat16")
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


class StandinPart:
    """An object of the stand-in engine's own package (this module), as sgl-jax's are."""


def standin_engine(device):
    """engine → scheduler → worker → model runner, as sgl-jax nests them; a real nnx sampler."""
    nnx = pytest.importorskip("flax.nnx")

    class Sampler(nnx.Module):
        def __init__(self) -> None:
            # Committed to a device (sgl-jax places its sampler state with a sharding).
            self.scale = nnx.Variable(jax.device_put(np.full((8,), 2.0, np.float32), device))

    class ModelRunner:
        def __init__(self) -> None:
            self.sampler = Sampler()
            self.initialize_jit()

        def initialize_jit(self) -> None:
            _, state = nnx.split(self.sampler)
            leaves, _ = jax.tree_util.tree_flatten(state)
            jitted = jax.jit(lambda leaves, logits: logits * leaves[0])
            self.sample = lambda logits: jitted(leaves, logits)

    runner = ModelRunner()
    worker = types.SimpleNamespace()  # not of the engine's package: never walked into
    scheduler = StandinPart()
    scheduler.tp_worker = StandinPart()
    scheduler.tp_worker.model_runner = runner
    engine = StandinPart()
    engine.scheduler, engine.unrelated = scheduler, worker
    return engine, runner


def test_sampler_state_made_on_another_device_is_moved_to_the_engines_own() -> None:
    devices = jax.local_devices()
    engine, runner = standin_engine(devices[0])  # state placed on device 0, engine on 1
    logits = jax.device_put(np.ones((8,), np.float32), devices[1])
    with pytest.raises(ValueError, match="incompatible devices"):
        runner.sample(logits)
    line = sgl_jax_adapter.place_sampler_state(engine, devices[1], jax)
    assert line == "sampler state: on device 1, jitted functions rebuilt"
    assert float(runner.sample(logits).sum()) == 16.0


def test_an_engine_without_a_model_runner_is_left_alone_and_says_so() -> None:
    line = sgl_jax_adapter.place_sampler_state(StandinPart(), jax.local_devices()[1], jax)
    assert line == "sampler state: no model runner found in the engine; left where it is"
