"""`sandbox reset | serve | preempt`: the embedded fleet, served here or stored on disk."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from datetime import datetime
from pathlib import Path

from console.cli.common import fail, settings_for
from console.services.settings import Settings


def cmd_sandbox(args: argparse.Namespace) -> int:
    from console.sandbox.runtime import SandboxBusy, reset_sandbox
    from console.sandbox.serving import stop_background, users

    settings = settings_for(args)
    if args.sandbox_command == "reset":
        try:
            if not users(settings.home):  # a background server nobody uses gives way
                stop_background(settings.home)
            reset_sandbox(settings.home)
        except SandboxBusy as busy:
            return fail(f"{busy}. Stop that process first (Ctrl-C in its terminal).")
        print(f"sandbox reset: default fleet restored under {settings.home / 'sandbox'}")
        return 0
    if args.sandbox_command == "preempt":
        return _preempt(settings, args.node)
    if args.background:
        return _serve_in_background(settings.home)
    return _serve(settings.home)


def _serve(home: Path) -> int:
    """The foreground server: a background one that serves now gives way (its users follow)."""
    from console.sandbox.runtime import Sandbox, SandboxBusy

    try:
        sandbox = Sandbox.start(home)
    except SandboxBusy as busy:
        return fail(f"{busy}; use it as it is, or stop it first.")
    try:
        if sandbox.replaced is not None:
            print(f"took over from the background server (pid {sandbox.replaced.pid})")
        print(f"TPU API (gRPC, insecure): {sandbox.api_address}")
        print(f"project: {sandbox.project}")
        print(f"ssh key: {sandbox.user_key_path}")
        print(f"ssh port: {sandbox.ssh_port} (every worker, each on its own loopback address)")
        print("a node lets you in once your key is in its ssh-keys metadata (tpuconsole adds it)")
        for node in sorted(sandbox.fleet.nodes.values(), key=lambda n: n.key):
            for w in range(node.hosts):
                place = sandbox.worker_address(node.zone, node.name, w)
                where = (
                    f"ssh -i {sandbox.user_key_path} -p {place[1]} {place[0]}"
                    if place
                    else f"(no ssh: {node.state})"
                )
                print(f"  {node.zone}/{node.name} w{w}: {where}")
        print("serving; Ctrl-C to stop", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    finally:
        sandbox.stop()
    return 0


def _serve_in_background(home: Path) -> int:
    """What a command starts when nobody serves the sandbox: it serves until unused."""
    from console.sandbox.runtime import Sandbox, SandboxBusy
    from console.sandbox.serving import serve_until_unused

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        sandbox = Sandbox.start(home, background=True)
    except SandboxBusy as busy:
        print(f"{datetime.now():%H:%M:%S} {busy}: nothing to do", flush=True)
        return 0
    try:
        print(f"{datetime.now():%H:%M:%S} serving {home} (pid {sandbox.endpoint.pid})", flush=True)
        why = serve_until_unused(sandbox, stop)
        print(f"{datetime.now():%H:%M:%S} stopping: {why}", flush=True)
    finally:
        sandbox.stop()
    return 0


def _preempt(settings: Settings, name: str) -> int:
    """Edit the stored sandbox state; a serving process would overwrite it, so refuse then
    (a background server gives way: its users follow to the next one)."""
    from console.sandbox.fleet_state import FailedPrecondition, NotFound
    from console.sandbox.runtime import Sandbox, SandboxBusy

    try:
        with Sandbox.start(settings.home, ssh=False, publish=False) as sandbox:
            matches = [n for n in sandbox.fleet.nodes.values() if n.name == name]
            if not matches:
                return fail(f"no sandbox node named {name!r}; `tpuconsole ls` lists them.")
            sandbox.fleet.preempt(matches[0].zone, name)
    except SandboxBusy as busy:
        return fail(f"{busy}; preempt from that process, or stop it first.")
    except (FailedPrecondition, NotFound) as exc:
        return fail(str(exc))
    print(f"{name}: PREEMPTED")
    return 0
