"""Code shipped to TPU VM workers and run there; standard library or jax only, no console code."""
