"""`K`: the cleanup plan for the chosen nodes, every action spelled out, run only on `y`."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from console.models import CleanupPlan, FleetError, Node
from console.present.cleanup import plan_entries, result_entries
from console.ui.base_screens import ConsoleModal
from console.ui.plain import lines, styled

# How the shared wording (console/present/cleanup.py) is coloured here.
TONES = {
    "unreachable": "red",
    "step": "yellow",
    "note": "dim",
    "clean": "",
    "done": "green",
    "not_done": "red",
}


class CleanupScreen(ConsoleModal[dict | None]):
    BINDINGS = [
        Binding("y", "confirm", "Yes, clean"),
        Binding("n,escape", "cancel", "No"),
        Binding("enter", "close", "Close", show=False),
    ]

    def __init__(self, nodes: list[Node]) -> None:
        super().__init__()
        self.nodes = nodes
        self.plans: dict[str, CleanupPlan] = {}
        self.after: dict[str, list] = {}
        self.state = "probing"  # probing | confirm | nothing | running | done
        self.shown = Text()

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(
                "Probing " + ", ".join(n.name for n in self.nodes) + " …", id="plan", markup=False
            )

    def on_mount(self) -> None:
        self._make_plans()

    @property
    def text(self) -> Static:
        return self.query_one("#plan", Static)

    @work(exclusive=True, group="cleanup")
    async def _make_plans(self) -> None:
        prober = self.services.prober
        out: list[Text | str] = [Text("Kill stale: the plan", style="bold"), ""]

        async def one(node: Node) -> tuple[Node, CleanupPlan | None, FleetError | None]:
            try:
                return node, await prober.plan_cleanup(node), None
            except FleetError as exc:
                return node, None, exc

        for node, plan, error in await asyncio.gather(*(one(n) for n in self.nodes)):
            out.append(
                styled(
                    (node.name, "bold"),
                    f" ({node.zone}): {plan.status if plan is not None else 'unreachable'}",
                )
            )
            if plan is None:
                out.append(styled("  ", (str(error), "red")))
                continue
            self.after[node.key] = list(plan.probes)
            self.plans[node.key] = plan
            for entry in plan_entries(plan, say_clean=False):
                out.append(styled(f"  w{entry.worker}: ", (entry.text, TONES[entry.tone])))
        todo = any(plan.todo for plan in self.plans.values())
        out.append("")
        if todo:
            self.state = "confirm"
            out.append(
                styled(
                    ("y", "bold"),
                    " carries this out · ",
                    ("n", "bold"),
                    " or esc leaves everything as it is",
                )
            )
        else:
            self.state = "nothing"
            out.append(styled("Nothing to clean. ", ("esc", "bold"), " closes."))
        self.shown = lines(out)
        self.text.update(self.shown)

    def action_confirm(self) -> None:
        if self.state == "confirm":
            self.state = "running"
            self.text.update(self.shown + styled("\n\n", ("Cleaning…", "bold")))
            self._run()

    @work(exclusive=True, group="cleanup")
    async def _run(self) -> None:
        prober = self.services.prober
        out: list[Text | str] = [Text("Kill stale: what happened", style="bold"), ""]
        for node in self.nodes:
            plan = self.plans.get(node.key)
            if plan is None or not plan.todo:
                continue
            try:
                done = await prober.clean(plan)
            except FleetError as exc:
                out.append(styled((node.name, "bold"), ": ", (str(exc), "red")))
                continue
            self.after[node.key] = done.now
            out.append(styled((node.name, "bold"), f": now {done.status}"))
            for entry in result_entries(done):
                word, _, rest = entry.text.partition(": ")
                out.append(
                    styled(f"  w{entry.worker}: ", (f"{word}:", TONES[entry.tone]), f" {rest}")
                )
        out += ["", styled(("enter", "bold"), " or esc closes")]
        self.state = "done"
        self.shown = lines(out)
        self.text.update(self.shown)

    def action_cancel(self) -> None:
        if self.state != "running":
            self.dismiss(self.after if self.state == "done" else None)

    def action_close(self) -> None:
        if self.state in {"done", "nothing"}:
            self.dismiss(self.after)
