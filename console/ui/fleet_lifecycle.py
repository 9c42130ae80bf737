"""The fleet screen's create, stop, start and delete (nodes and queued resources): each asks
what the user confirms, runs in a worker of the screen and reports in its operations panel.

Kept out of FleetScreen so the screen holds the table and its keys, and this holds what the
keys do to the cloud; both go through services.lifecycle and the queued-resource service.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from console.models import FleetError, Node, QueuedResource, format_age
from console.present.queued import ROW_PREFIX
from console.services.lifecycle import CreateRequest, Progress, stop_refusal
from console.services.queued_resources import QueuedCreateRequest

if TYPE_CHECKING:
    from console.ui.fleet_screen import FleetScreen


class LifecycleActions:
    def __init__(self, screen: FleetScreen) -> None:
        self.screen = screen

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        self.screen.run_worker(work, group="lifecycle")

    def create(self) -> None:
        from console.ui.create_screen import CreateScreen

        zones = (
            list(self.screen.snapshot.zones) if self.screen.snapshot else []
        )  # zones with TPU access
        node = self.screen.cursor_node()
        self.screen.app.push_screen(CreateScreen(zones, node.zone if node else ""), self._create)

    def _create(self, request: CreateRequest | QueuedCreateRequest | None) -> None:
        if isinstance(request, QueuedCreateRequest):
            self._start(self._run_queued_create(request))
        elif request is not None:
            self._start(self._run_create(request))

    async def _run_queued_create(self, request: QueuedCreateRequest) -> None:
        """Through the queue: each state with the time waited in the operations panel (the
        table brought along at each change), then the ssh check; a FAILED one says why."""
        key = f"{request.zone}/{request.name}"
        show = self.screen.progress_sink(key)
        last = ""

        def report(progress: Progress) -> None:
            nonlocal last
            show(progress)
            if (
                progress.state != last
                and self.screen.query("#status")
                and not self.screen.refreshing
            ):
                self.screen.action_refresh()  # the request's row moves on with it
            last = progress.state

        try:
            outcome = await self.screen.queued.create(request, report)
        except FleetError as exc:
            self.screen.show_error(f"Queued create {request.name}", exc)
        else:
            ssh = (
                "ssh answers on every worker"
                if not outcome.ssh_failed
                else "ssh failed: " + "; ".join(outcome.ssh_failed)
            )
            nodes = ", ".join(f"{n.name} {n.state}" for n in outcome.nodes)
            self.screen.notify(
                f"Queued resource {request.name} ACTIVE after {format_age(outcome.waited_s)}: "
                f"{nodes} ({ssh})",
                severity="information" if not outcome.ssh_failed else "warning",
                timeout=15,
            )
        finally:
            self.screen.ops_done(key)
            if self.screen.query("#status"):  # not when the app is closing
                self.screen.action_refresh()

    async def _run_create(self, request: CreateRequest) -> None:
        key = f"{request.zone}/{request.name}"
        try:
            outcome = await self.screen.services.lifecycle.create(
                request, self.screen.progress_sink(key)
            )
        except FleetError as exc:
            self.screen.show_error(f"Create {request.name}", exc)
        else:
            notes = "; ".join(
                outcome.notes
                + (
                    (f"bootstrap running as job {outcome.startup_job}",)
                    if outcome.startup_job
                    else ()
                )
            )
            ssh = (
                "ssh answers on every worker"
                if not outcome.ssh_failed
                else "ssh failed: " + "; ".join(outcome.ssh_failed)
            )
            self.screen.notify(
                f"{request.name} is READY ({ssh})" + (f"; {notes}" if notes else ""),
                severity="information" if not outcome.ssh_failed else "warning",
                timeout=15,
            )
        finally:
            self.screen.ops_done(key)
            if self.screen.query("#status"):  # not when the app is closing
                self.screen.action_refresh()

    def change(self, verb: str) -> None:
        from console.ui.confirm_screen import ConfirmScreen

        if verb == "delete" and self._requests_chosen():
            self._delete_with_requests()
            return
        chosen = self.screen.chosen_nodes()
        if not chosen:
            return
        nodes = [n for n in chosen if not stop_refusal(n, verb)]
        if not nodes:  # the key is greyed then; a click on it lands here
            self.screen.notify(stop_refusal(chosen[0], verb), severity="warning")
            return
        lines = [f"{verb} {n.name} ({n.zone}, {n.accelerator_type}, now {n.state})" for n in nodes]
        lines += [f"skipped: {stop_refusal(n, verb)}" for n in chosen if n not in nodes]
        if verb == "delete":
            lines.append("Deleting cannot be undone; local logs and history stay.")

        def go(yes: bool | None) -> None:
            if yes:
                self.screen.marked.clear()
                for node in nodes:
                    self._start(self._run_change(verb, node))

        self.screen.app.push_screen(
            ConfirmScreen(f"{verb.capitalize()} {len(nodes)} node(s)?", lines), go
        )

    def _requests_chosen(self) -> dict[str, tuple[Node | None, QueuedResource]]:
        """The queued resources a delete takes: those of the chosen nodes, or the request
        under the cursor (a request's row); request key -> (the node chosen, the request)."""
        out: dict[str, tuple[Node | None, QueuedResource]] = {}
        for node in self.screen.chosen_nodes():
            group = self.screen.groups.get(node.queued_key)
            if group is not None:
                out.setdefault(group.key, (node, group.request))
        if not self.screen.marked and not out and (group := self.screen.cursor_group()) is not None:
            out[group.key] = (None, group.request)
        return out

    def _delete_with_requests(self) -> None:
        """A node of a queued resource is deleted with its request (force: every node of it),
        after a question that says so; a request's own row deletes the request."""
        from console.ui.confirm_screen import ConfirmScreen

        requests = self._requests_chosen()
        nodes = [n for n in self.screen.chosen_nodes() if n.queued_key not in requests]
        lines = [f"delete {n.name} ({n.zone}, {n.accelerator_type}, now {n.state})" for n in nodes]
        lines += [self.screen.queued.delete_question(node, qr) for node, qr in requests.values()]
        lines.append("Deleting cannot be undone; local logs and history stay.")
        what = [f"{len(nodes)} node(s)"] if nodes else []
        if len(requests) == 1 and not nodes:
            what.append(f"queued resource {next(iter(requests.values()))[1].name}")
        else:
            what.append(f"{len(requests)} queued resource(s)")

        def go(yes: bool | None) -> None:
            if yes:
                self.screen.marked.clear()
                for node in nodes:
                    self._start(self._run_change("delete", node))
                for _node, qr in requests.values():
                    self._start(self._run_queued_delete(qr))

        self.screen.app.push_screen(ConfirmScreen(f"Delete {' and '.join(what)}?", lines), go)

    async def _run_queued_delete(self, qr: QueuedResource) -> None:
        key = ROW_PREFIX + qr.key
        try:
            await self.screen.queued.delete(
                qr.zone, qr.name, self.screen.progress_sink(key), force=True
            )
        except FleetError as exc:
            self.screen.show_error(f"Delete queued resource {qr.name}", exc)
        else:
            gone = ", ".join(qr.node_names)
            self.screen.notify(f"Queued resource {qr.name}: deleted, with its nodes ({gone}).")
        finally:
            self.screen.ops_done(key)
            if self.screen.query("#status"):  # not when the app is closing
                self.screen.action_refresh()

    def delete_zone(self) -> None:
        from console.ui.confirm_screen import TypedConfirmScreen

        node = self.screen.cursor_node()
        if node is None or self.screen.snapshot is None:
            return
        zone = node.zone
        nodes = [n for n in self.screen.snapshot.nodes if n.zone == zone]
        lines = [f"delete {n.name} ({n.accelerator_type}, {n.state})" for n in nodes]

        def go(yes: bool | None) -> None:
            if yes:
                for n in nodes:
                    self._start(self._run_change("delete", n))

        self.screen.app.push_screen(
            TypedConfirmScreen(f"Delete ALL {len(nodes)} nodes in {zone}?", lines, zone), go
        )

    async def _run_change(self, verb: str, node: Node) -> None:
        try:
            after = await self.screen.services.lifecycle.change(
                verb, node, self.screen.progress_sink(node.key)
            )
        except FleetError as exc:
            self.screen.show_error(f"{verb.capitalize()} {node.name}", exc)
        else:
            self.screen.notify(f"{node.name}: {after.state if after else 'deleted'}")
        finally:
            self.screen.ops_done(node.key)
            if self.screen.query("#status"):  # not when the app is closing
                self.screen.action_refresh()
