"""What holds this worker's TPU: the libtpu lockfile, the processes on the chips, our jobs.

Runs on the VM's own python3 (3.8+, standard library only), fed on stdin by the console:
`python3 - probe [--lockfile P] [--devices GLOB] [--jobs-dir D] [--login-uid U]` prints one
JSON report; `python3 - clean PLAN_JSON` carries out a cleanup plan, re-checking every process
first. "Ours" is the ssh login user's (`--login-uid`, else sudo's SUDO_UID), never root's
merely because sudo made the probe root.
"""

# Only modules that load in microseconds: the probe starts once per worker per look, 256 at a
# time on a pod, and `json`, `glob`, `socket` and `signal` (through `re` and `enum`) cost more
# than the rest of its run. `json` and `signal` are imported where cleanup needs them.
import errno
import fcntl
import os
import pwd
import stat as stat_mode
import sys
import time

LOCKFILE = "/tmp/libtpu_lockfile"
DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# ----- /proc -------------------------------------------------------------------------------------
def proc_stat(pid):
    """(state, ppid, session id, start ticks) of a process, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()  # the command name may hold spaces and parens
    return {
        "state": fields[0],
        "ppid": int(fields[1]),
        "sid": int(fields[3]),
        "start_ticks": int(fields[19]),
        "rss_kb": int(fields[21]) * PAGE_KB,
    }


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


def user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def uptime_s():
    with open("/proc/uptime") as fh:
        return float(fh.read().split()[0])


def all_pids():
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())


def alive(pid, start_ticks=None):
    stat = proc_stat(pid)
    if stat is None or stat["state"] == "Z":
        return False
    return start_ticks is None or stat["start_ticks"] == start_ticks


# ----- the lock and the chips -------------------------------------------------------------------
# Opened only as the regular file it was seen to be: /tmp is world-writable, and a link planted
# there must not lead us to someone else's file (nor its lock's holders to our signals).
OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def file_kind(mode):
    if stat_mode.S_ISREG(mode):
        return "file"
    if stat_mode.S_ISLNK(mode):
        return "symlink"
    if stat_mode.S_ISDIR(mode):
        return "directory"
    if stat_mode.S_ISFIFO(mode):
        return "fifo"
    if stat_mode.S_ISSOCK(mode):
        return "socket"
    if stat_mode.S_ISCHR(mode) or stat_mode.S_ISBLK(mode):
        return "device"
    return "other"


def open_regular(path, seen=None):
    """A descriptor on the regular file at `path` itself, never through a link.

    Returns (fd, None), or (None, why) when it is not a regular file (or no longer the one
    `seen` describes: swapped between the look and the open).
    """
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "symlink"
        if exc.errno == errno.EISDIR:
            return None, "directory"
        raise
    st = os.fstat(fd)
    if not stat_mode.S_ISREG(st.st_mode):
        os.close(fd)
        return None, file_kind(st.st_mode)
    if seen is not None and (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
        os.close(fd)
        return None, "replaced"
    return fd, None


def lock_holders(st):
    """Pids holding a POSIX lock on the file `st` describes, from /proc/locks (no privileges)."""
    want = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    holders = []
    try:
        with open("/proc/locks") as fh:
            for line in fh:
                parts = line.split()
                if "->" in parts:  # a waiter, not a holder
                    continue
                if len(parts) >= 6 and parts[5] == want:
                    holders.append(int(parts[4]))
    except OSError:
        pass
    return sorted(set(holders))


def try_lock(path, seen):
    """'free' if we could take the lock, 'held' if someone has it, 'unopenable' if we may not."""
    try:
        fd, odd = open_regular(path, seen)
    except OSError as exc:
        return "unopenable" if exc.errno in (errno.EACCES, errno.EPERM) else "missing"
    if fd is None:
        return "changed: " + odd
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return "held"
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return "free"
    finally:
        os.close(fd)


def lockfile_report(path):
    """The lockfile as it is, looked at without following a link.

    Anything but a regular file (a symlink, a directory, a FIFO) is reported with its kind and
    left alone: no lock taken through it, no holders looked up behind it.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return {"path": path, "exists": False}
    report = {
        "path": path,
        "exists": True,
        "kind": file_kind(st.st_mode),
        "owner_uid": st.st_uid,
        "owner": user_name(st.st_uid),
        "mode": "%04o" % (st.st_mode & 0o7777),
        "mtime": st.st_mtime,
        "holders": [],
    }
    if report["kind"] == "symlink":
        try:
            report["target"] = os.readlink(path)
        except OSError:
            report["target"] = "?"
    if report["kind"] != "file":
        report["held"] = False
        return report
    report["holders"] = lock_holders(st)
    report["attempt"] = try_lock(path, st)
    if report["attempt"].startswith("changed"):
        report["kind"] = report["attempt"].split(": ", 1)[1]
        report["holders"] = []
    report["held"] = bool(report["holders"]) or report["attempt"] == "held"
    return report


def pattern_tokens(pattern):
    """A file-name pattern, parsed as by fnmatch: "*", "?", ("=", c) or ("[", negated, ranges)."""
    tokens, i = [], 0
    while i < len(pattern):
        c, i = pattern[i], i + 1
        end = -1
        if c == "[":
            j = i + 1 if pattern[i : i + 1] == "!" else i
            end = pattern.find("]", j + 1 if pattern[j : j + 1] == "]" else j)
        if end < 0:  # a plain character, or "[" with no closing bracket
            tokens.append(c if c in "*?" else ("=", c))
            continue
        negate = pattern[i : i + 1] == "!"
        stuff, i, ranges, k = pattern[i + negate : end], end + 1, [], 0
        while k < len(stuff):
            span = 3 if k + 2 < len(stuff) and stuff[k + 1] == "-" else 1  # "a-z" or "a"
            ranges.append((stuff[k], stuff[k + span - 1]))
            k += span
        tokens.append(("[", negate, ranges))
    return tokens


def token_matches(token, ch):
    if token == "?":
        return True
    if token[0] == "=":
        return token[1] == ch
    return any(lo <= ch <= hi for lo, hi in token[2]) != token[1]


def name_matches(name, pattern):
    """fnmatch.fnmatchcase for one file name (`*`, `?`, `[seq]`, `[!seq]`), without `re`."""
    tokens = pattern_tokens(pattern)
    t = n = 0
    star, mark = -1, 0
    while n < len(name):  # two pointers, backing up to the last `*` on a mismatch
        if t < len(tokens) and tokens[t] == "*":
            star, mark, t = t, n, t + 1
        elif t < len(tokens) and token_matches(tokens[t], name[n]):
            t, n = t + 1, n + 1
        elif star >= 0:
            mark += 1
            t, n = star + 1, mark
        else:
            return False
    return all(token == "*" for token in tokens[t:])


def glob_paths(pattern):
    """glob.glob for a pattern whose wildcards are all in its last part (the usual case)."""
    folder, base = os.path.split(pattern)
    if any(c in folder for c in "*?["):
        import glob  # wildcards in the folder too: rare enough to pay for the module

        return glob.glob(pattern)
    if not any(c in base for c in "*?["):
        return [pattern] if os.path.lexists(pattern) else []
    try:
        names = os.listdir(folder or os.curdir)
    except OSError:
        return []
    hidden_too = base.startswith(".")  # as glob: `*` skips names with a leading dot
    return [
        os.path.join(folder, name)
        for name in names
        if (hidden_too or not name.startswith(".")) and name_matches(name, base)
    ]


def device_paths(patterns):
    found = []
    for pattern in patterns:
        found.extend(p for p in glob_paths(pattern) if not os.path.isdir(p))
    return sorted(set(os.path.realpath(p) for p in found))


def elsewhere(pid, home, lockfile):
    """Whether a process is proven to run on another sandbox worker (or none), not this one.

    A sandbox worker is a folder on a machine shared with every other worker, not a VM: its
    processes are those carrying the sandbox's mark and the worker's HOME or lockfile, as
    console/sandbox/worker_processes.py finds them when the "VM" goes away. A process whose
    environment says otherwise is on no VM of this worker, and its open files are not read; one
    whose environment cannot be read (a kernel thread, another user's) is looked at as before.
    """
    try:
        fd = os.open("/proc/%d/environ" % pid, os.O_RDONLY)
    except OSError:
        return False
    try:
        raw = chunk = os.read(fd, 65536)  # os.read, not open(): a third less per process
        while chunk:
            chunk = os.read(fd, 65536)
            raw += chunk
    except OSError:
        return False
    finally:
        os.close(fd)
    if b"HOME=" + home + b"\0" not in raw and b"TPUCONSOLE_LOCKFILE=" + lockfile + b"\0" not in raw:
        return True  # the quick look: most processes here are other workers'
    env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return not (
        env.get(b"TPUCONSOLE_SANDBOX") == b"1"
        and (env.get(b"HOME") == home or env.get(b"TPUCONSOLE_LOCKFILE") == lockfile)
    )


def open_devices(pid, wanted):
    """The wanted devices a process has open, or None if its open files cannot be read."""
    try:
        fd_dir = os.open("/proc/%d/fd" % pid, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    held = set()
    try:
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(fd, dir_fd=fd_dir)  # relative to the folder: no path walk
            except OSError:
                continue
            if target in wanted:
                held.add(target)
    except OSError:
        return None
    finally:
        os.close(fd_dir)
    return held


def device_holders(devices, me, sandbox=None):
    """Every process with a device open; unreadable processes are counted, not guessed.

    `sandbox` is (HOME, lockfile) as bytes on a sandbox worker: the other workers' processes
    are left out (see elsewhere).
    """
    wanted = set(devices)
    holders, unreadable = {}, 0
    for pid in all_pids():
        if pid == me:
            continue
        if sandbox is not None and elsewhere(pid, *sandbox):
            continue
        held = open_devices(pid, wanted)
        if held is None:
            if os.path.exists("/proc/%d" % pid):
                unreadable += 1
        elif held:
            holders[pid] = held
    return holders, unreadable


def process_report(pid, devices, up):
    stat = proc_stat(pid)
    if stat is None:
        return None
    uid = uid_of(pid)
    return {
        "pid": pid,
        "uid": uid,
        "user": user_name(uid),
        "sid": stat["sid"],
        "start_ticks": stat["start_ticks"],
        "elapsed_s": round(up - stat["start_ticks"] / CLK_TCK, 1),
        "rss_kb": stat["rss_kb"],
        "cmdline": cmdline(pid),
        "devices": sorted(devices),
    }


# ----- our jobs ---------------------------------------------------------------------------------
def read_text(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def log_has_done(path):
    """Whether the runner printed its final `DONE:` line (read from the log's last 64 KiB)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 65536))
            tail = fh.read()
    except OSError:
        return False
    return any(line.startswith(b"DONE:") for line in tail.split(b"\n"))


def jobs_report(jobs_dir):
    jobs = []
    try:
        names = sorted(n for n in os.listdir(jobs_dir) if not n.startswith("."))
    except OSError:
        names = []
    for path in (os.path.join(jobs_dir, n) for n in names):
        pid_text, rc_text = (
            read_text(os.path.join(path, "pid")),
            read_text(os.path.join(path, "rc")),
        )
        start_text = read_text(os.path.join(path, "start"))
        if not pid_text or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        start = int(start_text) if start_text and start_text.isdigit() else None
        jobs.append(
            {
                "job_id": os.path.basename(path),
                "pid": pid,
                "start_ticks": start,
                "alive": alive(pid, start),
                "rc": int(rc_text) if rc_text and rc_text.lstrip("-").isdigit() else None,
                "done_line": log_has_done(os.path.join(path, "log")),
            }
        )
    return jobs


# ----- verdicts ---------------------------------------------------------------------------------
def verdicts(lock, holders, jobs, my_uid):
    """Busy, lingering, stale or foreign, each with the reason a user would want to read.

    `my_uid` is the login user's. A job's processes are the members of its session (the
    launch starts it with setsid), so a holder belongs to a job of ours when its session id is
    one of our jobs' pids; it is ours to stop only if it also runs as the login user.
    """
    by_pid = {j["pid"]: j for j in jobs}
    busy, lingering = [], []
    for proc in holders:
        job = by_pid.get(proc["sid"])
        finished = job is not None and (
            job["rc"] is not None or job["done_line"] or not job["alive"]
        )
        if job is None:
            lingering.append(
                {
                    "pid": proc["pid"],
                    "ours": proc["uid"] == my_uid,
                    "why": "holds the TPU and belongs to no job of ours",
                }
            )
        elif finished and proc["uid"] != my_uid:
            lingering.append(
                {
                    "pid": proc["pid"],
                    "ours": False,
                    "job_id": job["job_id"],
                    "why": "still holds the TPU after its job ended, in the job's session but "
                    "as user %s" % proc["user"],
                }
            )
        elif finished:
            why = (
                "its job wrote rc=%s" % job["rc"]
                if job["rc"] is not None
                else "its log printed DONE"
                if job["done_line"]
                else "its job's process is gone"
            )
            lingering.append(
                {
                    "pid": proc["pid"],
                    "ours": True,
                    "job_id": job["job_id"],
                    "why": "still holds the TPU after " + why,
                }
            )
        else:
            busy.append(job["job_id"])
    listed = {entry["pid"] for entry in lingering}
    for job in jobs:  # a runner that printed DONE and never exited, holding nothing any more
        if job["alive"] and job["done_line"] and job["pid"] not in listed:
            stat = proc_stat(job["pid"])
            if stat is not None and uid_of(job["pid"]) == my_uid:
                lingering.append(
                    {
                        "pid": job["pid"],
                        "ours": True,
                        "job_id": job["job_id"],
                        "start_ticks": stat["start_ticks"],
                        "cmdline": cmdline(job["pid"]),
                        "why": "job process still alive after its log printed DONE",
                    }
                )
    held = lock.get("held", False)
    exists = bool(lock.get("exists"))
    regular = exists and lock.get("kind", "file") == "file"
    foreign = regular and lock.get("owner_uid") != my_uid and lock.get("attempt") == "unopenable"
    return {
        "stale_lock": regular and not held and not holders and not foreign,
        "foreign_lock": foreign,
        "odd_lock": lock.get("kind", "") if exists and not regular else "",
        "lingering": lingering,
        "busy": sorted(set(busy)),
    }


def login_uid(given):
    """Whose processes are ours: the ssh login user's, which sudo would otherwise hide."""
    if given is not None and str(given).isdigit():
        return int(given)
    sudo_uid = os.environ.get("SUDO_UID", "")
    if os.geteuid() == 0 and sudo_uid.isdigit():
        return int(sudo_uid)
    return os.geteuid()


def probe(lockfile, device_globs, jobs_dir, sudo_note, owner, sandbox_home=""):
    me = os.getpid()
    up = uptime_s()
    devices = device_paths(device_globs)
    sandbox = (os.fsencode(sandbox_home), os.fsencode(lockfile)) if sandbox_home else None
    holding, unreadable = device_holders(devices, me, sandbox)
    lock = lockfile_report(lockfile)
    # A process holding the lock counts as holding the TPU even with no device open.
    for pid in lock.get("holders", []):
        holding.setdefault(pid, set())
    holders = [
        r
        for r in (process_report(pid, devs, up) for pid, devs in sorted(holding.items()))
        if r is not None
    ]
    jobs = jobs_report(jobs_dir)
    return {
        "host": os.uname().nodename,  # what gethostname() returns
        "time": time.time(),
        "root": os.geteuid() == 0,
        "uid": os.geteuid(),
        "user": user_name(os.geteuid()),
        "login_uid": owner,
        "login_user": user_name(owner),
        "sudo": sudo_note,
        "probe_pid": me,
        "lockfile": lock,
        "devices": devices,
        "holders": holders,
        "unreadable_processes": unreadable,
        "jobs": jobs,
        "verdicts": verdicts(lock, holders, jobs, owner),
    }


# ----- cleanup ----------------------------------------------------------------------------------
def protected_pids():
    """pid 1, this probe and every ancestor (the ssh session and its shells)."""
    pids, pid = {1}, os.getpid()
    while pid > 1:
        pids.add(pid)
        stat = proc_stat(pid)
        if stat is None:
            break
        pid = stat["ppid"]
    return pids


def same_process(step):
    stat = proc_stat(step["pid"])
    return (
        stat is not None
        and stat["state"] != "Z"
        and stat["start_ticks"] == step["start_ticks"]
        and cmdline(step["pid"]) == step["cmdline"]
    )


def gone(step):
    """Dead for good: no process, a zombie, or another process under the same pid.

    Not judged by the command line: an exiting process loses it before it closes its files,
    and so before its lock is released.
    """
    stat = proc_stat(step["pid"])
    return stat is None or stat["state"] in ("Z", "X") or stat["start_ticks"] != step["start_ticks"]


def kill_step(step, protected, owner):
    import signal

    pid = step["pid"]
    if pid in protected:
        return {"step": step, "done": False, "result": "refused: protected process"}
    if not same_process(step):
        return {
            "step": step,
            "done": False,
            "result": "not signalled: pid %d is gone or is another process now" % pid,
        }
    uid = uid_of(pid)
    if uid != owner:  # whatever the plan says: only the login user's processes are signalled
        return {
            "step": step,
            "done": False,
            "result": "refused: pid %d runs as user %s, not as %s"
            % (pid, user_name(uid), user_name(owner)),
        }
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        return {
            "step": step,
            "done": False,
            "needs_root": True,
            "result": "needs root: pid %d belongs to another user" % pid,
        }
    except ProcessLookupError:
        return {"step": step, "done": True, "result": "already gone"}
    deadline = time.monotonic() + float(step.get("grace_s", 10))
    while time.monotonic() < deadline:
        if gone(step):
            return {"step": step, "done": True, "result": "ended after SIGTERM"}
        time.sleep(0.05)
    if gone(step):
        return {"step": step, "done": True, "result": "ended after SIGTERM"}
    if not same_process(step):  # it is exiting already; give it the moment it needs
        time.sleep(0.2)
        if gone(step):
            return {"step": step, "done": True, "result": "ended after SIGTERM"}
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if gone(step):
            return {
                "step": step,
                "done": True,
                "result": "killed (SIGKILL after %.0f s)" % float(step.get("grace_s", 10)),
            }
        time.sleep(0.05)
    return {"step": step, "done": False, "result": "still alive after SIGKILL (uninterruptible?)"}


def remove_lock_step(step):
    path = step["path"]
    try:
        fd, odd = open_regular(path)
    except FileNotFoundError:
        return {"step": step, "done": True, "result": "already gone"}
    except PermissionError:
        return {
            "step": step,
            "done": False,
            "needs_root": True,
            "result": "needs root: %s belongs to another user" % path,
        }
    if fd is None:
        return {
            "step": step,
            "done": False,
            "result": "not removed: %s is a %s now, not a lockfile; not followed" % (path, odd),
        }
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return {
                "step": step,
                "done": False,
                "result": "not removed: a process holds its lock now",
            }
        try:
            now, held = os.lstat(path), os.fstat(fd)
            if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                return {
                    "step": step,
                    "done": False,
                    "result": "not removed: %s was replaced meanwhile" % path,
                }
            os.unlink(path)  # while we hold the lock: nobody can take it in between
        except PermissionError:
            return {
                "step": step,
                "done": False,
                "needs_root": True,
                "result": "needs root to remove %s (sticky /tmp)" % path,
            }
        return {"step": step, "done": True, "result": "removed (no holder)"}
    finally:
        os.close(fd)


def clean(plan, lockfile, device_globs, jobs_dir, sudo_note, owner, sandbox_home=""):
    protected = protected_pids()
    results = [kill_step(s, protected, owner) for s in plan.get("kills", [])]
    for step in plan.get("locks", []):
        results.append(remove_lock_step(step))
    return {
        "results": results,
        "after": probe(lockfile, device_globs, jobs_dir, sudo_note, owner, sandbox_home),
    }


try:
    from _json import encode_basestring_ascii as json_string  # what json.dumps uses
except ImportError:  # another Python than CPython: the module, whatever it costs
    from json.encoder import encode_basestring_ascii as json_string


def to_json(value):
    """json.dumps(value), byte for byte, for the report's plain types (see the imports)."""
    if isinstance(value, str):
        return json_string(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value:
            return "NaN"
        return {INF: "Infinity", -INF: "-Infinity"}.get(value) or float.__repr__(value)
    if isinstance(value, dict):
        return "{" + ", ".join(json_key(k) + ": " + to_json(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    raise TypeError("not in a probe report: %r" % (value,))


def json_key(key):
    if not isinstance(key, str):
        raise TypeError("a probe report's keys are strings: %r" % (key,))
    return json_string(key)


INF = float("inf")


def main(argv):
    mode = argv[0] if argv else "probe"
    opts = (
        dict(zip(argv[1::2], argv[2::2])) if mode == "probe" else dict(zip(argv[2::2], argv[3::2]))
    )
    lockfile = opts.get("--lockfile") or os.environ.get("TPUCONSOLE_LOCKFILE") or LOCKFILE
    devices = opts.get("--devices") or os.environ.get("TPUCONSOLE_DEVICES")
    device_globs = (devices,) if devices else DEVICE_GLOBS
    jobs_dir = opts.get("--jobs-dir") or os.path.expanduser("~/.tpuconsole/jobs")
    sudo_note = opts.get("--sudo", "not tried")
    owner = login_uid(opts.get("--login-uid"))
    sandbox_home = opts.get("--sandbox-home", "")
    if mode == "clean":
        import json

        plan = json.loads(argv[1])
        out = clean(plan, lockfile, device_globs, jobs_dir, sudo_note, owner, sandbox_home)
    else:
        out = probe(lockfile, device_globs, jobs_dir, sudo_note, owner, sandbox_home)
    sys.stdout.write(to_json(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
