"""The embedded default fleet: a TPU API emulator and loopback ssh workers."""
