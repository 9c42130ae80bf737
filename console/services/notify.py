"""Telling the user about a job's end, failure, preemption, recovery or hang, wherever they are.

In-process sinks first (the TUI's Textual notification, the terminal's bell or desktop
notification), then the user's hooks from config.toml: `[notify] command` (SkyPilot's
`event_callback`: run with TPUCONSOLE_EVENT/JOB/STATUS/NODE in its environment) and
`[notify] webhook` (a POST of JSON with a `text` field, which Slack's incoming webhooks take).
A hook that fails is reported through `say`, never raised: a broken Slack URL must not stop a
recovery.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from console.models import EventKind, JobStatus, ManagedState
from console.services.terminal_text import plain_text

HOOK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class JobEvent:
    event: EventKind
    job_id: str
    status: JobStatus | ManagedState  # the run's, or the managed job's while it recovers
    node: str
    text: str  # one sentence for people

    def env(self) -> dict[str, str]:
        return {
            "TPUCONSOLE_EVENT": self.event,
            "TPUCONSOLE_JOB": self.job_id,
            "TPUCONSOLE_STATUS": self.status,
            "TPUCONSOLE_NODE": self.node,
        }


def osc_notification(title: str, body: str, term_program: str = "") -> str:
    """The escape a terminal shows as a desktop notification: OSC 777 (rxvt, foot, WezTerm,
    VTE) where the terminal is known to take it, else OSC 9 (iTerm2, kitty, Windows Terminal),
    each preceded by BEL. Text from a job is made printable first: it never reaches the
    terminal raw, and a `;` or BEL inside it cannot end the sequence early."""

    def clean(text: str) -> str:
        return _printable(text).replace(";", ",")

    if term_program.lower() in {"wezterm", "foot", "vte", "rxvt", "urxvt"}:
        return f"\x07\x1b]777;notify;{clean(title)};{clean(body)}\x07"
    return f"\x07\x1b]9;{clean(title)}: {clean(body)}\x07"


def _printable(text: str) -> str:
    """What a terminal row would show, less any control character left (BEL, ESC, CR)."""
    return "".join(c for c in plain_text(text) if c >= " " and c != "\x7f")


@dataclass(eq=False)
class Notifier:
    command: str = ""
    webhook: str = ""
    say: Callable[[str], None] = lambda _text: None  # where a failing hook is reported
    sinks: list[Callable[[JobEvent], None]] = field(default_factory=list)
    desktop: bool = False  # notify-send where present (the TUI and `watch` turn it on)
    _tasks: set[asyncio.Future] = field(default_factory=set)

    async def tell(self, event: JobEvent) -> None:
        """Every sink and hook, in order; the hooks' failures said, never raised."""
        for sink in self.sinks:
            try:
                sink(event)
            except Exception as exc:  # a sink is our own code, but a notification never stops us
                self.say(f"notification not shown: {exc}")
        if self.desktop and shutil.which("notify-send"):
            await self._run(["notify-send", "tpuconsole", event.text], {}, "notify-send")
        if self.command:
            await self._run(["sh", "-c", self.command], event.env(), "[notify] command")
        if self.webhook:
            await asyncio.to_thread(self._post, event)

    def tell_soon(self, event: JobEvent) -> None:
        """From code that cannot await: the same, in the background."""
        task = asyncio.ensure_future(self.tell(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(self, argv: list[str], extra: dict[str, str], what: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env={**os.environ, **extra},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                _, err = await asyncio.wait_for(proc.communicate(), HOOK_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                self.say(f"{what} did not finish in {HOOK_TIMEOUT_S:.0f} s and was killed.")
                return
        except OSError as exc:
            self.say(f"{what} could not run: {exc}.")
            return
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            last = _printable(lines[-1])[:200] if lines else ""
            tail = f": {last}" if last else ""
            self.say(f"{what} failed (exit {proc.returncode}){tail}; the job goes on.")

    def _post(self, event: JobEvent) -> None:
        body = json.dumps({"text": event.text, **{k.lower(): v for k, v in event.env().items()}})
        request = urllib.request.Request(
            self.webhook,
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=HOOK_TIMEOUT_S) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            self.say(f"[notify] webhook answered HTTP {exc.code}; the job goes on.")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            self.say(f"[notify] webhook could not be reached ({reason}); the job goes on.")
