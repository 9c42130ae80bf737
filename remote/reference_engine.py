"""A small JAX decoder with the slice of sgl-jax's Engine interface the runners use.

It is the reference engine, not sgl-jax: random weights from a seed, a byte-level tokenizer,
nothing downloaded. Like sgl-jax before PR #795 it keeps a module-global zero-penalty cache keyed
by shape alone, so two engines on different devices reproduce the seeds' bug unless the runner
patches the cache (see remote/multi_engine.py); its parameters and sampler state live on the
engine's own device, and its forward and sampler are jitted.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

VOCAB = 258  # 256 bytes, BOS, EOS
BOS, EOS = 256, 257

# sgl-jax's old shape of this cache: one zero array per shape, whichever device made it first.
_zero_penalty_cache = {}


def zero_penalty(shape, device):
    """The penalty array the sampler adds to the logits (zeros: no penalty)."""
    key = tuple(shape)
    if key not in _zero_penalty_cache:
        _zero_penalty_cache[key] = jax.device_put(jnp.zeros(shape, jnp.float32), device)
    return _zero_penalty_cache[key]


def encode(text):
    return [BOS, *text.encode("utf-8")]


def decode(ids):
    return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


def init_params(seed, d_model, n_layers, max_len):
    rng = np.random.default_rng(seed)

    def dense(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    layers = [
        {
            "qkv": dense(d_model, 3 * d_model),
            "out": dense(d_model, d_model),
            "up": dense(d_model, 4 * d_model),
            "down": dense(4 * d_model, d_model),
        }
        for _ in range(n_layers)
    ]
    return {
        "embed": dense(VOCAB, d_model),
        "pos": dense(max_len, d_model),
        "layers": layers,
        "head": dense(d_model, VOCAB),
    }


def _norm(x):
    return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def forward(params, tokens, length, n_heads):
    """Logits for the token after position `length - 1` of the (padded) sequence."""
    seq = tokens.shape[0]
    x = params["embed"][tokens] + params["pos"][:seq]
    mask = jnp.tril(jnp.ones((seq, seq), bool)) & (jnp.arange(seq)[None, :] < length)
    d_model = x.shape[-1]
    head = d_model // n_heads
    for layer in params["layers"]:
        q, k, v = jnp.split(_norm(x) @ layer["qkv"], 3, axis=-1)
        q = q.reshape(seq, n_heads, head)
        k = k.reshape(seq, n_heads, head)
        v = v.reshape(seq, n_heads, head)
        scores = jnp.einsum("qhd,khd->hqk", q, k) / jnp.sqrt(head)
        scores = jnp.where(mask[None], scores, -1e9)
        attn = jnp.einsum("hqk,khd->qhd", jax.nn.softmax(scores, axis=-1), v)
        x = x + attn.reshape(seq, d_model) @ layer["out"]
        x = x + jax.nn.gelu(_norm(x) @ layer["up"]) @ layer["down"]
    return (_norm(x) @ params["head"])[length - 1]


def sample(logits, penalty, key, temperature):
    logits = logits - penalty
    greedy = jnp.argmax(logits)
    drawn = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
    return jnp.where(temperature <= 0, greedy, drawn)


def decode_step(params, tokens, length, key, penalty, temperature, n_heads):
    """One token: forward, sample, write it into the sequence. One dispatch, as a real engine's
    step is, so engines on different devices spend their time in XLA, not in Python."""
    logits = forward(params, tokens, length, n_heads)
    key, step_key = jax.random.split(key)
    token = sample(logits, penalty, step_key, temperature)
    return token, tokens.at[length].set(token), key


class ReferenceEngine:
    """`generate(prompt=…, sampling_params=…) -> {text, output_ids, meta_info}`, `shutdown()`."""

    def __init__(
        self,
        device_indexes,
        context_length=128,
        seed=0,
        d_model=64,
        n_layers=2,
        n_heads=4,
        **_ignored,
    ):
        devices = {d.id: d for d in jax.local_devices()}
        self.device = devices[device_indexes[0]]
        self.context_length = context_length
        self.n_heads = n_heads
        self.params = jax.device_put(
            init_params(seed, d_model, n_layers, context_length), self.device
        )
        self._step = jax.jit(decode_step, static_argnums=(6,))
        self._key = jax.device_put(jax.random.PRNGKey(seed), self.device)
        self.mesh_device_ids = [self.device.id]

    def generate(self, prompt, sampling_params=None):
        params = dict(sampling_params or {})
        max_new = int(params.get("max_new_tokens", 16))
        temperature = float(params.get("temperature", 0.0))
        start = time.perf_counter()
        ids = encode(prompt)[: self.context_length - 1]
        out = []
        buffer = np.zeros(self.context_length, np.int32)
        buffer[: len(ids)] = ids
        with jax.default_device(self.device):
            tokens = jax.device_put(buffer, self.device)
            temp = jax.device_put(jnp.float32(temperature), self.device)
            penalty = zero_penalty((VOCAB,), self.device)
            for _ in range(max_new):
                length = len(ids) + len(out)
                if length >= self.context_length:
                    break
                step, tokens, self._key = self._step(
                    self.params, tokens, length, self._key, penalty, temp, self.n_heads
                )
                token = int(step)
                if token == EOS:
                    break
                out.append(token)
        return {
            "text": decode(out),
            "output_ids": out,
            "meta_info": {"device": self.device.id, "e2e_latency": time.perf_counter() - start},
        }

    def shutdown(self):
        self.params = None
