"""`tpuconsole`: the TUI by default, plus headless subcommands for scripts and quick looks.

Exit codes: 0 all well, 1 the command ran but something failed (an unreachable zone), 2 it
could not run (bad flags, bad configuration, no credentials, refused by the API or by us before
asking it), 3 the cloud had no room (a stockout, a quota or a rate limit: RESOURCE_EXHAUSTED;
retry later, elsewhere or on-demand).

One module per concern (fleet, workers, jobs, diagnose, sandbox, tui); `COMMANDS` says which
function runs each command, imported only when it runs (a `diagnose` never loads the Google
clients). `main()` is the one place a ConsoleError becomes a sentence and an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence

from console.cli.common import ONGOING, fail
from console.cli.parser import build_parser
from console.models import ConsoleError
from console.present.errors import error_sentence

# command -> (module under console.cli, function): each takes the parsed flags, returns the exit.
COMMANDS: dict[str, tuple[str, str]] = {
    "ls": ("fleet", "cmd_ls"),
    "create": ("fleet", "cmd_create"),
    "stop": ("fleet", "cmd_change"),
    "start": ("fleet", "cmd_change"),
    "delete": ("fleet", "cmd_change"),
    "exec": ("workers", "cmd_exec"),
    "sync": ("workers", "cmd_sync"),
    "probe": ("workers", "cmd_probe"),
    "clean": ("workers", "cmd_clean"),
    "launch": ("jobs", "cmd_launch"),
    "logs": ("jobs", "cmd_logs"),
    "jobs": ("jobs", "cmd_jobs"),
    "diagnose": ("diagnose", "cmd_diagnose"),
    "sandbox": ("sandbox", "cmd_sandbox"),
    "top": ("chips", "cmd_top"),
    "stacks": ("chips", "cmd_stacks"),
    "watch": ("managed", "cmd_watch"),
    "": ("tui", "cmd_tui"),
}

NO_ROOM_EXIT = 3


def command_for(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    name = args.command or ""
    if name == "stop":
        from console.cli.jobs import JOB_REF

        if JOB_REF.match(args.name):  # VM names start with a letter, job ids with a number
            args.command, args.action, args.job, args.json = "jobs", "stop", args.name, False
            name = "jobs"
    module, function = COMMANDS[name]
    return getattr(importlib.import_module(f"console.cli.{module}"), function)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is the remote command, untouched by our own flags.
    remote_argv: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, remote_argv = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    args.remote_argv = remote_argv
    try:
        return command_for(args)(args)
    except ConsoleError as exc:
        return fail(error_sentence(exc), exc.exit_code)
    except KeyboardInterrupt:
        if ONGOING.sentence:
            print(f"\ntpuconsole: interrupted. {ONGOING.sentence}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    except sqlite3.DatabaseError as exc:  # the checks on opening passed; it broke since
        return fail(f"the job history failed while in use ({exc}); nothing else was changed.")


def _reader_went_away() -> int:
    """Whoever read our output stopped (`| head`): stop quietly, as `seq 1 1e9 | head` does.

    No sentence (it would land under head's output, which is what the user asked for) and no
    traceback; the status is the shell's for a process ended by SIGPIPE. Later writes, and the
    interpreter's own flush at exit, go to /dev/null.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


__all__ = ["COMMANDS", "NO_ROOM_EXIT", "main"]
