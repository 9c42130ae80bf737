"""Who serves a sandbox home, which processes use it, and the background server they share.

A command that needs the sandbox and finds nobody serving it starts a background server
(`tpuconsole sandbox serve --background`) and joins it like any other process, rather than
serving it itself: a command that served would take the sandbox away from every other command
using it the moment it ended (the cut `stop` that left its job running). The background server
stops once no process has used the sandbox for IDLE_S, gives way to `tpuconsole sandbox serve`,
and is started again, from the saved state, by whichever process next needs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from console.sandbox.runtime import (
    Sandbox,
    SandboxEndpoint,
    home_claimed,
    read_served_endpoint,
    sandbox_dir,
    wait_served_endpoint,
)

IDLE_S = 5.0  # a background server this long without a process using it stops
START_TIMEOUT_S = 90.0  # a loaded machine can take this long to start Python and the servers
_children: list[subprocess.Popen] = []  # background servers this process started (reaped)


@dataclass(frozen=True)
class SandboxUser:
    """A process that uses the sandbox, as the register names it."""

    pid: int
    what: str  # its command line


def clients_dir(home: Path) -> Path:
    return sandbox_dir(home) / "clients"


def this_process() -> str:
    """How this process is named to the others: its command line, as `ps` shows it."""
    words = [Path(sys.argv[0]).name or "python", *sys.argv[1:]]
    if words[0] in {"cli.py", "__main__.py", "-m"}:
        words[0] = "tpuconsole"
    text = " ".join(words)
    return text if len(text) <= 80 else text[:77] + "..."


class SandboxClient:
    """This process's entry in the home's register of the processes that use the sandbox.

    A file in `sandbox/clients/` on which the process holds a shared flock while it lives: the
    kernel drops the lock however the process ends, so a stale entry is told from a live one by
    trying the lock, with no pid that could have been reused.
    """

    def __init__(self, home: Path, what: str) -> None:
        folder = clients_dir(home)
        folder.mkdir(parents=True, exist_ok=True)
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        tmp = folder / f".{token}.tmp"
        fh = open(tmp, "w")  # noqa: SIM115 - held for the life of the entry
        fcntl.flock(fh, fcntl.LOCK_SH)
        fh.write(json.dumps({"pid": os.getpid(), "what": what}))
        fh.flush()
        self.path = folder / f"{token}.json"
        self.pid = os.getpid()
        os.replace(tmp, self.path)  # it appears locked already: never mistaken for stale
        self._fh: object | None = fh

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._fh.close()  # type: ignore[attr-defined]
            self._fh = None

    def __enter__(self) -> SandboxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def users(home: Path, *, besides: int | None = None) -> list[SandboxUser]:
    """The processes using the sandbox now (not `besides`); entries of dead ones are removed."""
    found = []
    folder = clients_dir(home)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            fh = open(path)  # noqa: SIM115
        except FileNotFoundError:
            continue
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its process holds it: alive
                try:
                    data = json.loads(fh.read())
                except ValueError:
                    continue
                if data.get("pid") != besides:
                    found.append(SandboxUser(int(data.get("pid", 0)), str(data.get("what", ""))))
                continue
            with contextlib.suppress(FileNotFoundError):  # nobody holds it: its process is gone
                path.unlink()
    return found


@contextlib.contextmanager
def _starting(home: Path, timeout_s: float) -> Iterator[None]:
    """One process at a time starts (or replaces) the background server."""
    sandbox_dir(home).mkdir(parents=True, exist_ok=True)
    with open(sandbox_dir(home) / "start.lock", "a+") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"another process has been starting the sandbox in {home} for "
                        f"{timeout_s:.0f} s; see {sandbox_dir(home) / 'serve.log'}."
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_served(home: Path, timeout_s: float = START_TIMEOUT_S) -> SandboxEndpoint:
    """The sandbox's endpoint; when nobody serves it, a background server started for it.

    Any number of processes may ask at once: one starts the server, the others wait for it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        left = max(1.0, deadline - time.monotonic())
        endpoint = wait_served_endpoint(home, left)
        if endpoint is not None:
            return endpoint
        with _starting(home, left):
            endpoint = wait_served_endpoint(home, left) or _start_background(home, left)
        if endpoint is not None:
            return endpoint
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no process would serve the sandbox in {home}.")


def _start_background(home: Path, timeout_s: float) -> SandboxEndpoint | None:
    """Start `tpuconsole sandbox serve --background` detached; its endpoint once published."""
    for child in list(_children):  # reap the ones that ended, so none lingers a zombie
        if child.poll() is not None:
            _children.remove(child)
    log = sandbox_dir(home) / "serve.log"
    with open(log, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "console.cli", "--home", str(home), "sandbox", "serve"]
            + ["--background"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not ours to take down: a Ctrl-C here must not reach it
            close_fds=True,
            cwd=str(home),
        )
    _children.append(child)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        endpoint = read_served_endpoint(home)
        if endpoint is not None:
            return endpoint
        if child.poll() is not None:  # it found a server (or a claimant) first, or failed
            if home_claimed(home):
                return None  # someone else has it: the caller looks again
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"the sandbox's background server would not start: {tail[0]}")
        time.sleep(0.05)
    raise RuntimeError(f"the sandbox's background server did not start in {timeout_s:.0f} s.")


def _is_background_server(pid: int) -> bool:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in words and b"--background" in words


def stop_background(home: Path, timeout_s: float = 30.0) -> SandboxEndpoint | None:
    """Ask the background server, if one serves the home, to stop; its endpoint once it has.

    Its users find the sandbox gone and join whoever serves next (they start one if nobody
    does). A server a person started (the TUI, `sandbox serve`) is never asked.
    """
    endpoint = read_served_endpoint(home)
    if endpoint is None or not endpoint.background or not _is_background_server(endpoint.pid):
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(endpoint.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while home_claimed(home):
        if time.monotonic() >= deadline:
            raise RuntimeError(f"the sandbox's background server (pid {endpoint.pid}) won't stop.")
        time.sleep(0.05)
    return endpoint


@contextlib.contextmanager
def replacing_background(
    home: Path, timeout_s: float = START_TIMEOUT_S
) -> Iterator[SandboxEndpoint | None]:
    """While held, nobody starts a background server; one that served has stopped.

    Yields the endpoint of the one that stopped, or None.
    """
    with _starting(home, timeout_s):
        yield stop_background(home)


def serve_until_unused(sandbox: Sandbox, stop: threading.Event, idle_s: float = IDLE_S) -> str:
    """Serve until no process has used the sandbox for `idle_s`, its home is gone, or `stop`;
    says which.

    Before stopping for want of users it unpublishes and looks once more: a process that
    registered just before, and read the endpoint, is seen then (it registers before it reads)
    and keeps it serving; one that comes after finds nothing published and waits for the next.
    """
    home = sandbox.home
    idle_since: float | None = None
    while not stop.wait(0.2):
        if not (sandbox_dir(home) / "serve.lock").exists():
            return "its home is gone"
        if users(home):
            idle_since = None
            continue
        idle_since = idle_since or time.monotonic()
        if time.monotonic() - idle_since < idle_s:
            continue
        sandbox.unpublish()
        if not users(home):
            return f"no process used it for {idle_s:.0f} s"
        sandbox.republish()
        idle_since = None
    return "asked to stop"
