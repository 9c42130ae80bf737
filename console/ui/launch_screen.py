"""`n`: the launch form. Pick a template and preset, adjust parameters, see preflight and the
exact command as you type; `ctrl+s` launches and opens the job's logs.

One field per parameter (a value may hold commas, quotes or spaces: it reaches the program as
typed). An empty field is not passed, so the runner's default applies; the placeholder says it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.widgets import Checkbox, Input, Label, Select, Static

from console.models import Check, FleetError, Node, Rendered
from console.services.queued_resources import QueuedGroup
from console.services.templates import TEMPLATES, Param, Template
from console.ui.base_screens import ConsoleModal
from console.ui.plain import choices, lines, plain, styled


@dataclass(frozen=True)
class LaunchChoice:
    """What the form hands back: the template, its rendering, where, and the values behind it."""

    kind: str
    rendered: Rendered
    selection: str
    clean_first: bool
    params: dict[str, Any]
    managed: bool = False  # recovered after a preemption (services/managed.py)


class LaunchScreen(ConsoleModal["LaunchChoice | None"]):
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "launch", "Launch")]

    def __init__(self, node: Node, group: QueuedGroup | None = None) -> None:
        """`group`: the node's multislice group, launched on as a whole (issue 17)."""
        super().__init__()
        self.node = node
        self.group = group
        self.probes: list = []
        self.checks: list[Check] = []
        self.error = ""
        self._rebuilding = False

    def compose(self) -> ComposeResult:
        first = next(iter(TEMPLATES.values()))
        with VerticalScroll():
            yield Static(
                styled(
                    (f"Launch on {self.node.name}", "bold"),
                    f" ({self.node.zone}, {self.node.accelerator_type}, "
                    f"{len(self.node.workers)} worker(s))",
                )
                if self.group is None
                else styled(
                    (f"Launch on multislice group {self.group.request.name}", "bold"),
                    f" ({', '.join(n.name for n in self.group.nodes)}: every worker of every "
                    "slice, with the MEGASCALE environment)",
                ),
                markup=False,
            )
            yield Label("Template", markup=False)
            yield Select(
                [(plain(f"{t.name} — {t.title}"), t.name) for t in TEMPLATES.values()],
                value=first.name,
                id="template",
                allow_blank=False,
            )
            yield Label("Preset (fills the fields below)", markup=False)
            yield Select(choices(first.presets), id="preset", prompt="(none)")
            yield Label("Workers (all, 0, 1,3, 0-2)", markup=False)
            yield Input("all", id="workers")
            yield Checkbox(
                "Managed: after a preemption, recreate the node, set it up and run again",
                id="managed",
                compact=True,
            )
            # Preflight and the exact command stay in sight while the fields below change.
            yield Static("", id="launch-checks", markup=False)
            yield Static("", id="launch-command", markup=False)
            yield Static(
                styled(("ctrl+s", "bold"), " launches and opens the logs · ", ("esc", "bold"))
                + " cancels",
                markup=False,
            )
            yield Label("Parameters (empty: the runner's default, shown greyed)", markup=False)
            yield Grid(id="params")

    async def on_mount(self) -> None:
        await self._build_fields()
        self._probe()
        self._refresh()
        self.query_one("#template", Select).focus()

    @work(exclusive=True, group="launch-probe")
    async def _probe(self) -> None:
        """Stale TPU state on the workers turns into an offer in the checks."""
        if self.node.state != "READY":
            return
        try:
            self.probes = await self.services.prober.probe(self.node)
        except FleetError:
            self.probes = []
        self._refresh()

    def _template(self) -> Template:
        return TEMPLATES[str(self.query_one("#template", Select).value)]

    async def _build_fields(self) -> None:
        grid = self.query_one("#params", Grid)
        await grid.remove_children()
        widgets = []
        for p in self._template().all_params:
            widgets += [Label(p.name, markup=False), _field(p)]
        await grid.mount_all(widgets)

    def _raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = {}
        for p in self._template().all_params:
            for widget in self.query(f"#p-{p.name}"):
                if isinstance(widget, Checkbox):
                    value: Any = True if widget.value else None
                elif isinstance(widget, Select):
                    value = None if widget.is_blank() else widget.value
                elif isinstance(widget, Input):
                    value = widget.value
                else:
                    continue
                if value not in (None, ""):
                    raw[p.name] = value
        return raw

    def _values(self) -> tuple[Template, dict[str, Any]]:
        template = self._template()
        return template, template.values("", self._raw())

    @on(Select.Changed, "#template")
    async def _template_changed(self) -> None:
        # The fields are replaced across an await: nothing may read them until they are back.
        self._rebuilding = True
        try:
            presets = self._template().presets
            self.query_one("#preset", Select).set_options(choices(presets))
            await self._build_fields()
        finally:
            self._rebuilding = False
        self._refresh()

    @on(Select.Changed, "#preset")
    def _preset_changed(self, event: Select.Changed) -> None:
        if self._rebuilding or not isinstance(event.value, str):
            return  # cleared: the fields keep what they hold
        preset = self._template().presets.get(event.value, {})
        for p in self._template().all_params:
            for widget in self.query(f"#p-{p.name}"):
                value = preset.get(p.name)
                if isinstance(widget, Checkbox):
                    widget.value = bool(value)
                elif isinstance(widget, Select):
                    if value is None:
                        widget.clear()
                    else:
                        widget.value = value
                elif isinstance(widget, Input):
                    widget.value = "" if value is None else str(value)
        self._refresh()

    @on(Input.Changed)
    @on(Checkbox.Changed)
    @on(Select.Changed, "#params Select")
    def _changed(self) -> None:
        self._refresh()

    def _refresh(self) -> None:
        if self._rebuilding:
            return
        checks_box = self.query_one("#launch-checks", Static)
        command_box = self.query_one("#launch-command", Static)
        for field in self.query("#params .-bad"):
            field.remove_class("-bad")
        try:
            template, values = self._values()
            selection = self.query_one("#workers", Input).value.strip() or "all"
            rendered, checks = self.services.launcher.checks(
                template, values, self.node, selection, self.probes, self.group
            )
        except FleetError as exc:
            self.error = f"{exc.reason} {exc.remedy}".strip()
            self.checks = []
            for field in self.query(f"#p-{exc.field}") if exc.field else ():
                field.add_class("-bad")
            checks_box.update(Text(self.error, style="red"))
            command_box.update("")
            return
        self.error = ""
        self.checks = list(checks)
        colours = {"refuse": "red", "warn": "yellow", "offer": "cyan"}
        found = [
            styled(
                (c.level.upper(), colours[c.level]),
                f" {c.message}",
                f"\n   {c.remedy}" if c.remedy else "",
            )
            for c in self.checks
        ]
        checks_box.update(
            lines(found) if found else Text("preflight: nothing in the way", style="green")
        )
        exports = " ".join(f"{k}={v}" for k, v in rendered.env.items())
        command_box.update((f"# env: {exports}\n" if exports else "") + rendered.shell())

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
        managed = self.query_one("#managed", Checkbox).value
        self.dismiss(LaunchChoice(template.name, rendered, selection, clean_first, values, managed))

    def action_cancel(self) -> None:
        self.dismiss(None)


def _field(p: Param):
    """The widget for one parameter; its placeholder or prompt is the help and the default."""
    default = "" if p.runner_default in (None, "") else f" (default {p.runner_default})"
    if p.kind == "bool":
        return Checkbox(p.help, id=f"p-{p.name}", tooltip=p.help, compact=True)
    if p.kind == "choice":
        return Select(
            choices(p.choices),
            id=f"p-{p.name}",
            prompt=f"{p.help}{default}",
            tooltip=p.help,
            compact=True,
        )
    return Input(placeholder=f"{p.help}{default}", id=f"p-{p.name}", tooltip=p.help, compact=True)
