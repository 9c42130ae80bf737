"""The processes a sandbox worker runs, found and killed when its VM would be gone.

A real TPU VM that is deleted, preempted or stopped takes every process with it; a sandbox
worker is a folder on this machine, so its processes (detached jobs included) are found by the
environment the worker gave them and killed, and nothing else is touched.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path

ROUNDS = 20  # a process forking while we kill is caught by the next round


def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return {}
    return dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)


def _ours(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def _marks(env: dict[bytes, bytes], root: Path) -> bool:
    return env.get(b"TPUCONSOLE_SANDBOX") == b"1" and (
        env.get(b"HOME") == str(root).encode()
        or env.get(b"TPUCONSOLE_LOCKFILE") == str(root / "tmp" / "libtpu_lockfile").encode()
    )


def runs_on(pid: int, root: Path) -> bool:
    """Whether a process is one the worker at `root` started (remote/probe.py's `elsewhere`
    and the chips' stand-in agree with this on what is on a worker)."""
    return _marks(_environ(pid), Path(root))


def worker_processes(roots: Iterable[Path]) -> dict[int, Path]:
    """pid -> worker folder, for every live process of ours a sandbox worker started.

    A worker's processes carry the sandbox's marker and the worker's own HOME or lockfile
    (inherited by every child, `setsid`/`nohup` ones too); a process that cleared its
    environment (`env -i`) is not found, as it would not be by anyone else.
    """
    wanted = {str(root).encode(): Path(root) for root in roots}
    lockfiles = {str(Path(root) / "tmp" / "libtpu_lockfile").encode(): Path(root) for root in roots}
    if not wanted:
        return {}
    found: dict[int, Path] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me or not _ours(int(entry.name)):
            continue
        env = _environ(int(entry.name))
        if env.get(b"TPUCONSOLE_SANDBOX") != b"1":
            continue
        root = wanted.get(env.get(b"HOME", b"")) or lockfiles.get(
            env.get(b"TPUCONSOLE_LOCKFILE", b"")
        )
        if root is not None:
            found[int(entry.name)] = root
    return found


def kill_worker_processes(roots: Iterable[Path]) -> int:
    """SIGKILL every process of these workers, as a VM that vanishes does; how many died."""
    roots = list(roots)
    killed: set[int] = set()
    for _ in range(ROUNDS):
        found = worker_processes(roots)
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
    return len(killed)
