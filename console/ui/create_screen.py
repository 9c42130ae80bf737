"""`c`: the create form. Zones, types and runtime versions come from the API; nothing is sent
until the form is valid, and the create then runs in the background with its progress shown.
The runtime version follows the type: each generation's base image, among the zone's versions.
"Through a queued resource" asks through the queue instead (a tier, a wait bound, a count).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from console.models import FleetError
from console.services.lifecycle import CreateRequest, default_name, parse_labels
from console.services.queued_resources import QueuedCreateRequest, parse_duration
from console.services.runtimes import default_runtime
from console.ui.base_screens import ConsoleModal
from console.ui.plain import choices, lines

NAME_PREFIX = "tpu"
# The queue's tiers as the form offers them: (shown, QueuedCreateRequest.tier).
TIERS = (("on-demand", ""), ("spot", "spot"), ("reserved (guaranteed)", "guaranteed"))


class CreateScreen(ConsoleModal[CreateRequest | QueuedCreateRequest | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Create"),
    ]

    def __init__(self, zones: list[str], zone: str = "") -> None:
        super().__init__()
        self.zones = zones
        self.initial_zone = zone if zone in zones else (zones[0] if zones else "")
        self._name_touched = False
        self._versions: list[str] = []  # the zone's ListRuntimeVersions

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text("Create a TPU VM", style="bold"), markup=False)
            yield Label("Zone", markup=False)
            yield Select(
                choices(self.zones),
                value=self.initial_zone or Select.BLANK,
                id="zone",
                allow_blank=False,
            )
            yield Label("Accelerator type", markup=False)
            yield Select([], id="type", prompt="loading…")
            yield Label("Runtime version", markup=False)
            yield Select([], id="version", prompt="loading…")
            yield Label("Name", markup=False)
            yield Input(id="name", placeholder="lowercase, digits and dashes")
            yield Label("Labels (key=value, comma-separated)", markup=False)
            yield Input(id="labels", placeholder="team=rl, owner=me")
            yield Label(
                "Startup bootstrap (optional): a command run as a job on every worker "
                "once it answers ssh",
                markup=False,
            )
            yield Input(id="startup", placeholder="e.g. bash ~/bootstrap.sh")
            yield Checkbox("Spot (cheaper, can be preempted)", id="spot")
            yield Checkbox(
                "On-demand if spot has no room (quota or stockout)",
                id="fallback",
            )
            yield Checkbox(
                "Through a queued resource: wait in its queue for capacity "
                "(v5e, v5p, v6e, multislice)",
                id="queued",
            )
            with Vertical(id="queued-fields"):
                yield Label(
                    "Queued: tier (spot and fallback above are for a plain create)", markup=False
                )
                yield Select(
                    [(Text(shown), tier) for shown, tier in TIERS],
                    value="",
                    id="tier",
                    allow_blank=False,
                )
                yield Label(
                    "Queued: how long it may wait (6h, 90m, 1d12h; empty: no bound)", markup=False
                )
                yield Input(id="valid-for", placeholder="6h")
                yield Label(
                    "Queued: nodes (more than 1: a multislice request, NAME-0 …)", markup=False
                )
                yield Input("1", id="count")
            yield Static("", id="create-errors", markup=False)
            with Horizontal():
                yield Button("Create (ctrl+s)", id="create", variant="primary")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#queued-fields").display = False
        if self.initial_zone:
            self._load_zone(self.initial_zone)
        self.query_one("#zone", Select).focus()

    @on(Select.Changed, "#zone")
    def _zone_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self._load_zone(event.value)

    @work(exclusive=True, group="create-form")
    async def _load_zone(self, zone: str) -> None:
        errors = self.query_one("#create-errors", Static)
        api = self.services.fleet.api
        try:
            types = [t.name for t in await api.accelerator_types(zone)]
            versions = await api.runtime_versions(zone)
        except FleetError as exc:
            errors.update(f"{exc.reason} {exc.remedy}")
            return
        if not self.is_attached:  # closed while the API answered
            return
        self._versions = versions
        version_select = self.query_one("#version", Select)
        version_select.set_options(choices(versions))
        type_select = self.query_one("#type", Select)
        type_select.set_options(choices(types))
        if types:
            type_select.value = types[0]
            self._pick_runtime(types[0])
        errors.update("")

    def _pick_runtime(self, accelerator_type: str) -> None:
        """The generation's runtime version for the type, from what the zone lists."""
        if self._versions:
            version = default_runtime(accelerator_type, self._versions)
            if version in self._versions:
                self.query_one("#version", Select).value = version

    @on(Select.Changed, "#type")
    def _type_changed(self, event: Select.Changed) -> None:
        if not isinstance(event.value, str):
            return
        self._pick_runtime(event.value)
        if not self._name_touched:
            now = self.app.now().astimezone()
            self.query_one("#name", Input).value = default_name(NAME_PREFIX, event.value, now)

    @on(Checkbox.Changed, "#queued")
    def _queued_changed(self, event: Checkbox.Changed) -> None:
        self.query_one("#queued-fields").display = event.value

    @on(Input.Changed, "#name")
    def _name_changed(self, event: Input.Changed) -> None:
        if self.query_one("#name", Input).has_focus:
            self._name_touched = True

    def request(self) -> CreateRequest | QueuedCreateRequest:
        def value(selector: str) -> str:
            v = self.query_one(selector, Select).value
            return v if isinstance(v, str) else ""

        raw_labels = [
            x.strip() for x in self.query_one("#labels", Input).value.split(",") if x.strip()
        ]
        if self.query_one("#queued", Checkbox).value:
            return self._queued_request(value, parse_labels(raw_labels))
        return CreateRequest(
            name=self.query_one("#name", Input).value.strip(),
            zone=value("#zone"),
            accelerator_type=value("#type"),
            runtime_version=value("#version"),  # "": the service picks the generation's
            spot=self.query_one("#spot", Checkbox).value,
            fallback_on_demand=self.query_one("#fallback", Checkbox).value,
            labels=parse_labels(raw_labels),
            startup_command=self.query_one("#startup", Input).value.strip(),
        )

    def _queued_request(
        self, value: Callable[[str], str], labels: dict[str, str]
    ) -> QueuedCreateRequest:
        """The queue's fields; a bound or a count that does not read is one sentence."""
        if self.query_one("#startup", Input).value.strip():
            raise FleetError(
                "A startup bootstrap runs after a plain create, not through the queue.",
                "Empty it, and launch the bootstrap once the request is ACTIVE.",
            )
        bound = self.query_one("#valid-for", Input).value.strip()
        count_text = self.query_one("#count", Input).value.strip() or "1"
        if not count_text.isdigit():
            raise FleetError(
                f"Nodes {count_text!r} is not a whole number.", "Write 1, or 2 for two slices."
            )
        tier = self.query_one("#tier", Select).value
        return QueuedCreateRequest(
            self.query_one("#name", Input).value.strip(),
            value("#zone"),
            value("#type"),
            value("#version"),
            tier=tier if isinstance(tier, str) else "",
            valid_for_s=parse_duration(bound) if bound else 0.0,
            count=int(count_text),
            labels=labels,
        )

    def action_submit(self) -> None:
        errors = self.query_one("#create-errors", Static)
        try:
            request = self.request()
        except FleetError as exc:
            errors.update(f"{exc.reason} {exc.remedy}")
            errors.scroll_visible(animate=False)
            return
        problems = request.problems()
        if problems:
            errors.update(lines(problems))
            errors.scroll_visible(animate=False)  # below the fields: bring it into view
            return
        self.dismiss(request)

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#create")
    def _create_pressed(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()
