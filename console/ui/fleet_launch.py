"""The fleet screen's launches: the form on a node or a multislice group, then the launch
service (clean first, upload or job, fan-out progress in the operations panel), or a managed
job; the job's logs open when it starts.

Kept out of FleetScreen so the screen holds the table and its keys; the workflow itself is
services/launch.py, which the CLI's `launch` calls too.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from console.models import FleetError, Node
from console.services.fanout_progress import FanoutProgress
from console.services.lifecycle import Progress
from console.services.queued_resources import QueuedGroup

if TYPE_CHECKING:
    from console.ui.fleet_screen import FleetScreen
    from console.ui.launch_screen import LaunchChoice


class LaunchActions:
    def __init__(self, screen: FleetScreen) -> None:
        self.screen = screen

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        self.screen.run_worker(work, group="launch")

    def launch(self) -> None:
        from console.ui.launch_screen import LaunchScreen

        node = self.screen.cursor_node()
        group = self.screen.cursor_group()
        if group is not None and (group.request.multislice or node is None):
            self._launch_on_group(group)
            return
        if node is None:
            return
        if node.state != "READY":
            self.screen.notify(
                f"{node.name} is {node.state}; launching needs a READY node.", severity="warning"
            )
            return
        self.screen.app.push_screen(LaunchScreen(node), lambda choice: self._launch(node, choice))

    def _launch_on_group(self, group: QueuedGroup) -> None:
        """A multislice request's node or row: the form launches on every slice at once
        (preflight refuses a part of it); a one-node request's row: on its node."""
        from console.ui.launch_screen import LaunchScreen

        qr = group.request
        if not group.nodes:
            self.screen.notify(
                f"Queued resource {qr.name} is {qr.state} and has no node yet to launch on.",
                severity="warning",
            )
            return
        if not group.ready:
            missing = ", ".join(group.missing) or ", ".join(
                f"{n.name} ({n.state})" for n in group.nodes if n.state != "READY"
            )
            self.screen.notify(
                f"Multislice group {qr.name} is not whole ({missing}); a launch needs every "
                "slice READY.",
                severity="warning",
            )
            return
        node = sorted(group.nodes, key=group.slice_of)[0]
        if not qr.multislice:
            self.screen.app.push_screen(
                LaunchScreen(node), lambda choice: self._launch(node, choice)
            )
            return
        self.screen.app.push_screen(
            LaunchScreen(node, group), lambda choice: self._launch(node, choice, group)
        )

    async def _run_managed(self, node: Node, choice: LaunchChoice) -> None:
        """The form's choice as a managed job on this node (adopted: its spec is the node's)."""
        from console.services.managed import ManagedSpec, NodeSpec, Step
        from console.ui.log_screen import LogScreen

        spec = ManagedSpec(
            NodeSpec(node.name, (node.zone,)),
            Step(choice.kind, values=dict(choice.params)),
            selection=choice.selection,
        )
        try:
            assert self.screen.app.managed is not None
            job = await self.screen.app.managed.launch(spec)
        except FleetError as exc:
            self.screen.show_error(f"Managed launch on {node.name}", exc)
            return
        self.screen.notify(f"Managed job {job.job_id} started; recovered after a preemption.")
        self.screen.app.push_screen(LogScreen(job))

    def _launch(
        self, node: Node, choice: LaunchChoice | None, group: QueuedGroup | None = None
    ) -> None:
        if choice is not None and group is not None:
            self._start(self._run_group_launch(group, choice))
        elif choice is not None:
            self._start(self._run_launch(node, choice))

    async def _run_group_launch(self, group: QueuedGroup, choice: LaunchChoice) -> None:
        """Every worker of every slice, one fan-out, each slice with its MEGASCALE values;
        clean each slice first if the form offered; the first slice's logs open."""
        from console.models import LaunchPlan
        from console.ui.log_screen import LogScreen

        name = group.request.name
        if choice.managed or choice.rendered.upload is not None:
            what = "a managed job" if choice.managed else "an upload"
            self.screen.notify(
                f"Launch on group {name}: {what} goes to one node; launch it per slice, or "
                "untick Managed.",
                severity="error",
            )
            return
        plan = LaunchPlan(group.nodes[0], "all", choice.kind, choice.rendered, choice.params)
        launcher = self.screen.services.launcher
        try:
            jobs, held = await launcher.start_group(
                plan, group, self.screen.queued, choice.clean_first
            )
        except FleetError as exc:
            self.screen.show_error(f"Launch on group {name}", exc)
            return
        if held is not None:
            self.screen.notify(
                f"Cleanup on {held.node.name} left the TPU held ({held.status}); "
                f"nothing launched on group {name}. K shows the plan.",
                severity="error",
                timeout=30,
            )
            return
        ids = ", ".join(f"{j.node} {j.job_id}" for j in jobs)
        self.screen.notify(f"Launched on every slice of {name}: {ids}.", timeout=10)
        if jobs:
            self.screen.app.push_screen(LogScreen(jobs[0]))

    async def _run_launch(self, node: Node, choice: LaunchChoice) -> None:
        """The form's choice through the launch service: clean first if it offered, then the
        upload or the job (its logs open); any failure is one notification."""
        from console.models import LaunchPlan
        from console.present.launch import not_started, upload_lines
        from console.ui.log_screen import LogScreen

        if getattr(choice, "managed", False) and self.screen.app.managed is not None:
            await self._run_managed(node, choice)
            return
        launcher = self.screen.services.launcher
        plan = LaunchPlan(node, choice.selection, choice.kind, choice.rendered, choice.params)
        if plan.rendered.upload is not None:
            self.screen.notify(f"Uploading {plan.rendered.upload[0]} on {node.name}…")
        fanout = FanoutOps(self.screen, node)
        try:
            cleanup = await launcher.plan_cleanup(plan) if choice.clean_first else None
            launched = await launcher.start(plan, cleanup=cleanup, on_progress=fanout.report)
        except FleetError as exc:
            self.screen.show_error(f"Launch on {node.name}", exc)
            return
        finally:
            fanout.end()
        if launched.cleanup is not None and not launched.cleanup.done:
            self.screen.notify(
                f"Cleanup on {node.name} left the TPU held ({launched.cleanup.status}); "
                "nothing launched. K shows the plan.",
                severity="error",
                timeout=30,
            )
            return
        if plan.rendered.upload is not None:
            said = upload_lines(*plan.rendered.upload, launched.uploads)
            self.screen.notify(
                "\n".join(line for line, _ in said),
                severity="error" if launched.failed else "information",
                timeout=15 if launched.failed else 6,
            )
            return
        assert launched.job is not None
        if launched.failed:
            self.screen.notify(not_started(launched), severity="error")
            return
        self.screen.app.push_screen(LogScreen(launched.job))


class FanoutOps:
    """A launch's fan-out in the operations panel: `⟳ launch NODE: starting: 17/32 done,
    slowest: w5 (12 s)` while it runs (ticking), then its closing line, the slowest and any
    failed workers named, kept a while (a failure longer) before it goes."""

    KEEP_OK_S = 8.0
    KEEP_FAILED_S = 60.0

    def __init__(self, screen: FleetScreen, node: Node) -> None:
        self.screen = screen
        self.node = node
        self.key = f"launch:{node.key}"
        self.stage = ""
        self.progress: FanoutProgress | None = None
        self._ticker = screen.set_interval(0.5, self._show)
        self._failed = False

    def report(self, stage: str, progress: FanoutProgress) -> None:
        if self.progress is not None and progress is not self.progress and self.progress.finished:
            self._closing()  # the stage before ended: its line stays
        self.stage, self.progress = stage, progress
        if progress.finished:
            self._closing()
        else:
            self._show()

    def _elapsed(self) -> float:
        return 0.0 if self.progress is None else self.progress.clock() - self.progress.started_at

    def _show(self) -> None:
        if self.progress is None or self.progress.finished:
            return
        self.screen.ops_report(
            self.key,
            Progress(
                self.node.name,
                "launch",
                "RUNNING",
                self._elapsed(),
                f"{self.stage}: {self.progress.line()}",
            ),
        )

    def _closing(self) -> None:
        assert self.progress is not None
        failed = bool(self.progress.failures)
        self._failed |= failed
        self.screen.ops_report(
            self.key,
            Progress(
                self.node.name,
                "launch",
                "FAILED" if failed else "DONE",
                self._elapsed(),
                f"{self.stage}: {self.progress.closing()}",
            ),
        )

    def end(self) -> None:
        self._ticker.stop()
        keep = self.KEEP_FAILED_S if self._failed else self.KEEP_OK_S
        if self.progress is None:
            self.screen.ops_done(self.key)
        else:
            self.screen.set_timer(keep, lambda: self.screen.ops_done(self.key))
