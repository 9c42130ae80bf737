"""`n`: the launch form. Pick a template and preset, adjust parameters, see preflight and the
exact command as you type; `ctrl+s` launches and opens the job's logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Select, Static

from console.models import FleetError, Node
from console.services.preflight import Check, preflight
from console.services.templates import TEMPLATES, Rendered, parse_sets


@dataclass(frozen=True)
class LaunchChoice:
    """What the form hands back: the template, its rendering, where, and the values behind it."""

    kind: str
    rendered: Rendered
    selection: str
    clean_first: bool
    params: dict[str, Any]


class LaunchScreen(ModalScreen):
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "launch", "Launch")]

    DEFAULT_CSS = """
    LaunchScreen { align: center middle; }
    LaunchScreen > VerticalScroll {
        width: 110; height: auto; max-height: 95%; border: thick $accent; padding: 1 2;
        background: $panel;
    }
    LaunchScreen Label { margin-top: 1; color: $text-muted; }
    LaunchScreen #launch-checks { margin-top: 1; }
    LaunchScreen #launch-command { margin-top: 1; background: $boost; padding: 0 1; }
    """

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node
        self.probes: list = []
        self.checks: list[Check] = []
        self.error = ""

    def compose(self) -> ComposeResult:
        first = next(iter(TEMPLATES.values()))
        with VerticalScroll():
            yield Static(
                f"[b]Launch on {escape(self.node.name)}[/b] ({self.node.zone}, "
                f"{self.node.accelerator_type}, {len(self.node.workers)} worker(s))"
            )
            yield Label("Template")
            yield Select(
                [(f"{t.name} — {t.title}", t.name) for t in TEMPLATES.values()],
                value=first.name,
                id="template",
                allow_blank=False,
            )
            yield Label("Preset")
            yield Select([(p, p) for p in first.presets], id="preset", prompt="(none)")
            yield Label(
                "Parameters (key=value, comma-separated; e.g. concurrency=4, "
                "warmup_sequential=true)"
            )
            yield Input(id="sets")
            yield Label("Workers (all, 0, 1,3, 0-2)")
            yield Input("all", id="workers")
            yield Static("", id="launch-checks")
            yield Static("", id="launch-command")
            yield Static("\n[b]ctrl+s[/b] launches and opens the logs · [b]esc[/b] cancels")

    def on_mount(self) -> None:
        self._probe()
        self._refresh()
        self.query_one("#template", Select).focus()

    @work(exclusive=True, group="launch-probe")
    async def _probe(self) -> None:
        """Stale TPU state on the workers turns into an offer in the checks."""
        if self.app.prober is None or self.node.state != "READY":
            return
        try:
            self.probes = await self.app.prober.probe(self.node)
        except FleetError:
            self.probes = []
        self._refresh()

    def _template(self):
        return TEMPLATES[str(self.query_one("#template", Select).value)]

    def _values(self):
        template = self._template()
        preset = self.query_one("#preset", Select).value
        raw = self.query_one("#sets", Input).value
        sets = parse_sets([x.strip() for x in raw.split(",") if x.strip()])
        return template, template.values(preset if isinstance(preset, str) else "", sets)

    @on(Select.Changed, "#template")
    def _template_changed(self) -> None:
        presets = self._template().presets
        self.query_one("#preset", Select).set_options([(p, p) for p in presets])
        self._refresh()

    @on(Select.Changed, "#preset")
    @on(Input.Changed)
    def _changed(self) -> None:
        self._refresh()

    def _refresh(self) -> None:
        checks_box = self.query_one("#launch-checks", Static)
        command_box = self.query_one("#launch-command", Static)
        try:
            template, values = self._values()
            rendered = template.render(values)
        except FleetError as exc:
            self.error = f"{exc.reason} {exc.remedy}".strip()
            self.checks = []
            checks_box.update(f"[red]{escape(self.error)}[/red]")
            command_box.update("")
            return
        self.error = ""
        selection = self.query_one("#workers", Input).value.strip() or "all"
        self.checks = preflight(template, values, self.node, selection, self.probes)
        colours = {"refuse": "red", "warn": "yellow", "offer": "cyan"}
        lines = [
            f"[{colours[c.level]}]{c.level.upper()}[/] {escape(c.message)}"
            + (f"\n   {escape(c.remedy)}" if c.remedy else "")
            for c in self.checks
        ]
        checks_box.update("\n".join(lines) or "[green]preflight: nothing in the way[/green]")
        exports = " ".join(f"{k}={v}" for k, v in rendered.env.items())
        command_box.update(escape((f"# env: {exports}\n" if exports else "") + rendered.shell()))

    def action_launch(self) -> None:
        if self.error:
            self.notify(self.error, severity="error")
            return
        if any(c.level == "refuse" for c in self.checks):
            self.notify(
                "Preflight refuses this launch; see the reasons in the form.", severity="error"
            )
            return
        template, values = self._values()
        rendered = template.render(values)
        selection = self.query_one("#workers", Input).value.strip() or "all"
        clean_first = any(c.level == "offer" for c in self.checks)
        self.dismiss(LaunchChoice(template.name, rendered, selection, clean_first, values))

    def action_cancel(self) -> None:
        self.dismiss(None)
