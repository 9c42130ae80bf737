"""`K`: the cleanup plan for the chosen nodes, every action spelled out, run only on `y`."""

from __future__ import annotations

import asyncio

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from console.models import FleetError, Node, WorkerPlan
from console.services.probe import describe_kill, describe_lock, node_status, plan_for


class CleanupScreen(ModalScreen[dict | None]):
    BINDINGS = [
        Binding("y", "confirm", "Yes, clean"),
        Binding("n,escape", "cancel", "No"),
        Binding("enter", "close", "Close", show=False),
    ]

    DEFAULT_CSS = """
    CleanupScreen { align: center middle; }
    CleanupScreen > VerticalScroll {
        width: 90%; height: auto; max-height: 85%; border: thick $warning; padding: 1 2;
        background: $panel;
    }
    """

    def __init__(self, nodes: list[Node]) -> None:
        super().__init__()
        self.nodes = nodes
        self.plans: dict[str, list[WorkerPlan]] = {}
        self.after: dict[str, list] = {}
        self.state = "probing"  # probing | confirm | nothing | running | done

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("Probing " + ", ".join(n.name for n in self.nodes) + " …", id="plan")

    def on_mount(self) -> None:
        self._make_plans()

    @property
    def text(self) -> Static:
        return self.query_one("#plan", Static)

    @work(exclusive=True, group="cleanup")
    async def _make_plans(self) -> None:
        prober = self.app.prober
        lines = ["[b]Kill stale: the plan[/b]", ""]

        async def one(node: Node):
            try:
                return node, await prober.probe(node), None
            except FleetError as exc:
                return node, [], exc

        for node, probes, error in await asyncio.gather(*(one(n) for n in self.nodes)):
            lines.append(
                f"[b]{escape(node.name)}[/b] ({node.zone}): "
                f"{escape(node_status(probes)) if not error else 'unreachable'}"
            )
            if error is not None:
                lines.append(f"  [red]{escape(str(error))}[/red]")
                continue
            self.after[node.key] = probes
            plans = [plan_for(p.report) for p in probes if p.report is not None]
            self.plans[node.key] = plans
            for probe in probes:
                if probe.report is None:
                    lines.append(
                        f"  w{probe.worker}: [red]unreachable: {escape(probe.error)}[/red]"
                    )
            for plan in plans:
                for step in plan.kills:
                    lines.append(
                        f"  w{plan.worker}: [yellow]{escape(describe_kill(step))}[/yellow]"
                    )
                for step in plan.locks:
                    lines.append(
                        f"  w{plan.worker}: [yellow]{escape(describe_lock(step))}[/yellow]"
                    )
                for note in plan.notes:
                    lines.append(f"  w{plan.worker}: [dim]{escape(note)}[/dim]")
        todo = any(not p.empty for plans in self.plans.values() for p in plans)
        lines.append("")
        if todo:
            self.state = "confirm"
            lines.append("[b]y[/b] carries this out · [b]n[/b] or esc leaves everything as it is")
        else:
            self.state = "nothing"
            lines.append("Nothing to clean. [b]esc[/b] closes.")
        self.text.update("\n".join(lines))

    def action_confirm(self) -> None:
        if self.state == "confirm":
            self.state = "running"
            self.text.update(str(self.text.content) + "\n\n[b]Cleaning…[/b]")
            self._run()

    @work(exclusive=True, group="cleanup")
    async def _run(self) -> None:
        prober = self.app.prober
        lines = ["[b]Kill stale: what happened[/b]", ""]
        for node in self.nodes:
            plans = [p for p in self.plans.get(node.key, []) if not p.empty]
            if not plans:
                continue
            try:
                results, after = await prober.execute(node, plans)
            except FleetError as exc:
                lines.append(f"[b]{escape(node.name)}[/b]: [red]{escape(str(exc))}[/red]")
                continue
            by_worker = {p.worker: p for p in self.after.get(node.key, [])}
            by_worker.update({p.worker: p for p in after})
            self.after[node.key] = [by_worker[w] for w in sorted(by_worker)]
            lines.append(
                f"[b]{escape(node.name)}[/b]: now {escape(node_status(self.after[node.key]))}"
            )
            for r in results:
                mark = "[green]done:[/green]" if r.done else "[red]NOT DONE:[/red]"
                extra = " (needs root)" if r.needs_root else ""
                lines.append(f"  w{r.worker}: {mark} {escape(r.result)}{extra}")
        lines += ["", "[b]enter[/b] or esc closes"]
        self.state = "done"
        self.text.update("\n".join(lines))

    def action_cancel(self) -> None:
        if self.state != "running":
            self.dismiss(self.after if self.state == "done" else None)

    def action_close(self) -> None:
        if self.state in {"done", "nothing"}:
            self.dismiss(self.after)
