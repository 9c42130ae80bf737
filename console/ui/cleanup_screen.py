"""`K`: the cleanup plan for the chosen nodes, every action spelled out, run only on `y`."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from console.models import FleetError, Node, WorkerPlan
from console.services.probe import describe_kill, describe_lock, node_status, plan_for
from console.ui.base_screens import ConsoleModal
from console.ui.plain import lines, styled


class CleanupScreen(ConsoleModal[dict | None]):
    BINDINGS = [
        Binding("y", "confirm", "Yes, clean"),
        Binding("n,escape", "cancel", "No"),
        Binding("enter", "close", "Close", show=False),
    ]

    def __init__(self, nodes: list[Node]) -> None:
        super().__init__()
        self.nodes = nodes
        self.plans: dict[str, list[WorkerPlan]] = {}
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
        prober = self.app.prober
        out: list[Text | str] = [Text("Kill stale: the plan", style="bold"), ""]

        async def one(node: Node):
            try:
                return node, await prober.probe(node), None
            except FleetError as exc:
                return node, [], exc

        for node, probes, error in await asyncio.gather(*(one(n) for n in self.nodes)):
            out.append(
                styled(
                    (node.name, "bold"),
                    f" ({node.zone}): {node_status(probes) if not error else 'unreachable'}",
                )
            )
            if error is not None:
                out.append(styled("  ", (str(error), "red")))
                continue
            self.after[node.key] = probes
            plans = [plan_for(p.report) for p in probes if p.report is not None]
            self.plans[node.key] = plans
            for probe in probes:
                if probe.report is None:
                    out.append(
                        styled(f"  w{probe.worker}: ", (f"unreachable: {probe.error}", "red"))
                    )
            for plan in plans:
                for step in plan.kills:
                    out.append(styled(f"  w{plan.worker}: ", (describe_kill(step), "yellow")))
                for lock in plan.locks:
                    out.append(styled(f"  w{plan.worker}: ", (describe_lock(lock), "yellow")))
                for note in plan.notes:
                    out.append(styled(f"  w{plan.worker}: ", (note, "dim")))
        todo = any(not p.empty for plans in self.plans.values() for p in plans)
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
        prober = self.app.prober
        out: list[Text | str] = [Text("Kill stale: what happened", style="bold"), ""]
        for node in self.nodes:
            plans = [p for p in self.plans.get(node.key, []) if not p.empty]
            if not plans:
                continue
            try:
                results, after = await prober.execute(node, plans)
            except FleetError as exc:
                out.append(styled((node.name, "bold"), ": ", (str(exc), "red")))
                continue
            by_worker = {p.worker: p for p in self.after.get(node.key, [])}
            by_worker.update({p.worker: p for p in after})
            self.after[node.key] = [by_worker[w] for w in sorted(by_worker)]
            out.append(styled((node.name, "bold"), f": now {node_status(self.after[node.key])}"))
            for r in results:
                mark = ("done:", "green") if r.done else ("NOT DONE:", "red")
                extra = " (needs root)" if r.needs_root else ""
                out.append(styled(f"  w{r.worker}: ", mark, f" {r.result}{extra}"))
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
