"""A stand-in TPU program for tests: JAX opens the worker's chips, then it computes for ever.

In the sandbox, JAX's backend start opens the stand-in chip devices (the sandbox's libtpu
stand-in, as libtpu opens a VM's), so this holds them as a TPU program does; `TPU_VISIBLE_CHIPS`
limits it to some. Prints `holding` once it does, then multiplies matrices until stopped.
"""

import jax
import jax.numpy as jnp

jax.devices()
print("holding", flush=True)
x = jnp.ones((192, 192))
while True:
    x = (x @ x) / 192.0
    x.block_until_ready()
