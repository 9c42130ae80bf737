"""Wrappers of outside systems (the TPU API, ssh, SQLite) that speak our models."""
