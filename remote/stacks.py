"""A job's thread stacks on this worker: faulthandler dumps cut from its log, or py-spy's.

Runs on the VM's own python3 (3.8+, standard library only), fed on stdin by the console:
`python3 - --job-dir DIR [--wait-s S]` prints one JSON report. For each live process of the
job's session (the launch starts it with setsid), a process that asked for it
(remote/stack_dumps.py left its marker, and it catches SIGUSR1) is sent SIGUSR1 and its dump is
cut out of the job's log as it lands there; another Python process is read with
`py-spy dump` where py-spy is installed; the rest are listed with why they were not. Only the
login user's processes are signalled, one at a time, so each dump is told from the next.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HEADER = re.compile(rb"^(?:Current thread|Thread) 0x[0-9a-fA-F]+.*\(most recent call first\):$")
FRAME = re.compile(rb'^  (?:File ".*", line \d+ in .*|<no Python frame>|\.\.\.)$')
SETTLE_S = 0.2  # a dump is written in one burst: this long without growth means it is done
PY_SPY_TIMEOUT_S = 20.0


# proc_stat, cmdline and uid_of read /proc as remote/probe.py's do: each script is fed alone to
# the VM's python3 on stdin (nothing is installed there), so neither can import the other.
def proc_stat(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return {"state": fields[0], "ppid": int(fields[1]), "sid": int(fields[3]),
            "start": fields[19]}  # fmt: skip


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def uid_of(pid):
    try:
        return os.stat("/proc/%d" % pid).st_uid
    except OSError:
        return -1


def members(sid):
    """Live processes of the session, oldest first."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = proc_stat(int(name))
        if stat is not None and stat["sid"] == sid and stat["state"] not in ("Z", "X"):
            out.append((int(stat["start"]), int(name), stat))
    return [(pid, stat) for _, pid, stat in sorted(out)]


def catches(pid, signum):
    try:
        with open("/proc/%d/status" % pid) as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def is_python(pid):
    try:
        exe = os.path.basename(os.readlink("/proc/%d/exe" % pid))
    except OSError:
        exe = ""
    first = os.path.basename(cmdline(pid).split(" ")[0]) if cmdline(pid) else ""
    return exe.startswith("python") or first.startswith("python")


def asked_for_dumps(job_dir, pid, start):
    """The process left remote/stack_dumps.py's marker, for this very process (its start)."""
    try:
        with open(os.path.join(job_dir, "stacks", str(pid))) as fh:
            return fh.read().strip() == start
    except OSError:
        return False


def log_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def read_from(path, offset):
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read()
    except OSError:
        return b""


def cut_dump(data):
    """The dump's own lines (thread headers and frames), whatever else the job wrote between."""
    lines = data.split(b"\n")
    keep, inside = [], False
    for line in lines:
        if HEADER.match(line):
            inside = True
            keep.append(line)
        elif inside and FRAME.match(line):
            keep.append(line)
        elif line.strip():
            inside = False
    return b"\n".join(keep).decode("utf-8", "replace")


def faulthandler_dump(pid, log, wait_s):
    """SIGUSR1, then the dump as it lands in the log; ("", note) if none came in time."""
    start = log_size(log)
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError as exc:
        return "", "could not signal pid %d: %s" % (pid, exc)
    deadline = time.monotonic() + wait_s
    size, steady_since = start, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = log_size(log)
        if now != size:
            size, steady_since = now, time.monotonic()
            continue
        if size > start and time.monotonic() - steady_since >= SETTLE_S:
            text = cut_dump(read_from(log, start))
            if text:
                return text, ""
    text = cut_dump(read_from(log, start))
    if text:
        return text, ""
    return "", "pid %d wrote no stack dump to the job's log within %.0f s" % (pid, wait_s)


def find_py_spy():
    found = shutil.which("py-spy")
    if found:
        return found
    local = os.path.expanduser("~/.local/bin/py-spy")
    return local if os.access(local, os.X_OK) else ""


def py_spy_dump(py_spy, pid):
    """`py-spy dump --pid P`, through `sudo -n` when ptrace needs root and sudo allows it."""
    attempts = [[py_spy, "dump", "--pid", str(pid)]]
    if os.geteuid() != 0:
        attempts.append(["sudo", "-n", py_spy, "dump", "--pid", str(pid)])
    error = ""
    for argv in attempts:
        try:
            out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 timeout=PY_SPY_TIMEOUT_S)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            error = str(exc)
            continue
        if out.returncode == 0:
            return out.stdout.decode("utf-8", "replace"), ""
        error = (out.stderr or out.stdout).decode("utf-8", "replace").strip().splitlines()
        error = error[-1] if error else "exit %d" % out.returncode
    return "", "py-spy could not read pid %d: %s" % (pid, error)


def collect(job_dir, wait_s):
    report = {"home": os.path.expanduser("~"), "processes": [], "note": ""}
    py_spy = find_py_spy()
    report["py_spy"] = py_spy
    try:
        with open(os.path.join(job_dir, "pid")) as fh:
            leader = int(fh.read().strip())
    except (OSError, ValueError):
        report["note"] = "the job never started on this worker (no pid file)"
        return report
    me = os.getuid()
    log = os.path.join(job_dir, "log")
    for pid, stat in members(leader):
        entry = {"pid": pid, "ppid": stat["ppid"], "cmdline": cmdline(pid), "method": "none",
                 "text": "", "note": "", "python": is_python(pid)}  # fmt: skip
        report["processes"].append(entry)
        if not entry["python"]:
            entry["note"] = "not a Python process"
        elif uid_of(pid) != me:
            entry["note"] = "runs as another user: not signalled"
        elif asked_for_dumps(job_dir, pid, stat["start"]) and catches(pid, signal.SIGUSR1):
            entry["method"] = "faulthandler"
            entry["text"], entry["note"] = faulthandler_dump(pid, log, wait_s)
        elif py_spy:
            entry["method"] = "py-spy"
            entry["text"], entry["note"] = py_spy_dump(py_spy, pid)
        else:
            entry["note"] = (
                "no stack-dump handler (remote/stack_dumps.py) and py-spy is not installed on "
                "the worker: `pip install py-spy` there (it needs ptrace: root, or "
                "kernel.yama.ptrace_scope=0)"
            )
    if not report["processes"]:
        report["note"] = "no process of the job is running on this worker"
    return report


def main(argv):
    opts = dict(zip(argv[0::2], argv[1::2]))
    job_dir = os.path.expanduser(opts.get("--job-dir", ""))
    wait_s = float(opts.get("--wait-s", "5"))
    sys.stdout.write(json.dumps(collect(job_dir, wait_s)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
