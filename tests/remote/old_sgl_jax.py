"""Reproduction aids run under the engine environment's Python, each in a process of its own.

`python tests/remote/old_sgl_jax.py shape-keyed-cache [runner flags]` runs remote.multi_engine
on sglang-jax 0.1.0rc0 with its zero-penalty cache keyed by shape alone again, as it was before
sglang-jax PR #795 (the function below is that version's, in our words), so the seeds' bug can
be shown on the real engine. `... sampler-state` builds one real engine for device 1 in a
thread with no default device and says where its sampler state is and whether it generates.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for remote/


def restore_shape_keyed_cache() -> None:
    """`_get_or_create_zero_penalty_device` as before PR #795: one array per shape, whichever
    engine's device made it first."""
    import numpy as np
    from sgl_jax.srt.sampling import sampling_batch_info as sbi
    from sgl_jax.srt.utils.jax_utils import device_array

    def get_or_create(shape, sharding):
        key = (int(shape[0]), int(shape[1]))
        with sbi._zero_linear_penalty_lock:
            cached = sbi._zero_linear_penalty_cache.get(key)
        if cached is not None:
            return cached
        made = device_array(np.zeros(key, dtype=np.float32), sharding=sharding)
        with sbi._zero_linear_penalty_lock:
            return sbi._zero_linear_penalty_cache.setdefault(key, made)

    sbi._get_or_create_zero_penalty_device = get_or_create
    print("reproduction aid: zero-penalty cache keyed by shape alone (as before PR #795)")


def sampler_state(model: str) -> int:
    import jax
    from flax import nnx
    from sgl_jax.srt.entrypoints import engine as engine_module

    from remote import sgl_jax_adapter
    from remote.multi_engine import parse_args

    sgl_jax_adapter.patch_signal_handlers(engine_module)
    args = parse_args(
        ["--model", model, "--context-length", "128", "--max-total-tokens", "128",
         "--max-prefill-tokens", "128", "--page-size", "8", "--max-running-requests", "1"]
    )  # fmt: skip
    result: dict[str, object] = {}

    def build() -> None:  # no jax.default_device: the state is made on device 0
        engine = engine_module.Engine(
            **sgl_jax_adapter.engine_kwargs(args, 1, jax.default_backend())
        )
        runner = sgl_jax_adapter.model_runner(engine)
        leaves = jax.tree_util.tree_leaves(nnx.state(runner.sampler))
        result["devices"] = sorted({d.id for leaf in leaves for d in leaf.devices()})
        result["committed"] = any(getattr(leaf, "committed", False) for leaf in leaves)
        result["mesh"] = sgl_jax_adapter.mesh_device_ids(engine)
        out = engine.generate(prompt="1+1=?", sampling_params={"max_new_tokens": 1})
        result["generated"] = out["meta_info"]["completion_tokens"]

    thread = threading.Thread(target=build)
    thread.start()
    thread.join()
    print("sampler state: devices={devices} committed={committed}".format(**result))
    print("engine: mesh_device_ids={mesh} generated={generated}".format(**result))
    return 0


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "shape-keyed-cache":
        restore_shape_keyed_cache()
        from remote.multi_engine import main as runner_main

        return runner_main(sys.argv[2:])
    if what == "sampler-state":
        return sampler_state(sys.argv[2])
    sys.exit("usage: old_sgl_jax.py shape-keyed-cache [runner flags] | sampler-state MODEL")


if __name__ == "__main__":
    from remote.process_end import run_and_exit

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_and_exit(main)
