"""What every command shares: how it fails, asks, says what goes on without it, and runs.

`run()` is the one open/run/close skeleton: settings, every service (console/wiring.py), the
command's coroutine, everything closed. Errors are not caught here: `main()` maps each
ConsoleError to one sentence and its exit status, once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from console.models import ConsoleError
from console.services.settings import Settings, ensure_home, resolve_settings

if TYPE_CHECKING:  # the wiring pulls in the Google clients: only commands that use it pay
    from console.wiring import Wiring


def say(text: str) -> None:
    """A note on stderr, prefixed as every line of ours there is."""
    print(f"tpuconsole: {text}", file=sys.stderr, flush=True)


def fail(message: str, code: int = 2) -> int:
    say(message)
    return code


class Ongoing:
    """What goes on without us if Ctrl-C stops this command now, and how to follow it.

    Commands set it as their work starts somewhere else (an operation in the cloud, a cleanup
    on the workers, a detached job); on Ctrl-C it is the sentence said before exit 130.
    """

    sentence = ""


ONGOING = Ongoing()


def settings_for(args: argparse.Namespace) -> Settings:
    settings = resolve_settings(
        project=args.project, zones=args.zone, sandbox=args.sandbox, home=args.home
    )
    ensure_home(settings.home)
    return settings


def zone_of(args: argparse.Namespace) -> str:
    return args.zone[0] if args.zone else ""


def where(services: Wiring) -> str:
    return "in the sandbox" if services.source.is_sandbox else "in Google Cloud"


def run(
    args: argparse.Namespace,
    body: Callable[[Wiring], Awaitable[int]],
    settings: Settings | None = None,
) -> int:
    """Open every service as the flags say, run the command's body, close them all."""
    from console.wiring import Reach, open_services

    async def go() -> int:
        async with open_services(
            settings or settings_for(args),
            reach=Reach(getattr(args, "internal_ip", False), getattr(args, "iap", False)),
            fresh_history=getattr(args, "fresh_history", False),
            say=say,
        ) as services:
            return await body(services)

    return asyncio.run(go())


def confirmed(args: argparse.Namespace, question: str) -> bool:
    """Destructive commands ask on a terminal; elsewhere they need --yes, and say so."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise ConsoleError(f"{question} Not a terminal to ask on;", "add --yes to go ahead.")
    if input(f"{question} [y/N] ").strip().lower() == "y":
        return True
    print("nothing done")
    return False


def for_stream(stream, text: str) -> str:
    """A worker's text as printed: exact into a pipe or file; on a terminal, only its colours
    survive as escapes (a job may not retitle, clear or move about the user's terminal)."""
    from console.services.terminal_text import safe_for_terminal

    return safe_for_terminal(text) if stream.isatty() else text


def print_line(worker: int, text: str) -> None:
    print(f"[w{worker}] {for_stream(sys.stdout, text)}", flush=True)
