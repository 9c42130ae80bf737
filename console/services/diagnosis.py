"""Known failures of sglang-jax and Tunix runs on TPU VMs: how to spot them, why, what to do.

SIGNATURES is data: add a Signature and every log view, `tpuconsole diagnose` and the job
screen know it. Line signatures are matched on raw bytes, whole chunks at a time, so a log
pouring in at a million lines a second costs one C-level regex scan per chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from console.models import Diagnosis
from console.services.lines import matching_lines, split_lines


@dataclass(frozen=True)
class Signature:
    key: str
    title: str
    pattern: str  # a regular expression over one log line
    cause: str
    remedy: str
    # Literal texts one of which every match contains: the bulk scan looks for these with
    # bytes.find (memchr speed) and runs the pattern only on the lines that have one.
    anchors: tuple[str, ...] = ()


SIGNATURES: tuple[Signature, ...] = (
    Signature(
        "incompatible_devices",
        "Engines on different devices share an array",
        r"Received incompatible devices for jitted computation",
        "sgl-jax's module-global _zero_linear_penalty_cache was keyed by shape only, so the "
        "second engine reused the first engine's device array (fixed upstream in sglang-jax "
        "PR #795, which adds the sharding to the key).",
        "Update sglang-jax past PR #795, or run remote/multi_engine.py, which patches the cache "
        "to be device-aware when the installed version needs it.",
        anchors=("incompatible devices for jitted",),
    ),
    Signature(
        "tpu_in_use",
        "The TPU is already in use",
        r"TPU is already in use|probably owned by another user|"
        r"Unable to initialize backend 'tpu'.*in use",
        "A stale /tmp/libtpu_lockfile, or a process from an earlier run (often one that printed "
        "DONE and never exited), still holds the chips. One TPU process per host.",
        "Press K on the node (or `tpuconsole clean NODE`): it kills only the stale holders and "
        "removes the lockfile when nobody holds it.",
        anchors=("already in use", "owned by another user", "Unable to initialize backend"),
    ),
    Signature(
        "tpu_version",
        "TPU version must be 4 or higher",
        r"TPU version must be 4 or higher",
        "sgl-jax's TPU attention kernels need TPU v4 or newer; off-TPU it needs the CPU backend.",
        'Use a v4, v5e, v5p or v6e node; to test off-TPU set JAX_PLATFORMS=cpu (device="cpu").',
        anchors=("TPU version must be",),
    ),
    Signature(
        "continuator_halted",
        "The program continuator has halted",
        r"program continuator has halted",
        "Multi-host GRPO with in-process sglang-jax rollout: Tunix builds the engine with device "
        "ids from a mesh spanning hosts but no nnodes/node_rank/dist_init_addr, so each host "
        "schedules on its own while the program runs cross-host collectives (also sglang-jax "
        "#1216: compilation cache on a device subset without device 0, fixed by #1225).",
        "On multi-host use --rollout-engine vanilla, or sglang-jax as separate single-host "
        "servers outside the training job (a host-local rollout mesh and sglang-jax's "
        "multi-node mode do not work in process; remote/grpo.py refuses them).",
        anchors=("continuator has halted",),
    ),
    Signature(
        "hbm_oom",
        "Not enough TPU memory",
        r"Not enough memory\. Please try to increase --mem-fraction-static|"
        r"RESOURCE_EXHAUSTED.*(?:HBM|[Mm]emory)|Ran out of memory in memory space hbm",
        "--mem-fraction-static applies to the memory free at start-up, weights included; the KV "
        "cache did not fit.",
        "Raise --mem-fraction-static (e.g. 0.8), or lower the context length, max total tokens "
        "or the number of engines per chip.",
        anchors=("Not enough memory", "RESOURCE_EXHAUSTED", "Ran out of memory"),
    ),
    Signature(
        "spot_quota",
        "Spot quota exhausted",
        r"Quota limit '[^']*(?:Preemptible|Spot)[^']*' has been exceeded",
        "The project's spot/preemptible TPU quota in that region is used up.",
        "Create on-demand (the create form's fallback), try another zone, or request quota.",
        anchors=("Quota limit",),
    ),
    Signature(
        "signal_off_main_thread",
        "sgl-jax engine built off the main thread",
        r"signal only works in main thread",
        "sgl-jax's Engine installs SIGCHLD/SIGQUIT handlers unconditionally, which Python allows "
        "only on the main thread.",
        "Build engines on the main thread, or use remote/multi_engine.py --engine-per-thread, "
        "which installs the handlers only where allowed.",
        anchors=("signal only works",),
    ),
    Signature(
        "engine_device_mismatch",
        "sgl-jax was told a device JAX does not have",
        r"device \w+ is not consistent with 'JAX_PLATFORMS'|"
        r"stats\[\"bytes_limit\"\] - stats\[\"bytes_in_use\"\]",
        'The Engine got device="tpu" (a runner that hard-codes it) while JAX runs on another '
        "backend: with JAX_PLATFORMS=cpu sgl-jax refuses it; with JAX_PLATFORMS unset it asks "
        "the CPU devices for TPU memory statistics, gets none, and fails with TypeError.",
        "Pass device=jax.default_backend() (remote/multi_engine.py does), or run where JAX's "
        'backend is the one asked for (check the job\'s `JAX: {"backend": ...}` line).',
        anchors=("is not consistent with 'JAX_PLATFORMS'", 'stats["bytes_limit"]'),
    ),
    Signature(
        "scheduler_failed",
        "An sgl-jax scheduler failed and sgl-jax ended the process",
        r"Scheduler hit an exception|sgl-jax ended the run: a scheduler failed|"
        r"Received sigquit from a child process",
        "A scheduler thread raised (its traceback is in the log, just before); sgl-jax then "
        "sends its own process SIGQUIT, which ends it at once: exit status 131, or 137 when "
        "sgl-jax's handler SIGKILLs it. Nothing after that line runs, not even a DONE.",
        "Read the scheduler's traceback above this line: a known failure there (incompatible "
        "devices, not enough memory) has its own diagnosis and remedy.",
        anchors=("Scheduler hit an exception", "a scheduler failed", "Received sigquit"),
    ),
    Signature(
        "multi_process_refused",
        "The multi-engine test needs a single host",
        r"must run on a single host \(process_count==1\)",
        "The multi-engine thread test drives engines in one process; a multi-host slice makes "
        "JAX see several processes.",
        "Run it on one worker (--worker 0) of a single-host node, e.g. a v4-8.",
        anchors=("process_count==1",),
    ),
    Signature(
        "grpo_sglang_multi_process_refused",
        "In-process sglang-jax rollout refused on a multi-host job",
        # To the end of the line: the refusal quotes the continuator error it prevents.
        r"in-process sglang-jax rollout cannot run in a job of \d+ processes.*",
        "remote/grpo.py refuses it before loading anything: in-process sglang-jax cannot span "
        "hosts (the seeds' run died with 'The program continuator has halted unexpectedly').",
        "Re-run with --rollout-engine vanilla, or run sglang-jax as separate single-host servers.",
        anchors=("in-process sglang-jax rollout cannot run",),
    ),
)

# Conditions seen from the job and node, not from a line.
NODE_LEFT = Signature(
    "node_left",
    "The VM left READY mid-run",
    "",
    "Spot preemption, or the VM was deleted or terminated (by someone, a policy or automation).",
    "Check the node's event timeline; create it again (on-demand if spot keeps failing) and "
    "re-run the job.",
)
HANG_AFTER_DONE = Signature(
    "hang_after_done",
    "The runner printed DONE but did not exit",
    "",
    "sgl-jax's engine shutdown leaves scheduler threads running, so the process lingers and "
    "keeps holding the TPU.",
    "Press K on the node to stop it (the next run would find the TPU in use); "
    "remote/multi_engine.py ends itself after DONE.",
)
SIGQUIT_RC = 128 + 3  # how a shell reports a process that SIGQUIT ended
KILLED_BY_SIGQUIT = Signature(
    "killed_by_sigquit",
    "The process died of SIGQUIT (exit status 131)",
    "",
    "sgl-jax sends its own process SIGQUIT when a scheduler fails; a runner without a handler "
    "for it (one building engines off the main thread, where sgl-jax cannot install its own) "
    "dies at once, with no last line. (Started in the background, as detached jobs are, a "
    "process inherits SIGQUIT ignored and hangs there instead: see the silent-job finding.)",
    "Look for the scheduler's traceback in the log (`Scheduler hit an exception`); "
    "remote/multi_engine.py catches the signal and says so before it exits.",
)
SILENT = Signature(
    "silent",
    "No output for a long time",
    "",
    "The run may be stalled: the seeds saw concurrent generate (--concurrency 4) without a "
    "sequential warm-up hang.",
    "Check the process (py-spy dump) and consider --warmup-sequential; or it is compiling: "
    "JAX_COMPILATION_CACHE_DIR speeds up the next start.",
)

_BY_KEY = {s.key: s for s in SIGNATURES}
_COMBINED = re.compile("|".join(f"(?P<{s.key}>{s.pattern})" for s in SIGNATURES).encode())
_ANCHORS = tuple(a.encode() for s in SIGNATURES for a in s.anchors)


def _diagnosis(sig: Signature, evidence: str, worker: int | None) -> Diagnosis:
    return Diagnosis(sig.key, sig.title, evidence.strip(), sig.cause, sig.remedy, worker)


_GENERIC_ERROR = re.compile(
    r"Traceback \(most recent call last\)|\b\w+(?:Error|Exception): |Killed$"
)


def looks_like_error(line: str) -> bool:
    """For highlighting: a known signature, or any traceback or exception line."""
    return _GENERIC_ERROR.search(line) is not None or line_signature(line) is not None


def line_signature(line: str) -> Signature | None:
    match = _COMBINED.search(line.encode("utf-8", "replace"))
    return _BY_KEY[match.lastgroup] if match and match.lastgroup else None


def from_condition(key: str, evidence: str, worker: int | None = None) -> Diagnosis:
    sig = {s.key: s for s in (NODE_LEFT, HANG_AFTER_DONE, KILLED_BY_SIGQUIT, SILENT)}[key]
    return _diagnosis(sig, evidence, worker)


def node_left(name: str, state: str, reason: str) -> Diagnosis:
    """The VM left READY under a running job. Made by whichever sees it first, the fleet's
    refresh or the job's own follower; recorded once (a job's findings are one per key)."""
    when = datetime.now().astimezone().strftime("%H:%M:%S")
    return from_condition("node_left", f"{name} went {state} at {when}: {reason}")


class Diagnoser:
    """Collects each signature once per worker, with the first line that showed it."""

    def __init__(self) -> None:
        self.found: list[Diagnosis] = []
        self._seen: set[tuple[str, int | None]] = set()

    def add(self, diagnosis: Diagnosis) -> bool:
        key = (diagnosis.key, diagnosis.worker)
        if key in self._seen:
            return False
        self._seen.add(key)
        self.found.append(diagnosis)
        return True

    def feed_chunk(self, worker: int | None, data: bytes) -> list[Diagnosis]:
        """Complete lines as bytes, in bulk; returns the new diagnoses."""
        new = []
        for match, line in matching_lines(_COMBINED, data, _ANCHORS):
            sig = _BY_KEY[match.lastgroup or ""]
            diagnosis = _diagnosis(sig, line, worker)
            if self.add(diagnosis):
                new.append(diagnosis)
        return new

    def feed_line(self, worker: int | None, line: str) -> list[Diagnosis]:
        return self.feed_chunk(worker, line.encode("utf-8", "replace"))


def diagnose_text(text: str) -> list[Diagnosis]:
    """The whole of a saved log; `[wN] ` prefixes (from `tpuconsole logs`) name the worker."""
    diagnoser = Diagnoser()
    for line in split_lines(text):
        worker = None
        m = re.match(r"\[w(\d+)\] ", line)
        if m:
            worker, line = int(m.group(1)), line[m.end() :]
        diagnoser.feed_line(worker, line)
    return diagnoser.found
