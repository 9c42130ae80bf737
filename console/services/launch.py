"""Launching, one way for the CLI and the TUI: plan (values, render, probe, preflight), clear
stale TPU state first if asked, then upload (the sync template) or start the job.

Why one home: `tpuconsole launch` and the TUI's form used to each probe, plan, clean and start
in their own words, and drifted (the form cleaned without re-probing, the CLI printed a plan the
TUI never showed). Callers decide only what to show and what to ask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from console.models import (
    Check,
    CleanupDone,
    CleanupPlan,
    FleetError,
    Job,
    Launched,
    LaunchPlan,
    Node,
    Rendered,
    UploadOutcome,
    WorkerProbe,
)
from console.services.fanout_progress import ProgressSink, StageSink, staged
from console.services.jobs import JobService, check_command
from console.services.preflight import one_slice_refusal, preflight
from console.services.probe import ProbeService
from console.services.queued_resources import QueuedGroup, QueuedResourceService
from console.services.shipping import Shipper
from console.services.templates import Template, template


@dataclass
class LaunchService:
    jobs: JobService
    prober: ProbeService
    shipper: Shipper = field(init=False)

    def __post_init__(self) -> None:
        self.shipper = Shipper(self.jobs.remote)

    def checks(
        self,
        chosen: Template,
        values: Mapping[str, Any],
        node: Node,
        selection: str,
        probes: list[WorkerProbe] | None = None,
        group: QueuedGroup | None = None,
    ) -> tuple[Rendered, tuple[Check, ...]]:
        """Render and preflight without touching the workers (the form, as the user types).

        `group`: the launch is on the node's multislice group, which only "all" workers may
        be (a program on part of a group waits forever for the rest).
        """
        rendered = chosen.render(values)
        if group is not None and selection.strip() not in {"", "all"}:
            refusal = QueuedResourceService.launch_refusal(group, node, selection)
            return rendered, (Check("refuse", refusal, "Set Workers to all."),)
        in_group = group is not None
        found = preflight(chosen, values, node, selection, probes, in_group=in_group)
        return rendered, tuple(found)

    async def plan_template(
        self,
        node: Node,
        name: str,
        *,
        preset: str = "",
        overrides: Mapping[str, Any] | None = None,
        selection: str = "all",
        group: QueuedGroup | None = None,
    ) -> LaunchPlan:
        """A template's values, its rendering and preflight over a fresh probe of the node
        (`group`: the launch is on the node's multislice group)."""
        chosen = template(name)
        values = chosen.values(preset, overrides)
        rendered = chosen.render(values)  # a bad value is refused before any ssh
        probes = await self.prober.probe(node, selection) if node.state == "READY" else []
        _, checks = self.checks(chosen, values, node, selection, probes, group)
        return LaunchPlan(node, selection, chosen.name, rendered, values, checks)

    def plan_command(
        self,
        node: Node,
        command: str,
        argv: list[str],
        selection: str,
        group: QueuedGroup | None = None,
    ) -> LaunchPlan:
        """A command given as is (`launch NODE -- cmd`): no template, and of preflight only
        the one-slice refusal (a slice's program would wait forever for the other slices)."""
        check_command(command)
        part = one_slice_refusal(node, group is not None)
        return LaunchPlan(
            node,
            selection,
            "custom",
            Rendered((), {}, script=command),
            {"argv": argv},
            (part,) if part is not None else (),
        )

    async def plan_cleanup(self, plan: LaunchPlan) -> CleanupPlan:
        return await self.prober.plan_cleanup(plan.node, plan.selection)

    async def start(
        self,
        plan: LaunchPlan,
        *,
        cleanup: CleanupPlan | None = None,
        on_progress: StageSink | None = None,
    ) -> Launched:
        """Clean first (exactly the given plan's steps), then upload or start the job;
        `on_progress` hears each stage's fan-out (`k/N done, slowest: …`)."""
        done = await self.prober.clean(cleanup) if cleanup is not None and cleanup.todo else None
        if done is not None and not done.done:
            return Launched(plan, done)  # what was in the way is still there: nothing starts
        if plan.rendered.upload is not None:
            local, remote_dir = plan.rendered.upload
            uploads = await self.upload(
                plan.node,
                plan.selection,
                local,
                remote_dir,
                on_progress=staged(on_progress)("uploading"),
            )
            return Launched(plan, done, uploads=tuple(uploads))
        job = await self.jobs.launch(
            plan.node,
            plan.selection,
            plan.rendered.shell(),
            kind=plan.kind,
            env=plan.rendered.env,
            params=plan.params,
            ship_runners=plan.rendered.ship_runners,
            on_progress=on_progress,
        )
        return Launched(plan, done, job=job)

    async def start_group(
        self, plan: LaunchPlan, group: QueuedGroup, queued: QueuedResourceService, clean_first: bool
    ) -> tuple[list[Job], CleanupDone | None]:
        """A multislice group's launch: the plan's command on every worker of every slice in
        one fan-out, each slice with its MEGASCALE values; with `clean_first`, each slice's
        stale state cleared first, and nothing started if any slice stays held (that slice's
        outcome is returned). Uploads and managed jobs go to one node, not to a group."""
        if plan.rendered.upload is not None:
            raise FleetError(
                f"An upload goes to one node, not to multislice group {group.request.name}.",
                "Upload to each slice by its name.",
            )
        for node in sorted(group.nodes, key=group.slice_of) if clean_first else ():
            each = LaunchPlan(node, "all", plan.kind, plan.rendered, plan.params)
            cleanup = await self.plan_cleanup(each)
            done = await self.prober.clean(cleanup) if cleanup.todo else None
            if done is not None and not done.done:
                return [], done
        jobs = await queued.launch_group(
            self.jobs,
            group,
            plan.rendered.shell(),
            kind=plan.kind,
            env=plan.rendered.env,
            params=plan.params,
            ship_runners=plan.rendered.ship_runners,
        )
        return jobs, None

    async def upload(
        self,
        node: Node,
        selection: str,
        local: str,
        remote_dir: str,
        *,
        method: str = "auto",
        on_progress: ProgressSink | None = None,
    ) -> list[UploadOutcome]:
        """A folder's changed files to every chosen worker: `sync`, and the sync template."""
        return await self.shipper.upload(
            node,
            selection,
            Path(local).expanduser(),
            remote_dir,
            method=method,
            on_progress=on_progress,
        )
