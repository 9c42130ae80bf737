"""A stand-in TPU process for tests: takes the libtpu lock and/or opens the chip devices.

Usage: python3 hold_tpu.py [lock] [chips] [ignore-term] [done] [child]; prints `holding`.
With `child`, a child process in the same session holds the chips and the parent exits.
"""

import fcntl
import glob
import os
import signal
import sys
import time

args = set(sys.argv[1:])
if "ignore-term" in args:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "child" in args and os.fork() != 0:
    time.sleep(0.5)  # the parent (the job's process) ends; the child lingers
    sys.exit(0)
handles = []
if "lock" in args:
    fd = os.open(os.environ["TPUCONSOLE_LOCKFILE"], os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
if "chips" in args:
    handles = [open(p, "rb") for p in sorted(glob.glob(os.environ["TPUCONSOLE_DEVICES"]))]  # noqa: SIM115 - held open on purpose
if "done" in args:
    print("DONE: engines=4 wall_sec=0.5", flush=True)
print("holding", flush=True)
time.sleep(600)
