"""Every thread's stack on request: SIGUSR1 makes a runner write them to its log and go on.

`faulthandler.register(SIGUSR1, all_threads=True)` dumps from the signal handler itself, so it
works while the main thread is blocked in C (a collective, a socket, a lock). The dump goes to
stderr, which is the job's log. A marker, `<job folder>/stacks/<pid>` holding the process's
start time, tells the console's stacks collection (remote/stacks.py) that this process asked
for it: SIGUSR1 ends a process that has no handler for it, and may mean something else to one
that has its own, so no other process is sent one. Standard library only; any Python program
in a job may call enable() too.
"""

import contextlib
import faulthandler
import os
import signal
import sys


def _start_ticks(pid):
    with open("/proc/%d/stat" % pid) as fh:
        raw = fh.read()
    return raw[raw.rfind(")") + 2 :].split()[19]


def marker_path(pid=None):
    """Where the marker goes: the job's folder (the launch exports it), else nowhere."""
    job_dir = os.environ.get("TPUCONSOLE_JOB_DIR", "")
    if not job_dir:
        return ""
    return os.path.join(job_dir, "stacks", str(pid or os.getpid()))


def enable():
    """Dump every thread's stack to stderr on SIGUSR1, and leave the marker saying so."""
    if not hasattr(signal, "SIGUSR1"):
        return False
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    path = marker_path()
    if not path:
        return False  # run by hand: `kill -USR1 PID` still dumps; nobody needs the marker
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(_start_ticks(os.getpid()) + "\n")
    except OSError:
        return False  # no marker, no signal: the console uses py-spy, or says why it cannot
    return True


def disable():
    """Before the process ends (runners end with os._exit, which runs no atexit)."""
    path = marker_path()
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)
